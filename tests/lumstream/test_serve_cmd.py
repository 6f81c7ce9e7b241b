"""``lumstream serve`` as real processes: several workers share the port, each request is
answered, /readyz, /healthz and /metrics work, a SIGKILLed worker is replaced while the
other answers, and SIGTERM lets in-flight requests finish (no request fails; afterwards
connections are refused)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from support.ranker import samples
from support.serving import one_per_user, trained, write_histories

from lumstream.config import load
from lumstream.pipeline.serve import start_service
from serving.api import Candidate, RankRequest
from serving.client import RankClient, RankError


def _workers(pid: int) -> list[int]:
    """The spawned worker processes of ``pid`` (not multiprocessing's resource tracker)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmd = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"spawn_main" in cmd:
                out.append(int(child))
    return out


def _listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a socket listening on ``port`` (Linux /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f[9])
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            return True
    return False


def _wait_dead(pid: int, timeout_s: float = 30.0) -> None:
    """Until ``pid`` has exited (gone, or a zombie waiting for its parent)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} did not exit after SIGKILL")


@pytest.mark.slow
def test_serve_runs_workers_and_stops_gracefully(tmp_path: Path) -> None:
    with trained(tmp_path, steps=256) as t:
        t.publish()
        writer = write_histories(t.paths.store, one_per_user(samples().slice(640, 2000), 5))
        writer.close()
    cfg = load(
        env={},
        overrides={
            "paths": {"data_dir": str(tmp_path / "data")},
            "store": {"path": str(t.paths.store), "sync_writes": "false"},
            "refresh": {"vector_store_dir": str(t.paths.vectors)},
            "ranker": {"versions_dir": str(t.paths.versions)},
            "worker": {"history_len": "30"},
            "serving": {"port": "0", "workers": "2", "deadline_ms": "2000"},
            "metrics": {"port": "0"},
        },
    )
    req = RankRequest("7", [Candidate(str(i), "cat1") for i in range(100)], condition="cat1")
    with start_service(cfg, timeout_s=60) as svc:
        supervisor = svc.child.pid
        assert len(_workers(supervisor)) == 2  # the exec wrapper execs lumstream itself
        with svc.client() as c:
            assert c.ready().status == "ready"
            assert c.raw("GET", "/healthz")[0] == 200
            assert c.rank(req).ranker_version == "r1"
            status, body = c.raw("GET", "/metrics")
            assert status == 200
            assert b"lumstream_serving_request_seconds_count" in body
        # a worker SIGKILLed: the other keeps answering, the supervisor starts a new one
        port = int(svc.url.rsplit(":", 1)[1])
        deadline = time.monotonic() + 60
        while not all(_listens(w, port) for w in _workers(supervisor)):  # both started
            assert time.monotonic() < deadline, "a worker never listened"
            time.sleep(0.2)
        victim = _workers(supervisor)[0]
        os.kill(victim, signal.SIGKILL)
        _wait_dead(victim)  # its listening socket closes at exit (a SYN racing it gets RST)
        for _ in range(20):
            with svc.client() as c:  # a fresh connection each: the kernel picks a live worker
                assert c.rank(req).ranker_version == "r1"
        deadline = time.monotonic() + 60
        while not (len(_workers(supervisor)) == 2 and victim not in _workers(supervisor)):
            assert time.monotonic() < deadline, "the killed worker was not replaced"
            time.sleep(0.2)
        deadline = time.monotonic() + 60
        while True:  # the new worker becomes ready (its readyz answers through the port)
            with svc.client() as c:
                if c.ready().status == "ready":
                    break
            assert time.monotonic() < deadline
            time.sleep(0.2)
        ok: list[int] = []
        bad: list[BaseException] = []
        refused = threading.Event()

        def ask() -> None:
            with RankClient(svc.url, timeout_s=30) as c:
                while not refused.is_set():
                    try:
                        c.rank(req)
                        ok.append(1)
                    except ConnectionRefusedError:
                        refused.set()
                    except (RankError, OSError) as exc:
                        bad.append(exc)
                        return

        threads = [threading.Thread(target=ask) for _ in range(6)]
        for th in threads:
            th.start()
        time.sleep(1.0)
        before = len(ok)
        os.kill(supervisor, signal.SIGTERM)
        for th in threads:
            th.join(timeout=60)
    assert before > 10
    assert bad == []
    assert refused.is_set()
