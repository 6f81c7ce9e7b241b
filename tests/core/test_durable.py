"""Versioned directories and atomic files: publish, list, verify, retain, and crashes.

The kill tests run a real child process that publishes and retains versions and SIGKILL it
at chosen points (every fsync and rename of a publish and a retention) and at a random
moment: afterwards every visible version verifies, and the next publish cleans up.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.paths import REPO

from core.durable import VersionedDir, VersionError, write_json_atomic

_CHILD = """
import os, signal, sys
sys.path.insert(0, {repo!r})
from pathlib import Path
import core.durable as d
root, kill_at = Path(sys.argv[1]), int(sys.argv[2])
calls = 0
def counting(fn):
    def wrapper(*args, **kwargs):
        global calls
        calls += 1
        if calls == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return fn(*args, **kwargs)
    return wrapper
d.fsync_path = counting(d.fsync_path)
d.os.rename = counting(os.rename)
vd = d.VersionedDir(root, "r")
n = 0
while True:
    stage = vd.stage()
    (stage / "data.bin").write_bytes(os.urandom(4096))
    vd.publish(stage, {{"kind": "test"}})
    vd.retain(2)
    n += 1
    if kill_at >= 0 and n >= 3:
        break
"""


def _child(root: Path, kill_at: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD.format(repo=str(REPO)), str(root), str(kill_at)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _visible(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if not p.name.startswith("."))


def _stage(vd: VersionedDir, payload: bytes = b"abc") -> Path:
    stage = vd.stage()
    (stage / "data.bin").write_bytes(payload)
    return stage


def test_publish_list_verify_and_retain(tmp_path: Path) -> None:
    vd = VersionedDir(tmp_path / "versions", "v")
    assert vd.paths() == []
    assert vd.latest() is None
    assert vd.newest_valid() is None
    for i in range(4):
        path = vd.publish(_stage(vd, b"x" * i), {"i": i})
        assert path.name == f"v{i + 1}"
    manifest = vd.verify(vd.latest())  # type: ignore[arg-type]
    assert manifest["i"] == 3
    assert manifest["number"] == 4
    assert manifest["files"]["data.bin"]["bytes"] == 3
    assert vd.retain(2) == ["v1", "v2"]
    assert [p.name for p in vd.paths()] == ["v3", "v4"]
    assert sorted(p.name for p in (tmp_path / "versions").iterdir()) == ["v3", "v4"]
    with pytest.raises(ValueError, match="at least 1"):
        vd.retain(0)


def test_zero_padded_numbers_sort_and_parse(tmp_path: Path) -> None:
    vd = VersionedDir(tmp_path, "ck-", width=6)
    for steps in (90, 120, 7):
        vd.publish(_stage(vd), {}, number=steps)
    assert [p.name for p in vd.paths()] == ["ck-000007", "ck-000090", "ck-000120"]
    assert vd.number(tmp_path / "ck-000120") == 120
    with pytest.raises(VersionError, match="not a version directory"):
        vd.number(tmp_path / "other")


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ("truncate", "truncated"),
        ("flip", "SHA-256"),
        ("drop_file", "missing"),
        ("drop_manifest", "manifest.json is missing"),
        ("bad_json", "not valid JSON"),
        ("wrong_number", "does not match"),
    ],
)
def test_verify_names_what_is_wrong(tmp_path: Path, damage: str, match: str) -> None:
    vd = VersionedDir(tmp_path, "v")
    path = vd.publish(_stage(vd, b"0123456789"), {})
    data, manifest = path / "data.bin", path / "manifest.json"
    if damage == "truncate":
        data.write_bytes(b"0123")
    elif damage == "flip":
        data.write_bytes(b"0123456780")
    elif damage == "drop_file":
        data.unlink()
    elif damage == "drop_manifest":
        manifest.unlink()
    elif damage == "bad_json":
        manifest.write_text("{")
    else:
        manifest.write_text(json.dumps(dict(json.loads(manifest.read_text()), number=9)))
    with pytest.raises(VersionError, match=match):
        vd.verify(path)
    assert vd.newest_valid() is None


def test_a_corrupt_version_of_the_same_number_is_replaced(tmp_path: Path) -> None:
    vd = VersionedDir(tmp_path, "ck-")
    first = vd.publish(_stage(vd, b"good state"), {}, number=5)
    (first / "data.bin").write_bytes(b"go")  # truncated on disk
    skipped: list[str] = []
    assert vd.newest_valid(lambda p, exc: skipped.append(p.name)) is None
    assert skipped == ["ck-5"]
    again = vd.publish(_stage(vd, b"good state"), {}, number=5)
    assert again == first
    assert vd.verify(again)["files"]["data.bin"]["bytes"] == 10
    # an intact version of that number is kept and the new staging dropped
    vd.publish(_stage(vd, b"other bytes"), {}, number=5)
    assert (again / "data.bin").read_bytes() == b"good state"
    assert _visible(tmp_path) == [again]


def test_staging_of_live_and_other_hosts_is_kept_dead_ones_removed(tmp_path: Path) -> None:
    host = socket.gethostname()
    live = tmp_path / f".tmp-{host}-{os.getppid()}-{'a' * 32}"
    other_host = tmp_path / f".tmp-elsewhere-1-{'b' * 32}"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    dead_dir = tmp_path / f".del-{host}-{dead.pid}-{'c' * 32}"
    for d in (live, other_host, dead_dir):
        d.mkdir()
    assert VersionedDir(tmp_path, "v").clean() == [dead_dir]
    assert live.exists()
    assert other_host.exists()
    assert not dead_dir.exists()


# A publish + retain makes 4 fsyncs and 1 rename (files, manifest, staging, root; rename),
# a retention 1 rename and 1 fsync per removed version: kill at each of the first rounds'.
@pytest.mark.parametrize("kill_at", list(range(1, 19)))
def test_a_kill_at_any_step_never_exposes_a_broken_version(tmp_path: Path, kill_at: int) -> None:
    child = _child(tmp_path, kill_at)
    _, err = child.communicate(timeout=60)
    assert child.returncode in (-signal.SIGKILL, 0), err.decode()
    vd = VersionedDir(tmp_path, "r")
    for path in _visible(tmp_path):
        vd.verify(path)  # complete, or this raises
    before = [p.name for p in vd.paths()]
    assert len(before) <= 3  # retention keeps 2, plus at most one published before its retain
    after = vd.publish(_stage(vd), {})
    assert after.name == f"r{int(before[-1][1:]) + 1 if before else 1}"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # cleaned


def test_a_kill_at_a_random_moment_never_exposes_a_broken_version(tmp_path: Path) -> None:
    child = _child(tmp_path, -1)
    deadline = time.monotonic() + 60
    vd = VersionedDir(tmp_path, "r")
    while time.monotonic() < deadline and (not vd.paths() or vd.number(vd.paths()[-1]) < 20):
        time.sleep(0.01)
    time.sleep(0.0137)
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=60)
    visible = _visible(tmp_path)
    assert visible, "the child published nothing"
    for path in visible:
        vd.verify(path)
    vd.clean()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_write_json_atomic_replaces_whole(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"a": 2, "b": [1, 2]})
    assert json.loads(path.read_text()) == {"a": 2, "b": [1, 2]}
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json"]
