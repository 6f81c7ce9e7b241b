"""lumstream commands as supervised child processes, and their metrics.

Each child runs ``python -m lumstream.cli --config FILE [--set ...] COMMAND ...`` with
its output in ``<dir>/<name>.log``; it dies with its parent (``core.processes``), stops
with SIGINT (a graceful stop: workers commit, trainers checkpoint, services drain), and
is SIGKILLed if it does not stop in time. Its /metrics endpoint is found through the
discovery file it registers (``<role>-<pid>.json``).
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from core.processes import ChildError, ChildProcess, tail


class Children:
    """The demo's child processes.

    Args:
        root: where the logs go.
        config: the TOML file every child reads.
        discovery: the metrics discovery directory of that config.
        cwd: the children's working directory.
    """

    def __init__(self, root: Path, config: Path, discovery: Path, cwd: Path) -> None:
        self.root, self.config, self.discovery, self.cwd = root, config, discovery, cwd
        self.procs: dict[str, ChildProcess] = {}

    def start(self, name: str, args: Sequence[str], sets: Sequence[str] = ()) -> ChildProcess:
        """Start ``lumstream ARGS`` as ``name`` (``sets``: ``SECTION.NAME=VALUE`` overrides)."""
        import sys

        argv = [sys.executable, "-m", "lumstream.cli", "--config", str(self.config)]
        for s in sets:
            argv += ["--set", s]
        argv += list(args)
        env = {k: v for k, v in os.environ.items() if not k.startswith("LUMSTREAM_")}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(self.cwd), os.environ.get("PYTHONPATH", "")) if p
        )
        child = ChildProcess(name, stop_signal=signal.SIGINT, kill_after_s=30.0)
        with (self.root / f"{name}.log").open("ab") as log:
            child.start(argv, log, env=env, cwd=self.cwd)
        self.procs[name] = child
        return child

    def log(self, name: str) -> str:
        return tail(self.root / f"{name}.log", limit=3000)

    def check(self) -> None:
        """Raise when a child has exited."""
        for name, child in self.procs.items():
            code = child.poll()
            if code is not None:
                raise ChildError(f"{name} exited with {code}:\n{self.log(name)}")

    def wait(self, what: str, ready: Callable[[], bool], timeout_s: float) -> None:
        """Until ``ready()`` (children checked every 0.5 s); ChildError on timeout."""
        deadline = time.monotonic() + timeout_s
        while not ready():
            self.check()
            if time.monotonic() > deadline:
                raise ChildError(f"timed out after {timeout_s:.0f} s waiting for {what}")
            time.sleep(0.5)

    def stop(self) -> dict[str, int | None]:
        """Stop every child, the last started first (services before the trainers that
        feed them, the worker last); their exit codes."""
        codes = {}
        for name, child in reversed(self.procs.items()):
            codes[name] = child.stop()
        return codes

    # -- metrics --------------------------------------------------------------------------------
    def metrics_url(self, name: str) -> str | None:
        """The child's /metrics URL once it registered its endpoint (or the first of its
        own children's: ``lumstream serve``'s worker processes serve their own)."""
        child = self.procs[name]
        paths = sorted(
            p
            for p in self.discovery.glob("*-*.json")
            if (pid := _pid_of(p)) is not None and child.pid in (pid, _parent(pid))
        )
        for path in paths:
            try:
                targets = json.loads(path.read_text())[0]["targets"]
            except (OSError, ValueError, LookupError):
                return None
            return f"http://{targets[0]}/metrics"
        return None

    def scrape(self, name: str) -> list[Sample]:
        """Every sample of the child's /metrics now (empty before it serves them)."""
        url = self.metrics_url(name)
        if url is None:
            return []
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 (http: only)
                text = resp.read().decode()
        except OSError:
            return []
        return [s for family in text_string_to_metric_families(text) for s in family.samples]

    def metric(self, name: str, metric: str, labels: dict[str, str] | None = None) -> float | None:
        """The value of one sample of the child's metrics (summed over other labels)."""
        got = [
            s.value
            for s in self.scrape(name)
            if s.name == metric and all(s.labels.get(k) == v for k, v in (labels or {}).items())
        ]
        return sum(got) if got else None


def _pid_of(path: Path) -> int | None:
    tail = path.stem.rpartition("-")[2]
    return int(tail) if tail.isdigit() else None


def _parent(pid: int) -> int | None:
    """The parent of a process (Linux ``/proc``); None when it is gone or unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("PPid:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None
