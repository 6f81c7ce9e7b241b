# syntax=docker/dockerfile:1
# lumstream: one image for every command (worker, backbone refresh, train, broker, demo, ...).
#
#   docker build -t lumstream .                                    # CPU: torch 2.13.0 from
#                                                                  # download.pytorch.org/whl/cpu
#   docker build -t lumstream:gpu --build-arg LUMSTREAM_GPU=1 .    # CUDA base image nvidia/cuda:
#                                                                  # $CUDA_VERSION, torch and
#                                                                  # fbgemm-gpu from whl/cu128
#   docker run --rm lumstream demo
#   docker run --rm -e LUMSTREAM_KAFKA_BOOTSTRAP_SERVERS=kafka:9092 -v lumstream-data:/var/lib/lumstream lumstream worker
#
# Build arguments:
#   LUMSTREAM_GPU=0|1   1 takes the CUDA base image and the CUDA wheels (torch, fbgemm-gpu)
#   CUDA_VERSION        the nvidia/cuda base image's CUDA (GPU only); the PyTorch wheel
#                       flavour follows from it (12.8.1 -> cu128): scripts/install.sh reads
#                       the base image's own CUDA_VERSION, so image and wheels always agree
#   LUMSTREAM_CUDA      override that flavour (e.g. cu126) when PyTorch has no wheels for
#                       the base image's CUDA
# Everything is installed by scripts/install.sh (the one install path): runtime
# dependencies only (no dev extras, no Prometheus: deploy/ runs Prometheus' own image), not
# editable, into /opt/lumstream/venv, which is all the runtime stage copies. docs/deploy.md: the compose deployment, volumes, health, metrics.

ARG LUMSTREAM_GPU=0
ARG CUDA_VERSION=12.8.1

# --- the base: Python 3.11, on a plain (0) or a CUDA (1) image ------------------------
FROM python:3.11-slim-bookworm AS base-0

# The CUDA libraries themselves (cuBLAS, cuDNN, NCCL, ...) come with torch's CUDA wheels;
# the base image adds the CUDA runtime and the NVIDIA container settings.
FROM nvidia/cuda:${CUDA_VERSION}-base-ubuntu22.04 AS base-1
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

FROM base-${LUMSTREAM_GPU} AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 LANG=C.UTF-8

# --- build: install into /opt/lumstream/venv -------------------------------------------
FROM base AS build
ARG LUMSTREAM_GPU
# the nvidia/cuda images set CUDA_VERSION themselves (that value wins); install.sh derives
# the wheel flavour from it
ARG CUDA_VERSION
ARG LUMSTREAM_CUDA=
WORKDIR /src
COPY pyproject.toml README.md ./
COPY scripts/install.sh ./scripts/install.sh
COPY core ./core
COPY lumstream ./lumstream
COPY streams ./streams
COPY trainer ./trainer
COPY embeddings ./embeddings
COPY serving ./serving
COPY monitoring ./monitoring
RUN VENV=/opt/lumstream/venv PYTHON=python3.11 \
    LUMSTREAM_GPU=${LUMSTREAM_GPU} LUMSTREAM_CUDA=${LUMSTREAM_CUDA} \
    LUMSTREAM_TORCH_INDEX=pytorch LUMSTREAM_EXTRAS= LUMSTREAM_EDITABLE=0 LUMSTREAM_PROMETHEUS=0 \
    bash scripts/install.sh \
    && /opt/lumstream/venv/bin/lumstream --version

# --- runtime: the venv, a non-root user, the data volume, /metrics, a health check ------
FROM base AS runtime
# Inside a container /metrics must be reachable from outside it (Prometheus, the health
# check): all interfaces and a fixed port, where the default is loopback and a free port.
ENV PATH=/opt/lumstream/venv/bin:$PATH \
    LUMSTREAM_PATHS_DATA_DIR=/var/lib/lumstream \
    LUMSTREAM_METRICS_HOST=0.0.0.0 \
    LUMSTREAM_METRICS_PORT=9464
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/lumstream --create-home \
        --shell /usr/sbin/nologin lumstream
COPY --from=build /opt/lumstream/venv /opt/lumstream/venv
USER lumstream
WORKDIR /var/lib/lumstream
VOLUME /var/lib/lumstream
EXPOSE 9464
# Healthy while the process answers on its /metrics endpoint (every long-running command
# serves one). Commands that serve none (topics, config, ...) are short-lived; with
# metrics disabled (LUMSTREAM_METRICS_ENABLED=false) the check passes trivially.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; os.environ.get('LUMSTREAM_METRICS_ENABLED', 'true').strip().lower() in ('0', 'false', 'no', 'off') or u.urlopen('http://127.0.0.1:%s/metrics' % os.environ.get('LUMSTREAM_METRICS_PORT', '9464'), timeout=4).close()"]
ENTRYPOINT ["lumstream"]
CMD ["--help"]
