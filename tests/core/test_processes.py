"""Supervised child programs: stopped in order, killed when they ignore the stop signal, and
never outliving a SIGKILLed parent (the embedded broker's tests cover the same through tansu)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from support.paths import REPO

from core.processes import ChildError, ChildProcess, tail


def _gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "child.sh"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def test_stop_sends_the_stop_signal_and_reaps(tmp_path: Path) -> None:
    script = _script(
        tmp_path, "trap 'echo got TERM; exit 0' TERM; echo ready; while :; do sleep 0.05; done"
    )
    child = ChildProcess("demo")
    log = tmp_path / "child.log"
    with log.open("ab") as fh:
        child.start([str(script)], fh)
    pid = child.pid
    deadline = time.monotonic() + 10
    while "ready" not in tail(log) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert child.running
    assert child.stop() == 0
    assert "got TERM" in tail(log)
    assert not child.started
    assert _gone(pid)
    assert child.stop() is None  # idempotent


def test_a_child_ignoring_the_signal_is_killed(tmp_path: Path) -> None:
    script = _script(tmp_path, "trap '' TERM; echo ready; while :; do sleep 0.05; done")
    child = ChildProcess("stubborn", kill_after_s=0.3)
    with (tmp_path / "log").open("ab") as fh:
        child.start([str(script)], fh)
    time.sleep(0.2)
    assert child.stop() == -signal.SIGKILL


def test_a_missing_program_exits_with_an_error(tmp_path: Path) -> None:
    child = ChildProcess("nothing")
    with (tmp_path / "log").open("ab") as fh:
        child.start([str(tmp_path / "missing")], fh)  # the exec wrapper starts, then fails
    deadline = time.monotonic() + 10
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert child.poll() not in (None, 0)
    child.reap()
    with pytest.raises(ChildError, match="not running"):
        _ = child.pid


_PARENT = textwrap.dedent("""
    import sys, threading, time
    from core.processes import ChildProcess
    child = ChildProcess("sleeper")
    # started from a thread that then exits: the death signal must not fire with it
    t = threading.Thread(target=lambda: child.start(["/bin/sleep", "120"], sys.stderr.buffer))
    t.start(); t.join()
    print(child.pid, flush=True)
    time.sleep(120)
""")


def test_no_orphan_when_the_parent_is_sigkilled() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        os.kill(pid, 0)  # alive after its starting thread exited
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        assert _gone(pid), f"pid {pid} outlived its SIGKILLed parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
