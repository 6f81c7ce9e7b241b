"""Every Prometheus metric of lumstream, defined in one place.

Components receive a :class:`Metrics` (default: the process-wide one on the global
registry); tests build their own on a fresh ``CollectorRegistry``.

No metric has a per-user or per-item label: a process exports a bounded number of series
(docs/monitoring.md counts them). Label-less histograms are :class:`Lazy`: registered at
their first use, so a process does not export the empty buckets of other components'
histograms (they were two thirds of every process's series). Latency histograms have
buckets around their goal (:data:`SERVING_LATENCY_BUCKETS` has an edge at the 10 ms
objective, so the SLO's "good" requests are one bucket, not an interpolation). The
``_timestamp_seconds`` gauges are unix times, so ``time() - x`` is an age that grows between
updates (a staleness alert needs nothing to keep updating it). The ``serving_*`` metrics
are the ranking service's (serving/).

Example:
    >>> from prometheus_client import CollectorRegistry
    >>> m = Metrics(CollectorRegistry())
    >>> m.events_produced.labels(topic="lum.events", source="generator").inc()
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar

import numpy as np
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

# No ``*_created`` series (a counter's or histogram's creation time): they were over a
# quarter of what a process exported, and no rule or panel reads them.
disable_created_metrics()

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
# around the ranking service's p99 <= 10 ms objective (an edge at exactly 0.01)
SERVING_LATENCY_BUCKETS = (
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.0125,
    0.015,
    0.02,
    0.03,
    0.05,
    0.1,
    0.25,
    1.0,
)
# around the worker's event-to-store p99 <= 2 s objective (batches wait <= 200 ms to fill)
EVENT_TO_STORE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)
# around the click-to-served-history p99 <= 5 s objective (store readers refresh every 1 s)
HISTORY_FRESHNESS_BUCKETS = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 300.0)
# around the sample-to-published-version p99 <= 5 min objective (checkpoints every 60 s)
VERSION_FRESHNESS_BUCKETS = (
    5.0,
    15.0,
    30.0,
    60.0,
    90.0,
    120.0,
    180.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)
# around the backbone refresh cadence (600 s by default): a refresh must end before the next
REFRESH_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 450, 600, 900, 1800, 3600, 7200)
# click probabilities: fine where CTRs live (a few percent), coarse above
SCORE_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.7,
    0.9,
)


M = TypeVar("M")


class Lazy(Generic[M]):
    """A metric created and registered at its first use (any attribute access): until then
    the process exports none of its series.

    Example:
        >>> reg = CollectorRegistry()
        >>> h = Lazy(lambda: Histogram("demo_seconds", "demo", registry=reg))
        >>> reg.get_sample_value("demo_seconds_count") is None
        True
        >>> h.observe(0.5)
        >>> reg.get_sample_value("demo_seconds_count")
        1.0
    """

    def __init__(self, make: Callable[[], M]) -> None:
        self._make: Callable[[], M] | None = make
        self._metric: M | None = None
        self._lock = threading.Lock()

    @property
    def metric(self) -> M:
        """The metric (created and registered now if it was not yet)."""
        if self._metric is None:
            with self._lock:
                if self._metric is None:
                    assert self._make is not None
                    self._metric = self._make()
                    self._make = None
        return self._metric

    def __getattr__(self, name: str) -> Any:
        return getattr(self.metric, name)


class BulkHistogram:
    """A label-less histogram observed one numpy array at a time (the ranker's scores, a
    few thousand per batch): one ``searchsorted`` instead of a Python call per value.

    Registered on ``registry`` as a collector; exposes ``<name>_bucket``, ``_count`` and
    ``_sum`` like :class:`prometheus_client.Histogram`.

    Example:
        >>> h = BulkHistogram("demo_scores", "scores", (0.1, 0.5), CollectorRegistry())
        >>> h.observe_many(np.array([0.05, 0.2, 0.7, float("nan")]))
        >>> h.registry.get_sample_value("demo_scores_bucket", {"le": "0.5"})
        2.0
    """

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        self.name, self.documentation, self.registry = name, documentation, registry
        self.upper = np.array([*sorted(buckets), math.inf], np.float64)
        self._counts = np.zeros(len(self.upper), np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: np.ndarray) -> None:
        """Observe every finite value of ``values``."""
        v = np.asarray(values, np.float64).ravel()
        v = v[np.isfinite(v)]
        if not len(v):
            return
        counts = np.bincount(np.searchsorted(self.upper, v, side="left"), minlength=len(self.upper))
        with self._lock:
            self._counts += counts
            self._sum += float(v.sum())

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            cumulative = np.cumsum(self._counts).tolist()
            total = self._sum
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric(
            [],
            buckets=[
                (floatToGoString(u), float(c))
                for u, c in zip(self.upper.tolist(), cumulative, strict=True)
            ],
            sum_value=total,
        )
        yield family


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
        self.produce_latency = Lazy(
            lambda: Histogram(
                "lumstream_produce_flush_seconds",
                "Time to flush a produced batch",
                buckets=LATENCY_BUCKETS,
                registry=registry,
            )
        )
        # -- closing the loop: served lists logged, live events over HTTP (issue 14) -----
        self.served_lists = Counter(
            "lumstream_served_log_lists",
            "Served lists handed to the served-impressions log, by outcome (spooled, "
            "dropped_spool_full, dropped_write_error)",
            ["outcome"],
            registry=registry,
        )
        self.served_events_shipped = Counter(
            "lumstream_served_log_events_shipped",
            "Served impressions acknowledged by Kafka (re-sends after a restart included)",
            registry=registry,
        )
        self.served_events_invalid = Counter(
            "lumstream_served_log_events_invalid",
            "Served impressions dropped because they break the event contract",
            registry=registry,
        )
        self.served_ship_failures = Counter(
            "lumstream_served_log_ship_failures",
            "Shipping rounds that failed (Kafka unreachable or no acknowledgement in time)",
            registry=registry,
        )
        self.served_backlog_bytes = Gauge(
            "lumstream_served_log_backlog_bytes",
            "Spooled served lists not yet acknowledged by Kafka (bytes)",
            registry=registry,
        )
        self.served_backlog_lists = Gauge(
            "lumstream_served_log_backlog_lists",
            "Spooled served lists not yet acknowledged by Kafka",
            registry=registry,
        )
        # Lazy: only a process with a served log exports it (a 0 elsewhere would alert)
        self.served_kafka_up = Lazy(
            lambda: Gauge(
                "lumstream_served_log_kafka_up",
                "1 when the served log's last shipping round was acknowledged, 0 when it failed",
                registry=registry,
            )
        )
        self.events_api_requests = Counter(
            "lumstream_events_api_requests",
            "POST /v1/events requests by status code",
            ["status"],
            registry=registry,
        )
        self.events_api_events = Counter(
            "lumstream_events_api_events",
            "Events posted to /v1/events by outcome (accepted, rejected, unavailable)",
            ["outcome"],
            registry=registry,
        )
        self.events_api_ack_seconds = Lazy(
            lambda: Histogram(
                "lumstream_events_api_ack_seconds",
                "From a /v1/events request's arrival to Kafka's acknowledgement of its events",
                buckets=LATENCY_BUCKETS,
                registry=registry,
            )
        )
        self.explored_requests = Counter(
            "lumstream_serving_explored_requests",
            "Ranked lists served in a randomised order (exploration)",
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
        self.batch_apply_seconds = Lazy(
            lambda: Histogram(
                "lumstream_worker_batch_apply_seconds",
                "Validate + apply + commit time of a batch",
                buckets=LATENCY_BUCKETS,
                registry=registry,
            )
        )
        self.event_to_store_seconds = Lazy(
            lambda: Histogram(
                "lumstream_worker_event_to_store_seconds",
                "Kafka record timestamp to durable store commit (up to 256 sampled per batch)",
                buckets=EVENT_TO_STORE_BUCKETS,
                registry=registry,
            )
        )
        self.consumer_lag = Gauge(
            "lumstream_worker_consumer_lag",
            "Records behind the partition's high watermark",
            ["topic", "partition"],
            registry=registry,
        )
        self.consumer_lag_seconds = Gauge(
            "lumstream_worker_consumer_lag_seconds",
            "How far behind the partition the worker is in time: 0 when caught up, else now "
            "minus the Kafka timestamp of the last record applied",
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
        self.sequence_length = Lazy(
            lambda: Histogram(
                "lumstream_store_sequence_length",
                "Sequence length of users touched by a batch",
                buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
                registry=registry,
            )
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
        self.backbone_refresh_duration = Lazy(
            lambda: Histogram(
                "lumstream_backbone_refresh_duration_seconds",
                "Duration of one backbone refresh (train, publish, vectors)",
                buckets=REFRESH_BUCKETS,
                registry=registry,
            )
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
        self.backbone_version_time = Gauge(
            "lumstream_backbone_version_timestamp_seconds",
            "When the newest backbone version vN was published (unix time; time() - this is "
            "its age)",
            registry=registry,
        )
        self.backbone_eval = Gauge(
            "lumstream_backbone_eval",
            "Retrieval metrics of the newest backbone version (hr@10, ndcg@10, mrr); the "
            "series of older versions are removed",
            ["version", "metric"],
            registry=registry,
        )
        self.backbone_vector_shift = Gauge(
            "lumstream_backbone_vector_shift",
            "How far users' condition-query vectors moved from the previous version to the "
            "newest: mean and 90th percentile over users of the cosine distance between a "
            "user's full-pass record and their newest record of an older version",
            ["stat"],
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
        self.vector_computed_time = Gauge(
            "lumstream_vectors_computed_timestamp_seconds",
            "When the newest vectors a consumer used last were computed (unix time; time() - "
            "this is how stale the refresh behind them is)",
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
        self.ranker_consumer_lag_seconds = Gauge(
            "lumstream_ranker_consumer_lag_seconds",
            "How far behind lum.samples the trainer is in time: 0 when caught up, else now "
            "minus the Kafka timestamp of the last record read",
            ["partition"],
            registry=registry,
        )
        self.ranker_version_time = Gauge(
            "lumstream_ranker_version_timestamp_seconds",
            "When the newest ranker version rN was published (unix time)",
            registry=registry,
        )
        self.ranker_sample_to_version = Lazy(
            lambda: Histogram(
                "lumstream_ranker_sample_to_version_seconds",
                "From a sample's arrival on lum.samples (its Kafka timestamp) to the publication "
                "of the first ranker version that learned it (up to 256 sampled per batch)",
                buckets=VERSION_FRESHNESS_BUCKETS,
                registry=registry,
            )
        )
        # -- drift of the ranker's progressive stream (trainer/ranker/drift.py) --------------
        self.ranker_scores = Lazy(
            lambda: BulkHistogram(
                "lumstream_ranker_scores",
                "Progressive scores (click probabilities predicted before learning); _sum over "
                "_count is the mean prediction",
                SCORE_BUCKETS,
                registry,
            )
        )
        self.ranker_clicks = Counter(
            "lumstream_ranker_clicks",
            "Positive labels among the scored samples (with lumstream_ranker_scores_sum: "
            "calibration; with _count: the observed click rate)",
            registry=registry,
        )
        self.ranker_score_psi = Gauge(
            "lumstream_ranker_score_psi",
            "PSI of the recent progressive scores against the deciles of the reference saved "
            "with the newest ranker version",
            registry=registry,
        )
        self.ranker_feature_psi = Gauge(
            "lumstream_ranker_feature_psi",
            "PSI of a feature of the recent samples against the newest version's reference "
            "(condition, history_length, unknown_user, unknown_item, lum_user_missing, "
            "lum_item_missing)",
            ["feature"],
            registry=registry,
        )
        self.ranker_feature_share = Gauge(
            "lumstream_ranker_feature_share",
            "Share of the recent samples with a flag set (unknown_user, unknown_item: the id "
            "has no row of its own; lum_user_missing, lum_item_missing: no LUM vector)",
            ["feature"],
            registry=registry,
        )
        self.ranker_reference_ctr = Gauge(
            "lumstream_ranker_reference_ctr",
            "Click rate of the samples of the newest version's drift reference",
            registry=registry,
        )
        self.ranker_reference_time = Gauge(
            "lumstream_ranker_reference_timestamp_seconds",
            "When the drift reference in use was captured (unix time)",
            registry=registry,
        )
        # -- ranking service (serving/) ---------------------------------------------------
        self.serving_request_seconds = Histogram(
            "lumstream_serving_request_seconds",
            "Ranking requests by endpoint and status (ok, bad_request, overloaded, error); "
            "_count is the request counter",
            ["endpoint", "status"],
            buckets=SERVING_LATENCY_BUCKETS,
            registry=registry,
        )
        self.serving_candidates = Lazy(
            lambda: Histogram(
                "lumstream_serving_candidates",
                "Candidates per ranking request",
                buckets=(1, 10, 25, 50, 100, 200, 300, 500, 1000),
                registry=registry,
            )
        )
        self.serving_inflight = Gauge(
            "lumstream_serving_inflight_requests",
            "Requests being handled now",
            registry=registry,
        )
        self.serving_rejected = Counter(
            "lumstream_serving_rejected",
            "Requests refused before scoring, by reason (overload, invalid, no_model, deadline)",
            ["reason"],
            registry=registry,
        )
        self.serving_scores = Lazy(
            lambda: BulkHistogram(
                "lumstream_serving_scores",
                "Scores the service returned",
                SCORE_BUCKETS,
                registry,
            )
        )
        self.serving_score_psi = Gauge(
            "lumstream_serving_score_psi",
            "PSI of the recent served scores against the reference of the version served",
            registry=registry,
        )
        self.serving_model_version = Gauge(
            "lumstream_serving_model_version",
            "Number N of the ranker version rN being served",
            registry=registry,
        )
        self.serving_model_time = Gauge(
            "lumstream_serving_model_version_timestamp_seconds",
            "When the ranker version being served was published (unix time)",
            registry=registry,
        )
        self.serving_cold_start = Counter(
            "lumstream_serving_cold_start",
            "Scored users or candidates without history or LUM vector (kind: user, item)",
            ["kind"],
            registry=registry,
        )
        self.serving_history_freshness = Lazy(
            lambda: Histogram(
                "lumstream_serving_history_freshness_seconds",
                "From a click's Kafka timestamp to the first request that saw it in the user's "
                "history",
                buckets=HISTORY_FRESHNESS_BUCKETS,
                registry=registry,
            )
        )


@functools.cache
def default_metrics() -> Metrics:
    """The process-wide metrics on the global registry (created once)."""
    return Metrics(REGISTRY)
