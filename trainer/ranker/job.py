"""One run of the ranker trainer, as ``lumstream train`` starts it.

:class:`RankerJob` owns everything between the parsed command line and the training loop:
the LUM vector reader, the engine and the checkpointer (at construction, on every rank,
so a refusal comes before any cluster is contacted), then in :meth:`RankerJob.run` the
source (a sample file, or ``kafka.topic_samples`` through a
:class:`~streams.kafka.consumer.PositionedConsumer` on rank 0), the announcement of every
published version on ``kafka.topic_model_updates``, and the run itself: live (resume from
the newest checkpoint, train until stopped or the source ends) or a replay (the samples of
an event-time range, read once, trained for a number of epochs, then checkpointed and
published).

Finding the cluster, signals, metrics endpoints and printing are the caller's.

Example:
    >>> plan = TrainPlan(checkpoints=ck, versions=vs, vector_store=vec)  # doctest: +SKIP
    >>> job = RankerJob(cfg.ranker, cfg.embeddings, cfg.kafka, plan, metrics)  # doctest: +SKIP
    >>> result = job.run(bootstrap, stop)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from embeddings.config import EmbeddingsConfig
from monitoring.config import DriftConfig
from monitoring.metrics import Metrics
from streams.config import KafkaConfig
from trainer.ranker.checkpoint import Checkpointer, announce, export_newest_version
from trainer.ranker.config import RankerConfig
from trainer.ranker.distributed import world
from trainer.ranker.engine import RankerEngine
from trainer.ranker.loop import LoopStats, StreamingTrainer
from trainer.ranker.multi_epoch import EpochResult
from trainer.ranker.source import SampleFileSource, SampleSource
from trainer.vectors.store import VectorReader

log = logging.getLogger(__name__)
EPOCH_MODES = ("sparse_reset", "naive")
_END = 2**63 - 1  # an open upper end of a time range (int64 max)

# Receives each (key, value) announcement of a published version.
Send = Callable[[bytes, bytes], None]


class TrainRefused(RuntimeError):
    """The job cannot start as planned; the message says why and what to do."""


@dataclass(frozen=True)
class Replay:
    """Train on a fixed range of samples instead of following the stream.

    Args:
        ts_range: event times ``[from, to)`` in ms; None leaves a side open.
        epochs: passes over the samples.
        mode: ``sparse_reset`` (tables back to θ_s^(0) before every epoch after the first)
            or ``naive`` (see :mod:`trainer.ranker.multi_epoch`).
        inherit: start from the newest checkpoint (its tables are θ_s^(0)); else fresh.
    """

    ts_range: tuple[int | None, int | None] = (None, None)
    epochs: int = 1
    mode: str = "sparse_reset"
    inherit: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs {self.epochs}: must be at least 1")
        if self.mode not in EPOCH_MODES:
            raise ValueError(f"epoch mode {self.mode!r}: expected one of {', '.join(EPOCH_MODES)}")
        lo, hi = self.ts_range
        if lo is not None and hi is not None and hi < lo:
            raise ValueError(f"time range [{lo}, {hi}): the end is before the start")

    @property
    def bounds(self) -> tuple[int, int]:
        """``ts_range`` with open sides made explicit."""
        lo, hi = self.ts_range
        return (0 if lo is None else lo, _END if hi is None else hi)


@dataclass(frozen=True)
class TrainPlan:
    """Where one run reads and writes, and what it does.

    Args:
        checkpoints / versions: the checkpoint and published-version directories.
        vector_store: the LUM vector store the backbone refresh writes.
        lum_dim / lum_capacity: the ranker's LUM input shape: the backbone's width and
            the vector layout's capacity (``backbone.dim``, ``refresh.condition_capacity``),
            known before the first vector is written.
        samples_file: read this sample file instead of Kafka.
        replay: a replay (None: live training).
        max_batches: live training stops after this many batches.
        threads: torch threads (0: torch's default).
    """

    checkpoints: Path
    versions: Path
    vector_store: Path
    lum_dim: int = 64
    lum_capacity: int = 32
    samples_file: Path | None = None
    replay: Replay | None = None
    max_batches: int | None = None
    threads: int = 0


@dataclass
class JobResult:
    """What a run did.

    Args:
        lead: this process is rank 0 (it read the source and published; its stats count).
        stats: the loop's statistics (a replay counts each sample of its range once).
        epochs: a replay's epochs; empty for live training, or a range without samples.
    """

    lead: bool
    stats: LoopStats
    epochs: list[EpochResult] = field(default_factory=list)


class RankerJob:
    """The trainer of ``lumstream train``, set up and ready to :meth:`run` (all ranks).

    Args:
        ranker / embeddings / kafka: their config sections.
        plan: what to do.
        metrics: where every component's metrics go.
        drift: drift monitoring of the progressive stream (None: the defaults).
        on_start: rank 0, live training, before the first batch: the samples already
            learned by the checkpoint it resumed from, or None when it starts fresh.
        on_publish: rank 0, after each ranker version is published (and announced).
    Raises:
        TrainRefused: LUM features on and a vector store whose layout was made for another
            width or capacity than the plan's.
        CheckpointError: (at :meth:`run`) a checkpoint that does not fit the model.
    """

    def __init__(
        self,
        ranker: RankerConfig,
        embeddings: EmbeddingsConfig,
        kafka: KafkaConfig,
        plan: TrainPlan,
        metrics: Metrics,
        *,
        drift: DriftConfig | None = None,
        on_start: Callable[[int | None], None] | None = None,
        on_publish: Callable[[Path], None] | None = None,
    ) -> None:
        self.cfg, self.kafka, self.plan, self.metrics = ranker, kafka, plan, metrics
        self.drift = drift
        self.on_start, self.on_publish = on_start, on_publish
        if plan.threads:
            torch.set_num_threads(plan.threads)
        self.rank, _ = world()
        self.vectors: VectorReader | None = None
        self._scratch: tempfile.TemporaryDirectory[str] | None = None
        lum_dim, lum_n = 1, 1
        if ranker.lum_features != "off":
            lum_dim, lum_n = plan.lum_dim, plan.lum_capacity
            self._scratch = tempfile.TemporaryDirectory(prefix="lumstream-vectors-")
            self.vectors = VectorReader(
                plan.vector_store, Path(self._scratch.name), metrics=metrics, consumer="ranker"
            )
            layout = self.vectors.layout
            if layout is None:
                log.info(
                    "no vector store at %s yet: LUM inputs are missing (learned defaults) "
                    "until the backbone refresh writes it",
                    plan.vector_store,
                )
            elif (layout.capacity, layout.dim) != (lum_n, lum_dim):
                self.close()
                raise TrainRefused(
                    f"the vector store {plan.vector_store} holds {layout.capacity} conditions "
                    f"x {layout.dim}, this ranker is built for {lum_n} x {lum_dim} "
                    "(refresh.condition_capacity, backbone.dim): use the settings the store "
                    "was made with, or another store"
                )
        self.engine = RankerEngine(ranker, embeddings, lum_dim, lum_n, metrics=metrics)
        self.checkpointer = Checkpointer(plan.checkpoints, ranker.keep_checkpoints, metrics)
        if self.rank == 0:
            export_newest_version(plan.versions, metrics)

    @property
    def reads_kafka(self) -> bool:
        """This process reads ``kafka.topic_samples`` (rank 0 without a sample file): it
        needs the bootstrap servers in :meth:`run`."""
        return self.rank == 0 and self.plan.samples_file is None

    def run(self, bootstrap: str | None = None, stop: threading.Event | None = None) -> JobResult:
        """Train as planned (collective: every rank calls it).

        Args:
            bootstrap: the Kafka cluster, when :attr:`reads_kafka`.
            stop: live training stops after the batch in progress once it is set (rank 0
                decides for all); a replay runs to its end.
        """
        with self._source(bootstrap) as (source, send):
            loop = StreamingTrainer(
                self.cfg,
                self.engine,
                source,
                vectors=self.vectors,
                checkpointer=self.checkpointer,
                versions_dir=self.plan.versions if self.cfg.publish else None,
                announce=self._announcer(send),
                metrics=self.metrics,
                ts_range=self.plan.replay.bounds if self.plan.replay else None,
                drift=self.drift,
            )
            replay = self.plan.replay
            if replay is not None:
                epochs = loop.replay(epochs=replay.epochs, mode=replay.mode, inherit=replay.inherit)
                return JobResult(self.rank == 0, loop.stats, epochs)
            resumed = loop.resume()
            if self.rank == 0 and self.on_start is not None:
                self.on_start(self.engine.samples_learned if resumed else None)
            stats = loop.run(stop, max_batches=self.plan.max_batches)
            return JobResult(self.rank == 0, stats)

    def close(self) -> None:
        """Release the vector reader (its secondary instance and scratch directory)."""
        if self.vectors is not None:
            self.vectors.close()
            self.vectors = None
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None

    def _announcer(self, send: Send | None) -> Callable[[Path, dict[str, Any]], None]:
        def announcer(path: Path, extra: dict[str, Any]) -> None:
            if send is not None:
                announce(send, path, extra)
            if self.on_publish is not None:
                self.on_publish(path)

        return announcer

    @contextlib.contextmanager
    def _source(self, bootstrap: str | None) -> Iterator[tuple[SampleSource | None, Send | None]]:
        """(the samples, where announcements go): None and None on ranks other than 0."""
        if self.rank != 0:
            yield None, None
            return
        if self.plan.samples_file is not None:
            source = SampleFileSource(self.plan.samples_file)
            try:
                yield source, None
            finally:
                source.close()
            return
        if not bootstrap:
            raise ValueError("RankerJob.run: reading Kafka needs the bootstrap servers")
        from streams.kafka.consumer import PositionedConsumer, end_offsets
        from streams.kafka.producer import make_producer
        from streams.kafka.topics import ensure_topics

        k = self.kafka
        ensure_topics(k, bootstrap)
        # a replay reads what the topic holds now, then ends
        ends = end_offsets(k, bootstrap, k.topic_samples) if self.plan.replay else None
        consumer = PositionedConsumer(
            k, bootstrap, k.topic_samples, start=self.cfg.start, stop_at=ends
        )
        with contextlib.ExitStack() as stack:
            stack.callback(consumer.close)
            producer = make_producer(k, bootstrap, metrics=self.metrics)
            stack.callback(producer.close)

            def send(key: bytes, value: bytes) -> None:
                producer.send(k.topic_model_updates, key, value)
                producer.flush()

            yield consumer, send
