"""The /metrics endpoint of a long-running command and its discovery file."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from monitoring.config import MetricsConfig
from monitoring.metrics import Metrics
from monitoring.server import discovered, metrics_endpoint


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
        return resp.read().decode()


def test_serves_the_registry_on_a_free_loopback_port_and_registers_itself(tmp_path: Path) -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.events_produced.labels(topic="t", source="test").inc(3)
    with metrics_endpoint(
        MetricsConfig(), metrics.registry, role="worker", discovery_dir=tmp_path
    ) as server:
        assert server is not None
        assert server.host == "127.0.0.1"
        assert server.port > 0
        body = _get(server.url)
        assert 'lumstream_events_produced_total{source="test",topic="t"} 3.0' in body
        files = list(tmp_path.glob("*.json"))
        assert [f.name for f in files] == [f"worker-{os.getpid()}.json"]
        entry = json.loads(files[0].read_text())[0]
        assert entry["targets"] == [server.target]
        assert entry["labels"]["role"] == "worker"
        assert entry["labels"]["job"] == "lumstream"
        assert discovered(tmp_path) == [entry]
    assert list(tmp_path.glob("*.json")) == []  # removed on exit
    with pytest.raises(OSError, match="refused"):  # and the port is closed
        _get(server.url)


def test_two_endpoints_on_one_machine_get_two_ports(tmp_path: Path) -> None:
    cfg = MetricsConfig()
    with (
        metrics_endpoint(cfg, CollectorRegistry(), role="a", discovery_dir=tmp_path) as a,
        metrics_endpoint(cfg, CollectorRegistry(), role="b", discovery_dir=tmp_path) as b,
    ):
        assert a is not None
        assert b is not None
        assert a.port != b.port
        assert sorted(t["labels"]["role"] for t in discovered(tmp_path)) == ["a", "b"]


def test_files_of_dead_processes_are_pruned_and_other_hosts_kept(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()

    def entry(pid: int, host: str) -> list[dict[str, object]]:
        labels = {"job": "lumstream", "role": "x", "pid": str(pid), "host": host}
        return [{"targets": ["127.0.0.1:1"], "labels": labels}]

    (tmp_path / "dead.json").write_text(json.dumps(entry(dead.pid, socket.gethostname())))
    (tmp_path / "other.json").write_text(json.dumps(entry(dead.pid, "another-host")))
    (tmp_path / "junk.json").write_text("{not json")
    found = discovered(tmp_path)
    assert [t["labels"]["host"] for t in found] == ["another-host"]  # type: ignore[index]
    assert not (tmp_path / "dead.json").exists()
    assert (tmp_path / "junk.json").exists()  # not ours: left alone


def test_disabled_or_busy_port_serves_nothing_and_registers_nothing(tmp_path: Path) -> None:
    with metrics_endpoint(
        MetricsConfig(enabled=False), CollectorRegistry(), role="x", discovery_dir=tmp_path
    ) as server:
        assert server is None
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cfg = MetricsConfig(port=busy.getsockname()[1])
        with metrics_endpoint(cfg, CollectorRegistry(), role="x", discovery_dir=tmp_path) as s:
            assert s is None  # logged, not fatal
    assert list(tmp_path.iterdir()) == []
