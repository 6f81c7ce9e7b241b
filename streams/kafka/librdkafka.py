"""librdkafka (confluent-kafka) settings: the one place they live, producer and consumer.

lumstream's hot paths use confluent-kafka: the producer (:mod:`streams.kafka.producer`),
the stream worker's consumer and the ranker's sample source. Every non-default value
below says why it is set; docs/broker.md has the measurements behind them.

Example:
    >>> conf = librdkafka_producer_config(KafkaConfig(), "127.0.0.1:9092")
    >>> conf["partitioner"]
    'murmur2_random'
"""

from __future__ import annotations

from typing import Any

from streams.config import KafkaConfig

# a request may hold one record of ``max_message_bytes`` plus batch and request framing
_FRAMING_BYTES = 65_536


def librdkafka_producer_config(kafka: KafkaConfig, bootstrap: str) -> dict[str, Any]:
    """confluent-kafka producer settings for :class:`streams.kafka.producer.Producer`.

    Per-key order under retries comes from ``max.in.flight.requests.per.connection=1``
    rather than the idempotent producer: tansu 0.6.0 grants librdkafka a producer id and
    drops re-sent batches, but after a message timeout librdkafka bumps the epoch locally
    and tansu then answers PRODUCER_FENCED to every later record (the producer is wedged).
    One request in flight costs little on the embedded broker (librdkafka's idempotent
    producer also kept only one request in flight per partition there); a retried request
    may leave a duplicate, which every lumstream consumer already drops (the worker's
    event-id window, the trainer's sample sequence numbers). On a real Kafka cluster
    ``make_producer(..., enable_idempotence=True)`` turns it on.

    Args:
        kafka: client id, largest record and request timeout.
        bootstrap: ``host:port[,host:port]``.
    """
    return {
        "bootstrap.servers": bootstrap,
        "client.id": f"{kafka.client_id}-producer",
        # a record is delivered once every in-sync replica has it (not idempotent: above)
        "acks": "all",
        "enable.idempotence": False,
        # a failed request is retried before anything after it is sent: per-key order
        "max.in.flight.requests.per.connection": 1,
        # the Java client's partitioner (murmur2 of the key, positive, modulo partitions),
        # so every client agrees on a user's partition; keyless records spread at random
        "partitioner": "murmur2_random",
        # the largest record lumstream accepts fits in a request with its framing
        "message.max.bytes": kafka.max_message_bytes + _FRAMING_BYTES,
        "batch.size": min(1_000_000, kafka.max_message_bytes + _FRAMING_BYTES),
        "request.timeout.ms": kafka.request_timeout_ms,
        # a request without an answer is retried after this (default: the whole message
        # timeout, so a lost request failed its records instead of retrying them)
        "socket.timeout.ms": kafka.request_timeout_ms,
        # give up on a record after two request timeouts (default 300 s): the caller's
        # flush() raises ProduceError and the worker re-processes the batch
        "message.timeout.ms": 2 * kafka.request_timeout_ms,
        # bounded memory: produce blocks (back-pressure) past 64 MiB queued (default 1 GiB)
        "queue.buffering.max.kbytes": 64 * 1024,
        # no delivery report per record: a Python callback each cost ~0.75 µs of CPU
        # (+25 %); deliveries are counted as sent - failed when the queue has drained
        "delivery.report.only.error": True,
    }


def librdkafka_consumer_config(
    kafka: KafkaConfig, bootstrap: str, group_id: str, role: str
) -> dict[str, Any]:
    """confluent-kafka (librdkafka) consumer settings: manual commits, fast group joins on
    tansu (as :func:`streams.kafka.consumer.consumer_options`), fetches large enough for
    the biggest message.

    Args:
        kafka: client settings.
        bootstrap: the cluster.
        group_id: the consumer group (librdkafka wants one even when partitions are
            assigned explicitly and nothing is committed).
        role: ``client.id`` suffix (``worker``, ``ranker``), so brokers can tell them apart.
    """
    return {
        "bootstrap.servers": bootstrap,
        "client.id": f"{kafka.client_id}-{role}",
        "group.id": group_id,
        # offsets are committed after the work is stored (the store holds the truth)
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        # tansu holds a group join for about half the session timeout: ~3 s, not ~20 s
        "session.timeout.ms": 6_000,
        "heartbeat.interval.ms": 500,
        # whole sample blocks (~150 kB) per fetch, and the largest record lumstream accepts
        "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 16 * 1024 * 1024,
        # librdkafka stops fetching a partition while its local queue holds
        # queued.min.messages records (or queued.max.messages.kbytes in all) and then waits
        # fetch.queue.backoff.ms (default 1000 ms) before it looks again, however soon the
        # application drains the queue: a worker taking 20,000-record polls emptied it and
        # then waited on empty 200 ms polls, capping raw consumption near 200k records/s.
        # 10 ms looks again almost at once (docs/ingest.md "Consumer settings")
        "fetch.queue.backoff.ms": 10,
        # how long the broker may hold a fetch that has too little data (default 500 ms):
        # tansu held the worker's fetches that long with records waiting, so at a steady
        # 20k events/s a poll got its records up to half a second late (bench/ingest.py
        # --open-loop-rate: event-to-store p50 540 -> 339 ms); an idle partition costs
        # one empty fetch per 20 ms
        "fetch.wait.max.ms": 20,
        # per partition, several of the worker's polls (worker.batch_max = 20,000) queued
        # ahead, so one fetch response refills it before the next poll empties it
        "queued.min.messages": 200_000,
        # the bound on memory for all queued records of the consumer (the default, 64 MiB,
        # stated: it must hold at least one max.partition.fetch.bytes)
        "queued.max.messages.kbytes": 64 * 1024,
        "message.max.bytes": kafka.max_message_bytes + _FRAMING_BYTES,
        "socket.timeout.ms": kafka.request_timeout_ms,
    }
