"""The Dockerfile, .dockerignore and the install script they share, checked without a
Docker engine: the build context is small, the install line the image runs installs the
pinned CPU torch from the PyTorch CPU index (CUDA wheels matching the CUDA base with
LUMSTREAM_GPU=1) and no dev extras, and the HEALTHCHECK asks /metrics."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, start_http_server
from support.deploy import (
    Dockerfile,
    dockerignore_rules,
    dockerignored,
    exec_form,
    read_dockerfile,
)
from support.paths import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
TORCH_PIN = next(d for d in PYPROJECT["project"]["dependencies"] if d.startswith("torch=="))
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return read_dockerfile()


# --- .dockerignore ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".venv",
        ".git/HEAD",
        ".git",  # a worktree's .git is a file
        "data/store/p0/CURRENT",
        "build/lib/core/__init__.py",
        "lumstream.egg-info/PKG-INFO",
        "tests/conftest.py",
        "bench/bench_worker.py",
        ".pytest_cache/v/cache/nodeids",
        ".mypy_cache/3.11/core.json",
        "core/__pycache__/paths.cpython-311.pyc",
        "streams/kafka/__pycache__/x.pyc",
        "out/report.txt",
    ],
)
def test_dockerignore_keeps_junk_out(path: str) -> None:
    assert dockerignored(path, dockerignore_rules())


def test_dockerignore_keeps_what_the_image_copies(dockerfile: Dockerfile) -> None:
    rules = dockerignore_rules()
    sources = [
        src
        for stage in dockerfile.stages
        for arg in stage.all("COPY")
        if not arg.startswith("--from")
        for src in arg.split()[:-1]
    ]
    assert sources
    for src in sources:
        assert not dockerignored(src, rules), f"COPY {src}: left out of the build context"
        assert (REPO / src).exists(), src
        if (REPO / src).is_dir():
            for f in (REPO / src).rglob("*.py"):
                rel = f.relative_to(REPO).as_posix()
                assert "__pycache__" in rel or not dockerignored(rel, rules), rel


def test_image_copies_every_package(dockerfile: Dockerfile) -> None:
    """The packages setuptools installs are all in the image (and nothing else is needed)."""
    build = dockerfile.stage("build")
    copied = {arg.split()[0].rstrip("/") for arg in build.all("COPY")}
    packages = {
        p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert packages <= copied, packages - copied


# --- the install: one script, the image's options ------------------------------------------


def _install_line(dockerfile: Dockerfile) -> list[str]:
    runs = [r for r in dockerfile.stage("build").all("RUN") if "scripts/install.sh" in r]
    assert len(runs) == 1, runs
    words = shlex.split(runs[0].split("&&")[0])
    assert words[-2:] == ["bash", "scripts/install.sh"], words
    return words[:-2]


def _run_install(assignments: list[str], build_args: dict[str, str], tmp: Path) -> list[str]:
    """Run scripts/install.sh with the Dockerfile's settings against a fake venv whose
    python records its arguments: the pip commands the image build would run."""
    venv = tmp / "venv"
    (venv / "bin").mkdir(parents=True)
    log = venv / "calls.log"
    fake = venv / "bin" / "python"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\n[ "$1" = "-" ] && cat >/dev/null\nexit 0\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp)}
    for a in assignments:
        key, _, value = a.partition("=")
        for arg, val in build_args.items():
            value = value.replace(f"${{{arg}}}", val).replace(f"${arg}", val)
        env[key] = value
    env["VENV"] = str(venv)  # not the image's path
    env.update({k: v for k, v in build_args.items() if k == "CUDA_VERSION"})
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "install.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return [
        line.removeprefix("-m pip --disable-pip-version-check -q ")
        for line in log.read_text().splitlines()
    ]


def test_cpu_image_installs_pinned_cpu_torch_and_runtime_only(
    dockerfile: Dockerfile, tmp_path: Path
) -> None:
    assert dockerfile.args["LUMSTREAM_GPU"] == "0"  # the default build is the CPU build
    assert dockerfile.stage("base-0").base.startswith("python:3.11")
    calls = _run_install(
        _install_line(dockerfile), {"LUMSTREAM_GPU": "0", "LUMSTREAM_CUDA": ""}, tmp_path
    )
    assert f"install --index-url {CPU_INDEX} {TORCH_PIN}" in calls, calls
    assert TORCH_PIN == "torch==2.13.0"
    assert "install .[cpu]" in calls, calls  # no dev extras, not editable
    assert not any("dev" in c or " -e " in c for c in calls), calls
    assert "install --no-deps torchrec==1.8.0" in calls, calls
    # no Prometheus in the image (deploy/ runs Prometheus' own): nothing fetched with apt
    assert "LUMSTREAM_PROMETHEUS=0" in _install_line(dockerfile)
    assert not (tmp_path / "venv" / "opt").exists()


def test_gpu_image_takes_cuda_base_and_matching_wheels(
    dockerfile: Dockerfile, tmp_path: Path
) -> None:
    cuda = dockerfile.args["CUDA_VERSION"]
    base = dockerfile.stage("base-1").base
    assert base.startswith("nvidia/cuda:${CUDA_VERSION}-"), base
    flavour = "cu" + "".join(cuda.split(".")[:2])
    calls = _run_install(
        _install_line(dockerfile),
        {"LUMSTREAM_GPU": "1", "LUMSTREAM_CUDA": "", "CUDA_VERSION": cuda},
        tmp_path,
    )
    index = f"https://download.pytorch.org/whl/{flavour}"
    assert f"install --index-url {index} {TORCH_PIN} fbgemm-gpu==1.8.0" in calls, calls
    assert "install .[gpu]" in calls, calls
    assert not any("fbgemm-gpu-cpu" in c or "dev" in c for c in calls), calls
    # the base is chosen by the same argument
    assert dockerfile.stage("base").base == "base-${LUMSTREAM_GPU}"


def test_dev_install_is_unchanged(tmp_path: Path) -> None:
    """make install / CI: editable, with the dev extras, torch from the configured indexes."""
    calls = _run_install([], {}, tmp_path)
    assert f"install {TORCH_PIN}" in calls, calls
    assert "install -e .[cpu,dev]" in calls, calls


# --- the runtime image ---------------------------------------------------------------------


def test_runtime_stage(dockerfile: Dockerfile) -> None:
    final = dockerfile.final
    env = final.env()
    users = final.all("USER")
    assert users, "runs as root"
    assert users[-1] not in ("root", "0")
    assert final.all("VOLUME") == [env["LUMSTREAM_PATHS_DATA_DIR"]]
    assert final.all("EXPOSE") == [env["LUMSTREAM_METRICS_PORT"]]
    assert env["LUMSTREAM_METRICS_HOST"] == "0.0.0.0"
    assert exec_form(final.all("ENTRYPOINT")[0]) == ["lumstream"]
    # only the venv comes from the build stage: no sources, no pip caches
    assert final.all("COPY") == ["--from=build /opt/lumstream/venv /opt/lumstream/venv"]


def _healthcheck(dockerfile: Dockerfile) -> list[str]:
    (check,) = dockerfile.final.all("HEALTHCHECK")
    cmd = exec_form(check)
    assert cmd[0] == "python"  # the venv's, first on PATH
    assert "/metrics" in cmd[-1]
    return [sys.executable, *cmd[1:]]


def test_healthcheck_asks_metrics(dockerfile: Dockerfile) -> None:
    cmd = _healthcheck(dockerfile)
    registry = CollectorRegistry()
    Counter("healthcheck_probe", "a metric to serve", registry=registry).inc()
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    port = server.server_address[1]
    base = {"PATH": os.environ["PATH"]}

    def check(**env: str) -> int:
        return subprocess.run(cmd, env={**base, **env}, capture_output=True, timeout=30).returncode

    try:
        assert check(LUMSTREAM_METRICS_PORT=str(port)) == 0
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert check(LUMSTREAM_METRICS_PORT=str(port)) != 0  # nothing answers: unhealthy
    assert check(LUMSTREAM_METRICS_PORT=str(port), LUMSTREAM_METRICS_ENABLED="false") == 0
