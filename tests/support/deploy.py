"""Read the deployment files the way Docker and Compose read them (the parts we use), so
tests can check them without a Docker engine: the Dockerfile's instructions per stage,
.dockerignore matching, and Compose's ``${VAR...}`` interpolation."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from support.paths import REPO

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = REPO / "deploy" / "compose.yaml"
PROMETHEUS = REPO / "deploy" / "prometheus.yml"


@dataclasses.dataclass
class Stage:
    """One ``FROM`` ... block: its base, name and instructions in order."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]]

    def all(self, keyword: str) -> list[str]:
        return [arg for kw, arg in self.instructions if kw == keyword.upper()]

    def env(self) -> dict[str, str]:
        """``ENV`` settings of this stage (``ENV A=1 B=2`` form)."""
        out: dict[str, str] = {}
        for arg in self.all("ENV"):
            for token in _split_words(arg):
                key, _, value = token.partition("=")
                out[key] = value
        return out


@dataclasses.dataclass
class Dockerfile:
    args: dict[str, str]  # global ARGs (before the first FROM) with their defaults
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def _split_words(text: str) -> list[str]:
    """Whitespace-separated words, respecting double and single quotes (quotes removed)."""
    return [a or b or c for a, b, c in re.findall(r'"([^"]*)"|\'([^\']*)\'|(\S+)', text)]


def read_dockerfile(path: Path = DOCKERFILE) -> Dockerfile:
    """Logical instructions: continuation lines joined, comments and blank lines dropped."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name, []))
        elif not stages:
            assert keyword == "ARG", f"only ARG may precede FROM, got {line!r}"
            key, _, value = rest.partition("=")
            args[key] = value
        else:
            stages[-1].instructions.append((keyword, rest))
    return Dockerfile(args, stages)


def exec_form(arg: str) -> list[str]:
    """The JSON array of an exec-form CMD/ENTRYPOINT/HEALTHCHECK CMD argument."""
    start = arg.index("[")
    value = json.loads(arg[start:])
    assert isinstance(value, list), arg
    assert all(isinstance(v, str) for v in value), arg
    return value


def _glob_regex(pattern: str) -> str:
    """Docker's .dockerignore pattern syntax (Go filepath.Match plus ``**``) as a regex."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = pattern.index("]", i)
            body = pattern[i + 1 : end]
            out += "[" + ("^" + body[1:] if body.startswith("^") else body) + "]"
            i = end
        else:
            out += re.escape(c)
        i += 1
    return out


def dockerignored(path: str, rules: list[str]) -> bool:
    """Whether Docker leaves ``path`` (relative, ``/``-separated) out of the build context.

    The last rule matching the path or one of its parent directories decides; ``!`` rules
    let a path back in.
    """
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for rule in rules:
        negate = rule.startswith("!")
        pattern = rule[1:] if negate else rule
        pattern = pattern.strip().strip("/")
        regex = re.compile(_glob_regex(pattern) + r"\Z")
        if any(regex.match(c) for c in candidates):
            excluded = not negate
    return excluded


def dockerignore_rules(path: Path = DOCKERIGNORE) -> list[str]:
    return [
        line.strip()
        for line in path.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


class InterpolationError(ValueError):
    """A required variable (``${VAR:?message}``) is unset or empty."""


_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|\$([A-Za-z_]\w*)")


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable substitution, applied to every string in ``value``:
    ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?err}``,
    ``${VAR?err}``, ``${VAR:+alt}``, ``$$`` (a literal ``$``)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3) or ""
        present = name in env
        val = env.get(name, "")
        if op is None:
            return val
        colon = op.startswith(":")
        unset = (not present) or (colon and val == "")
        kind = op[-1]
        if kind == "-":
            return arg if unset else val
        if kind == "?":
            if unset:
                raise InterpolationError(f"{name}: {arg}")
            return val
        return "" if unset else arg  # "+"

    return _VAR.sub(sub, value)


def read_compose(env: Mapping[str, str], path: Path = COMPOSE) -> dict[str, Any]:
    """The compose file after YAML (anchors and ``<<`` merges) and interpolation; the
    ``x-`` extension fields are dropped, as Compose does."""
    raw = yaml.safe_load(path.read_text())
    raw = {k: v for k, v in raw.items() if not k.startswith("x-")}
    result: dict[str, Any] = interpolate(raw, env)
    return result


def service_env(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's ``environment`` (mapping or ``KEY=VALUE`` list form) as strings."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}
