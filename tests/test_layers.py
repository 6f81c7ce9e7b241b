"""The house rules, read from the code's own imports: layers import downward only, no import
cycle between files, and no public class name defined in two modules.

Every ``import`` counts, also those inside functions and under ``TYPE_CHECKING``: a cycle
deferred to call time is still a cycle in the design.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Top-level packages from the bottom up. A package may import its own modules and packages
# of a lower layer; packages on one layer are independent of each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("core",),
    ("monitoring",),
    ("embeddings", "streams"),
    ("trainer",),
    ("serving",),
    ("lumstream",),
)
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}

# Wings inside a package, from the bottom up (modules directly in the package count as the
# package's own bottom, e.g. streams/config.py). Same rule: downward only.
WINGS: dict[str, tuple[tuple[str, ...], ...]] = {
    "streams": (
        ("contracts",),
        ("kafka",),
        ("sinks",),
        ("worker", "generator", "importers"),
        ("replay",),
    ),
    "trainer": (("vectors",), ("backbone",), ("ranker",)),
    "lumstream": (("pipeline",), ("commands",)),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in RANK:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            out[_module_name(path)] = path
    return out


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The project module an imported name lands in (``a.b.C`` -> ``a.b``), or None."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(known: dict[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for mod, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".")
                    base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                names = [f"{prefix}.{a.name}" for a in node.names] or [prefix]
            for name in names:
                target = _resolve(name, known)
                if target is not None and target != mod:
                    graph[mod].add(target)
    return graph


def _wing_rank(mod: str) -> tuple[str, int]:
    """(package, rank of the module's wing inside it); modules at the package root rank -1."""
    parts = mod.split(".")
    wings = WINGS.get(parts[0], ())
    if len(parts) < 3 and not (len(parts) == 2 and any(parts[1] in w for w in wings)):
        return parts[0], -1
    for i, layer in enumerate(wings):
        if parts[1] in layer:
            return parts[0], i
    return parts[0], -1


KNOWN = _modules()
GRAPH = _imports(KNOWN)


def test_every_import_runs_down_the_layers() -> None:
    upward = []
    for mod, targets in GRAPH.items():
        for target in targets:
            a, b = mod.split(".")[0], target.split(".")[0]
            if a != b and RANK[b] >= RANK[a]:
                upward.append(f"{mod} -> {target}")
    assert not upward, "imports that run up or sideways:\n" + "\n".join(sorted(upward))


def test_wings_import_downward_only() -> None:
    upward = []
    for mod, targets in GRAPH.items():
        for target in targets:
            (pa, ra), (pb, rb) = _wing_rank(mod), _wing_rank(target)
            if pa != pb:
                continue
            wa, wb = mod.split(".")[1:2], target.split(".")[1:2]
            if rb > ra or (rb == ra and rb >= 0 and wa != wb):
                upward.append(f"{mod} -> {target}")
    assert not upward, "imports between wings that run up or sideways:\n" + "\n".join(
        sorted(upward)
    )


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(KNOWN):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_between_files() -> None:
    # a package's __init__ importing its own modules is not a cycle of the design
    graph = {
        m: {t for t in ts if not (KNOWN[t].name == "__init__.py" and m.startswith(t + "."))}
        for m, ts in GRAPH.items()
    }
    assert _cycles(graph) == []


def test_a_public_class_name_has_one_home() -> None:
    homes: dict[str, list[str]] = defaultdict(list)
    for mod, path in KNOWN.items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                homes[node.name].append(mod)
    twice = {name: mods for name, mods in homes.items() if len(mods) > 1}
    assert not twice, f"class names defined in several modules: {twice}"


@pytest.mark.parametrize("broken", ["upward", "cycle"])
def test_the_checks_catch_what_they_guard_against(broken: str) -> None:
    """The rules above are not vacuous: a planted violation is found."""
    graph = {m: set(t) for m, t in GRAPH.items()}
    if broken == "cycle":
        graph.setdefault("core.settings", set()).add("core.paths")
        graph.setdefault("core.paths", set()).add("core.settings")
        assert any("core.settings" in c for c in _cycles(graph))
    else:
        assert RANK["lumstream"] > RANK["core"]
        mod = "core.settings"
        target = "lumstream.config"
        assert RANK[target.split(".")[0]] >= RANK[mod.split(".")[0]]
