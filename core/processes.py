"""Child binaries that never outlive this process (the embedded broker, Prometheus, ...).

:class:`ChildProcess` starts a program and stops it in order; the child never outlives
this process, even when this process is SIGKILLed:

- the program is started through a tiny exec wrapper (``python -I -S -c``) that sets
  ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` and then ``exec``s it; nothing of ours runs
  between fork and exec, so this is safe in a process with threads (``preexec_fn`` is not);
- the wrapper checks that its parent is still the one that started it, closing the race
  where the parent dies between fork and prctl;
- the death signal is tied to the *thread* that forked (prctl(2)), so the fork happens
  in a keeper thread that lives exactly as long as the child, whichever thread calls
  :meth:`ChildProcess.start`;
- ``start_new_session`` keeps a terminal's Ctrl-C away from the child: this process
  receives it and stops the child in order.

:meth:`ChildProcess.stop` sends the child's stop signal (SIGTERM by default; tansu wants
SIGINT), then SIGKILL after ``kill_after_s``, and reaps it. A child still running when the
interpreter exits normally is stopped by an ``atexit`` hook.

Example:
    >>> child = ChildProcess("sleep")  # doctest: +SKIP
    >>> with open("sleep.log", "ab") as log:  # doctest: +SKIP
    ...     child.start(["/bin/sleep", "60"], log)
    >>> child.stop()  # doctest: +SKIP
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

# Runs in the child between fork and the program: argv = [-c, parent_pid, program, args...].
_PDEATHSIG_EXEC = """\
import ctypes, os, signal, sys
if sys.platform.startswith("linux"):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(1, int(signal.SIGKILL), 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
        sys.exit("lumstream: prctl(PR_SET_PDEATHSIG) failed: errno %d" % ctypes.get_errno())
    if os.getppid() != int(sys.argv[1]):
        sys.exit("lumstream: parent exited before the child started")
os.execv(sys.argv[2], sys.argv[2:])
"""


class ChildError(RuntimeError):
    """A child program that cannot be started; the message says which and why."""


def free_port(host: str) -> int:
    """A port that was free on ``host`` a moment ago (the caller retries on a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def tail(path: Path, start: int = 0, limit: int = 2000) -> str:
    """The last ``limit`` bytes of ``path`` written after offset ``start`` (a child's log)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(start, fh.tell() - limit))
            return fh.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


class ChildProcess:
    """One supervised child program (see the module doc).

    Args:
        name: for logs and errors (``tansu``, ``prometheus``).
        stop_signal: what :meth:`stop` sends first.
        kill_after_s: seconds between the stop signal and SIGKILL.
    """

    def __init__(
        self, name: str, *, stop_signal: int = signal.SIGTERM, kill_after_s: float = 5.0
    ) -> None:
        self.name, self.stop_signal, self.kill_after_s = name, stop_signal, kill_after_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._keeper: threading.Thread | None = None
        self._release = threading.Event()

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise ChildError(f"{self.name} is not running")
        return self._proc.pid

    @property
    def started(self) -> bool:
        """Started and not reaped yet (it may have exited: see :meth:`poll`)."""
        return self._proc is not None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def poll(self) -> int | None:
        """The exit code once the child has exited, else None (also when never started)."""
        return None if self._proc is None else self._proc.poll()

    def start(
        self,
        argv: Sequence[str],
        output: IO[bytes],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        """Start ``argv`` with stdout and stderr to ``output`` (a file), stdin closed.

        Args:
            env: the child's environment (default: this process's, plus ``NO_COLOR=1``).
            cwd: its working directory (default: this process's).
        Raises:
            ChildError: already running, or the program cannot be executed.
        """
        if self._proc is not None:
            raise ChildError(f"{self.name} already runs (pid {self._proc.pid})")
        cmd = [sys.executable, "-I", "-S", "-c", _PDEATHSIG_EXEC, str(os.getpid()), *argv]
        child_env = dict(os.environ if env is None else env)
        child_env.setdefault("NO_COLOR", "1")
        handoff: queue.Queue[subprocess.Popen[bytes] | BaseException] = queue.Queue()
        self._release.clear()

        def keep() -> None:
            try:
                proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    env=child_env,
                    close_fds=True,
                    start_new_session=True,
                    cwd=cwd,
                )
            except BaseException as exc:
                handoff.put(exc)
                return
            handoff.put(proc)
            self._release.wait()

        self._keeper = threading.Thread(target=keep, name=f"{self.name}-keeper", daemon=True)
        self._keeper.start()
        got = handoff.get()
        if isinstance(got, BaseException):
            self._release_keeper()
            raise ChildError(f"cannot start {self.name} {argv[0]}: {got}") from got
        self._proc = got
        atexit.register(self.stop)

    def stop(self) -> int | None:
        """The stop signal, then SIGKILL after ``kill_after_s``; reap. Idempotent.

        Returns:
            The child's exit code (None when it was not started).
        """
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(self.stop_signal)
            try:
                proc.wait(timeout=self.kill_after_s)
            except subprocess.TimeoutExpired:
                log.warning(
                    "%s pid %d ignored %s for %.1f s; killing it",
                    self.name,
                    proc.pid,
                    signal.Signals(self.stop_signal).name,
                    self.kill_after_s,
                )
                proc.kill()
        return self.reap()

    def reap(self) -> int | None:
        """Kill the child if it still runs, wait for it and release its keeper thread."""
        code = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            code = self._proc.wait()
            self._proc = None
        self._release_keeper()
        return code

    def _release_keeper(self) -> None:
        self._release.set()
        if self._keeper is not None and self._keeper is not threading.current_thread():
            self._keeper.join(timeout=5)
        self._keeper = None
