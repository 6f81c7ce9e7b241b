# lumstream: one image for every command (worker, broker, demo, trainers).
#   docker build -t lumstream .
#   docker run --rm lumstream demo
#   docker run --rm -e LUMSTREAM_KAFKA_BOOTSTRAP_SERVERS=kafka:9092 lumstream worker
# GPU: build with --build-arg LUMSTREAM_GPU=1 on a CUDA base image with torch 2.13.0.
FROM python:3.11-slim-bookworm

ARG LUMSTREAM_GPU=0
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    VENV=/opt/lumstream/.venv PATH=/opt/lumstream/.venv/bin:$PATH \
    LUMSTREAM_PATHS_DATA_DIR=/var/lib/lumstream \
    LUMSTREAM_METRICS_HOST=0.0.0.0

RUN apt-get update && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/lumstream --create-home lumstream

WORKDIR /opt/lumstream
COPY pyproject.toml README.md Makefile ./
COPY scripts ./scripts
COPY lumstream ./lumstream
COPY streams ./streams
COPY trainer ./trainer
COPY embeddings ./embeddings
COPY serving ./serving
COPY monitoring ./monitoring
RUN LUMSTREAM_GPU=$LUMSTREAM_GPU PYTHON=python3.11 bash scripts/install.sh

USER lumstream
VOLUME /var/lib/lumstream
# /metrics inside the container must be reachable from outside it; services still bind
# loopback unless configured (LUMSTREAM_METRICS_HOST above is the one exception).
EXPOSE 9464
ENTRYPOINT ["lumstream"]
CMD ["--help"]
