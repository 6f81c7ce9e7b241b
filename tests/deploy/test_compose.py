"""deploy/compose.yaml and deploy/prometheus.yml, checked without a Docker engine: every
lumstream service runs a real ``lumstream`` command line with settings that load, against
the external Kafka it is given, with its /metrics reachable and scraped, sharing the data
volume."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from typing import Any

import pytest
import yaml
from support.deploy import (
    COMPOSE,
    PROMETHEUS,
    InterpolationError,
    read_compose,
    read_dockerfile,
    service_env,
)
from support.paths import REPO

from core.settings import env_name
from lumstream.config import CONFIG_ENV, SECTIONS, load

BOOTSTRAP = "kafka-1.example:9092,kafka-2.example:9092"
# The long-running commands the deployment must run, one service each.
REQUIRED = {("worker",), ("backbone", "refresh"), ("train",), ("serve",)}
KNOWN_ENV = {CONFIG_ENV} | {
    env_name(cls.section, f) for cls in SECTIONS for f in cls.__dataclass_fields__
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return read_compose({"KAFKA_BOOTSTRAP_SERVERS": BOOTSTRAP})


def lumstream_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services running the lumstream image (built from this repository)."""
    return {
        name: svc
        for name, svc in compose["services"].items()
        if "build" in svc or str(svc.get("image", "")).split(":")[0].endswith("lumstream")
    }


def command(svc: dict[str, Any]) -> list[str]:
    cmd = svc["command"]
    assert isinstance(cmd, list), f"exec form please: {cmd!r}"
    return [str(c) for c in cmd]


def test_kafka_is_external_and_required() -> None:
    with pytest.raises(InterpolationError, match="KAFKA_BOOTSTRAP_SERVERS"):
        read_compose({})
    with pytest.raises(InterpolationError, match="KAFKA_BOOTSTRAP_SERVERS"):
        read_compose({"KAFKA_BOOTSTRAP_SERVERS": ""})


def test_one_service_per_long_running_command(compose: dict[str, Any]) -> None:
    services = lumstream_services(compose)
    commands = [command(svc) for svc in services.values()]
    heads = [tuple(c[: len(r)]) for c in commands for r in REQUIRED if tuple(c[: len(r)]) == r]
    assert sorted(heads) == sorted(REQUIRED), commands
    # broker-less: no embedded broker, and no Kafka of its own either
    assert not any(c[0] == "broker" for c in commands)
    others = set(compose["services"]) - set(services)
    assert others == {"prometheus"}, others


def test_every_command_line_is_real(compose: dict[str, Any]) -> None:
    """``lumstream <args> --help`` exits 0 for each service's command, in its environment."""
    for name, svc in lumstream_services(compose).items():
        env = {k: v for k, v in os.environ.items() if not k.startswith("LUMSTREAM_")}
        env.update(service_env(svc))
        env["PYTHONPATH"] = str(REPO)
        proc = subprocess.run(
            [sys.executable, "-m", "lumstream.cli", *command(svc), "--help"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, f"{name}: {command(svc)}\n{proc.stderr[-2000:]}"
        words = list(itertools.takewhile(lambda w: not w.startswith("-"), command(svc)))
        assert proc.stdout.startswith(f"usage: lumstream {' '.join(words)} "), proc.stdout


def test_every_service_environment_loads(compose: dict[str, Any]) -> None:
    """Each service's settings are real ones (a typo would be ignored silently), they load,
    and they point at the external Kafka, a data dir and a reachable /metrics port."""
    image_env = read_dockerfile().final.env()
    for name, svc in lumstream_services(compose).items():
        env = service_env(svc)
        unknown = sorted(k for k in env if k.startswith("LUMSTREAM_") and k not in KNOWN_ENV)
        assert not unknown, f"{name}: not lumstream settings: {unknown}"
        cfg = load(env=env)
        assert cfg.kafka.bootstrap_servers == BOOTSTRAP, name
        assert cfg.metrics.enabled, name
        assert cfg.metrics.host == "0.0.0.0", name
        assert cfg.metrics.port > 0, f"{name}: a fixed port, for Prometheus and the health check"
        assert str(cfg.metrics.port) == image_env["LUMSTREAM_METRICS_PORT"], name
        assert str(cfg.paths.data_dir) == image_env["LUMSTREAM_PATHS_DATA_DIR"], name


def test_services_share_the_data_volume(compose: dict[str, Any]) -> None:
    data_dir = read_dockerfile().final.env()["LUMSTREAM_PATHS_DATA_DIR"]
    volumes = compose.get("volumes") or {}
    mounted: set[str] = set()
    for name, svc in lumstream_services(compose).items():
        found = [
            v.split(":")[0]
            for v in svc.get("volumes", [])
            if isinstance(v, str) and v.split(":")[1] == data_dir
        ]
        assert found, f"{name}: no volume at {data_dir}"
        assert found[0] in volumes, f"{name}: {found[0]} is not a named volume"
        assert not any(v.endswith(":ro") for v in svc["volumes"]), f"{name}: needs to write"
        mounted.add(found[0])
    assert len(mounted) == 1, f"one shared data volume, not {mounted}"


def test_workers_scale_without_conflicts(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert "container_name" not in worker  # a fixed name allows one replica only
    assert "ports" not in worker  # replicas would fight over a published port
    assert int(worker["deploy"]["replicas"]) >= 1


def test_prometheus_scrapes_every_lumstream_service(compose: dict[str, Any]) -> None:
    prom = compose["services"]["prometheus"]
    assert prom["image"].startswith("prom/prometheus:")
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prom["volumes"]}
    assert mounts["/etc/prometheus/prometheus.yml"] == f"./{PROMETHEUS.name}"
    assert (COMPOSE.parent / PROMETHEUS.name).is_file()

    config = yaml.safe_load(PROMETHEUS.read_text())
    targets: set[tuple[str, int]] = set()
    for job in config["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics"
        for sd in job.get("dns_sd_configs", []):
            targets |= {(n, int(sd["port"])) for n in sd["names"]}
        for sc in job.get("static_configs", []):
            for t in sc["targets"]:
                host, _, port = t.rpartition(":")
                targets.add((host, int(port)))
    for name, svc in lumstream_services(compose).items():
        port = int(service_env(svc)["LUMSTREAM_METRICS_PORT"])
        assert (name, port) in targets, f"{name}:{port} is not scraped ({sorted(targets)})"
