"""Every Prometheus metric of lumstream, defined in one place.

Components receive a :class:`Metrics` (default: the process-wide one on the global
registry); tests build their own on a fresh ``CollectorRegistry``.

Example:
    >>> from prometheus_client import CollectorRegistry
    >>> m = Metrics(CollectorRegistry())
    >>> m.events_produced.labels(topic="lum.events", source="generator").inc()
"""

from __future__ import annotations

import functools

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class Metrics:
    """The metric objects, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        # -- events in (generator, importers, replay producers) ---------------------------
        self.events_produced = Counter(
            "lumstream_events_produced",
            "Events produced to Kafka or written to a log",
            ["topic", "source"],
            registry=registry,
        )
        self.events_rejected = Counter(
            "lumstream_events_rejected",
            "Events rejected by validation, by stage and reason",
            ["stage", "reason"],
            registry=registry,
        )
        self.produce_errors = Counter(
            "lumstream_produce_errors", "Kafka produce failures", ["topic"], registry=registry
        )
        self.import_rows = Counter(
            "lumstream_import_rows",
            "Rows read by importers, by outcome (ok, bad, dropped)",
            ["importer", "outcome"],
            registry=registry,
        )
        self.replay_records = Counter(
            "lumstream_replay_records",
            "Records handled by `lumstream replay`, by mode (produce, backfill) and outcome "
            "(produced, applied, rejected, skipped)",
            ["mode", "outcome"],
            registry=registry,
        )
        self.produce_latency = Histogram(
            "lumstream_produce_flush_seconds",
            "Time to flush a produced batch",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        # -- stream worker ---------------------------------------------------------------
        self.events_applied = Counter(
            "lumstream_worker_events_applied",
            "Events applied to the sequence store",
            ["partition"],
            registry=registry,
        )
        self.batches_applied = Counter(
            "lumstream_worker_batches",
            "Batches committed (one RocksDB write batch each)",
            registry=registry,
        )
        self.batch_apply_seconds = Histogram(
            "lumstream_worker_batch_apply_seconds",
            "Validate + apply + commit time of a batch",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.event_to_store_seconds = Histogram(
            "lumstream_worker_event_to_store_seconds",
            "Kafka record timestamp to durable store commit (up to 256 sampled per batch)",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "lumstream_worker_consumer_lag",
            "Records behind the partition's high watermark",
            ["topic", "partition"],
            registry=registry,
        )
        self.duplicates_dropped = Counter(
            "lumstream_worker_duplicates_dropped",
            "Events dropped as duplicate event ids",
            registry=registry,
        )
        self.redelivered_skipped = Counter(
            "lumstream_worker_redelivered_skipped",
            "Records skipped because their offset was already applied",
            registry=registry,
        )
        self.unmatched_positives = Counter(
            "lumstream_worker_unmatched_positives",
            "Clicks/purchases that labelled no open impression",
            ["reason"],
            registry=registry,
        )
        self.samples_emitted = Counter(
            "lumstream_worker_samples_emitted",
            "Labelled samples emitted to lum.samples",
            ["label"],
            registry=registry,
        )
        self.open_impressions = Gauge(
            "lumstream_worker_open_impressions",
            "Impressions waiting for their label window",
            ["partition"],
            registry=registry,
        )
        self.store_users = Gauge(
            "lumstream_store_users",
            "Users with a record in the partition store",
            ["partition"],
            registry=registry,
        )
        self.store_bytes = Gauge(
            "lumstream_store_live_bytes",
            "RocksDB estimated live data size",
            ["partition"],
            registry=registry,
        )
        self.store_snapshots = Counter(
            "lumstream_store_snapshots_total",
            "Partition-store snapshots: published, failed, invalid (skipped), restored",
            ["outcome"],
            registry=registry,
        )
        self.store_snapshot_time = Gauge(
            "lumstream_store_snapshot_timestamp_seconds",
            "When the newest published snapshot of a partition store was taken (unix time)",
            ["partition"],
            registry=registry,
        )
        self.sequence_length = Histogram(
            "lumstream_store_sequence_length",
            "Sequence length of users touched by a batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
            registry=registry,
        )
        self.worker_batch_failures = Counter(
            "lumstream_worker_batch_failures",
            "Batches whose samples/dead letters could not be delivered (re-processed)",
            registry=registry,
        )
        self.partitions_owned = Gauge(
            "lumstream_worker_partitions_owned", "Partitions this worker holds", registry=registry
        )
        # -- embedded broker -------------------------------------------------------------
        self.broker_up = Gauge(
            "lumstream_embedded_broker_up", "1 while the embedded broker runs", registry=registry
        )
        # -- LUM backbone (trainer/backbone) -------------------------------------------------
        self.backbone_train_loss = Gauge(
            "lumstream_backbone_train_loss",
            "InfoNCE loss of the last backbone training step",
            registry=registry,
        )
        self.backbone_train_tokens = Counter(
            "lumstream_backbone_train_tokens",
            "Real (non-padding) tokens trained on",
            registry=registry,
        )
        self.backbone_tokens_per_second = Gauge(
            "lumstream_backbone_tokens_per_second",
            "Backbone training throughput (real tokens per second, global batch) of the last run",
            registry=registry,
        )
        self.backbone_refresh_duration = Histogram(
            "lumstream_backbone_refresh_duration_seconds",
            "Duration of one backbone refresh (train, publish, vectors)",
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200),
            registry=registry,
        )
        self.backbone_version = Gauge(
            "lumstream_backbone_version",
            "Number N of the newest published backbone version vN",
            registry=registry,
        )
        self.backbone_vectors_written = Counter(
            "lumstream_backbone_vectors_written",
            "Users whose condition-query vectors were computed and written, by pass "
            "(full: a new version; incremental: changed users, frozen version)",
            ["mode"],
            registry=registry,
        )
        self.backbone_vectors_time = Gauge(
            "lumstream_backbone_vectors_timestamp_seconds",
            "When the last pass of each mode finished writing vectors (unix time)",
            ["mode"],
            registry=registry,
        )
        self.backbone_vector_shift = Gauge(
            "lumstream_backbone_vector_shift",
            "Mean cosine distance of users' vectors from their previous version's (the "
            "newest full pass)",
            registry=registry,
        )
        self.backbone_layout_conditions = Gauge(
            "lumstream_backbone_layout_conditions",
            "Query conditions in the vector store's layout (append-only)",
            registry=registry,
        )
        self.backbone_layout_events = Counter(
            "lumstream_backbone_layout_events",
            "Layout events: appended (conditions added), left_out (no capacity), "
            "refused (a refresh that could not keep the layout's contract)",
            ["event"],
            registry=registry,
        )
        self.backbone_refresh_failures = Counter(
            "lumstream_backbone_refresh_failures",
            "Refreshes that failed (the last good version stays published)",
            registry=registry,
        )
        self.backbone_eval = Gauge(
            "lumstream_backbone_eval",
            "Retrieval metrics of a backbone version (hr@10, ndcg@10, mrr)",
            ["version", "metric"],
            registry=registry,
        )
        self.backbone_sequences_skipped = Counter(
            "lumstream_backbone_sequences_skipped",
            "User sequences the backbone skipped, by reason (empty, too_short)",
            ["reason"],
            registry=registry,
        )
        self.backbone_unknown_conditions = Counter(
            "lumstream_backbone_unknown_conditions",
            "Query conditions not in the version's vocabulary (mapped to the OOV condition)",
            registry=registry,
        )
        # -- ranker (trainer/ranker, embeddings) ------------------------------------------
        self.ranker_samples = Counter(
            "lumstream_ranker_samples",
            "Samples scored before learning (scored) and learned from (learned)",
            ["outcome"],
            registry=registry,
        )
        self.ranker_samples_per_second = Gauge(
            "lumstream_ranker_samples_per_second",
            "Ranker training throughput over the last log interval",
            registry=registry,
        )
        self.ranker_loss = Gauge(
            "lumstream_ranker_loss", "Log-loss of the last training step", registry=registry
        )
        self.ranker_progressive = Gauge(
            "lumstream_ranker_progressive",
            "Progressive validation over the window (auc, gauc, logloss, calibration, ctr)",
            ["metric"],
            registry=registry,
        )
        self.ranker_samples_skipped = Counter(
            "lumstream_ranker_samples_skipped",
            "Samples or history events not learned from, by reason",
            ["reason"],
            registry=registry,
        )
        self.ranker_sample_gap = Gauge(
            "lumstream_ranker_sample_gap",
            "Samples of a source partition not yet seen although later ones were (a re-send "
            "after a delivery timeout fills the gap; one that stays means lost samples)",
            ["partition"],
            registry=registry,
        )
        self.ranker_ids = Counter(
            "lumstream_ranker_ids",
            "Id lookups by table and outcome (hit, new, admitted, collision, evicted)",
            ["table", "outcome"],
            registry=registry,
        )
        self.ranker_ids_used = Gauge(
            "lumstream_ranker_ids_used",
            "Table rows owned by an admitted id",
            ["table"],
            registry=registry,
        )
        self.vector_lookups = Counter(
            "lumstream_vectors_lookups",
            "LUM vector lookups of a consumer by part (user, item, condition) and outcome "
            "(found, missing, none_before: only records newer than the event, non_finite)",
            ["consumer", "part", "outcome"],
            registry=registry,
        )
        self.vector_age = Histogram(
            "lumstream_vectors_age_seconds",
            "Event time of a sample or request minus the newest event its vectors cover",
            ["consumer"],
            buckets=(1, 5, 15, 30, 60, 300, 900, 3600, 4 * 3600, 86_400, 7 * 86_400),
            registry=registry,
        )
        self.vector_covered_time = Gauge(
            "lumstream_vectors_covered_timestamp_seconds",
            "Median event time up to which the vectors a consumer used last cover (unix time)",
            ["consumer"],
            registry=registry,
        )
        self.vector_version_used = Gauge(
            "lumstream_vectors_version",
            "Newest backbone version whose vectors a consumer used last",
            ["consumer"],
            registry=registry,
        )
        self.vector_layout_refused = Counter(
            "lumstream_vectors_layout_refused",
            "Vector store layouts a consumer refused (width or capacity it was not built for)",
            ["consumer"],
            registry=registry,
        )
        self.ranker_checkpoints = Counter(
            "lumstream_ranker_checkpoints",
            "Checkpoints by outcome (saved, load_failed, restored)",
            ["outcome"],
            registry=registry,
        )
        self.ranker_checkpoint_time = Gauge(
            "lumstream_ranker_checkpoint_timestamp_seconds",
            "When the ranker last saved a checkpoint (unix time; time() - this is its age)",
            registry=registry,
        )
        self.ranker_version = Gauge(
            "lumstream_ranker_version",
            "Number N of the newest published ranker version rN",
            registry=registry,
        )
        self.ranker_consumer_lag = Gauge(
            "lumstream_ranker_consumer_lag",
            "lum.samples records behind the partition end",
            ["partition"],
            registry=registry,
        )


@functools.cache
def default_metrics() -> Metrics:
    """The process-wide metrics on the global registry (created once)."""
    return Metrics(REGISTRY)
