"""The demo's live rankers: the streaming trainer of ``lumstream train``, twice, on
lum.samples while the stream runs: once without LUM features, once with them.

Both start with the stream and learn every sample progressively (scored, then learned).
The LUM one reads the vector store the backbone refresh writes; until the first vectors
are written its LUM inputs are missing (learned defaults), so both see exactly the same
samples, and the comparison is honest: a sample only ever gets vectors built from events
(and by a version trained on data) older than it. It checkpoints, publishes a ranker
version and announces it on ``kafka.topic_model_updates`` when it stops, as the real
trainer does.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from lumstream.config import Config
    from monitoring.metrics import Metrics
    from streams.kafka.consumer import PositionedConsumer
    from trainer.ranker.engine import Scored
    from trainer.ranker.loop import StreamingTrainer

log = logging.getLogger(__name__)


@dataclass
class LiveRanker:
    """One trainer running in its own thread."""

    name: str
    loop: StreamingTrainer
    source: PositionedConsumer
    thread: threading.Thread | None = None
    errors: list[BaseException] = field(default_factory=list)

    def run(self, stop: threading.Event) -> None:
        try:
            self.loop.run(stop)
        except BaseException as exc:  # reported by LiveRankers.finish, never swallowed
            log.exception("demo ranker %s failed", self.name)
            self.errors.append(exc)


class LiveRankers:
    """The pair of live rankers.

    Args:
        cfg: the effective config (the LUM ranker is built for ``backbone.dim`` x
            ``refresh.condition_capacity`` before the first vector exists).
        root: the demo directory (the vector store under ``vectors``, the LUM ranker's
            checkpoints and versions under ``ranker/``).
        bootstrap: the broker.
        metrics: the process metrics (the LUM ranker exports to them).
    """

    def __init__(self, cfg: Config, root: Path, bootstrap: str, metrics: Metrics) -> None:
        from prometheus_client import CollectorRegistry

        from monitoring.metrics import Metrics
        from streams.kafka.consumer import PositionedConsumer
        from streams.kafka.producer import make_producer
        from trainer.ranker.checkpoint import Checkpointer, announce
        from trainer.ranker.engine import RankerEngine
        from trainer.ranker.loop import StreamingTrainer
        from trainer.vectors.store import VectorReader

        self.cfg, self.stop = cfg, threading.Event()
        self._scratch = tempfile.TemporaryDirectory(prefix="lumstream-demo-vectors-")
        self.vectors = VectorReader(
            root / "vectors", Path(self._scratch.name), metrics=metrics, consumer="ranker"
        )
        self.producer = make_producer(cfg.kafka, bootstrap, metrics=metrics)
        self.announced: list[str] = []

        def send(key: bytes, value: bytes) -> None:
            self.producer.send(cfg.kafka.topic_model_updates, key, value)
            self.producer.flush()

        def announcer(path: Path, extra: dict[str, Any]) -> None:
            announce(send, path, extra)
            self.announced.append(path.name)

        self.rankers: list[LiveRanker] = []
        for name, mode in (("without LUM", "off"), ("with LUM", _lum_mode(cfg))):
            rcfg = replace(cfg.ranker, lum_features=mode, vectors_poll_s=0.5)
            with_lum = mode != "off"
            own = metrics if with_lum else Metrics(CollectorRegistry())
            engine = RankerEngine(
                rcfg,
                cfg.embeddings,
                cfg.backbone.dim if with_lum else 1,
                cfg.refresh.condition_capacity if with_lum else 1,
                metrics=own,
            )
            source = PositionedConsumer(cfg.kafka, bootstrap, cfg.kafka.topic_samples)
            loop = StreamingTrainer(
                rcfg,
                engine,
                source,
                vectors=self.vectors if with_lum else None,
                checkpointer=Checkpointer(root / "ranker" / "ckpt", rcfg.keep_checkpoints, own)
                if with_lum
                else None,
                versions_dir=root / "ranker" / "versions" if with_lum else None,
                announce=announcer if with_lum else None,
                metrics=own,
                keep_scores=True,
            )
            self.rankers.append(LiveRanker(name, loop, source))

    def start(self) -> None:
        for r in self.rankers:
            r.thread = threading.Thread(
                target=r.run, args=(self.stop,), name=f"demo-ranker-{r.name}", daemon=True
            )
            r.thread.start()

    def progress(self) -> str:
        """``ranker 12,288 / 12,288 samples`` (learned by each)."""
        counts = " / ".join(f"{r.loop.stats.samples:,}" for r in self.rankers)
        return f"ranker {counts} samples"

    def finish(self, ends: dict[int, int], waiting: Callable[[], None] = lambda: None) -> None:
        """Let both drain lum.samples up to ``ends``, then stop them (the LUM one saves a
        checkpoint and publishes a version on the way out); ``waiting`` is called about
        once a second meanwhile (the live line)."""
        for r in self.rankers:
            r.source.finish_at(ends)
        try:
            for r in self.rankers:
                assert r.thread is not None
                while r.thread.is_alive():
                    waiting()
                    r.thread.join(timeout=1.0)
        finally:
            self.stop.set()
            for r in self.rankers:
                r.source.close()
            self.producer.close()
            self._close_vectors()
        errors = [e for r in self.rankers for e in r.errors]
        if errors:
            raise RuntimeError(f"a demo ranker failed: {errors[0]!r}") from errors[0]

    def abort(self) -> None:
        """Stop both at once (Ctrl-C, a failed stage)."""
        self.stop.set()
        for r in self.rankers:
            if r.thread is not None:
                r.thread.join(timeout=30)
            r.source.close()
        self.producer.close()
        self._close_vectors()

    def _close_vectors(self) -> None:
        self.vectors.close()
        self._scratch.cleanup()

    # -- the report --------------------------------------------------------------------------
    def report(self) -> bool:
        """Print the progressive metrics of both over all samples and over the samples
        scored after the first vector set arrived; True when both learned samples."""
        from trainer.ranker.metrics import summary

        lum = self.rankers[1]
        print(
            "ranker (TorchRec, live on "
            f"{self.cfg.kafka.topic_samples}; each batch scored before it is learned)"
        )
        print(f"  {'':<18}{'samples':>9}{'auc':>9}{'gauc':>9}{'logloss':>9}{'calib':>8}")
        since = _first_use(lum.loop)
        keys = _keys(lum.loop.stats.scored[since[0] :]) if since else None
        sections: list[tuple[str, np.ndarray | None]] = [("all samples", None)]
        if keys is None or not len(keys):
            print("  (no vector set arrived before the stream ended: raise --duration)")
        else:
            assert since is not None
            title = (
                f"after the vectors of {since[1]} arrived (batch {since[0] + 1} of "
                f"{len(lum.loop.stats.scored)})"
            )
            sections.append((title, keys))
        for title, select in sections:
            print(f"  {title}")
            for r in self.rankers:
                probs, labels, users = _scores(r.loop.stats.scored, select)
                m = summary(probs, labels, users)
                print(
                    f"    {r.name:<16}{len(probs):>9,}{m['auc']:>9.4f}"
                    f"{m['gauc']:>9.4f}{m['logloss']:>9.4f}{m['calibration']:>8.3f}"
                )
        for name in self.announced:
            print(
                f"  published ranker version {name} (with LUM) and announced it on "
                f"{self.cfg.kafka.topic_model_updates}"
            )
        return all(r.loop.stats.samples > 0 for r in self.rankers)


def _lum_mode(cfg: Config) -> str:
    return cfg.ranker.lum_features if cfg.ranker.lum_features != "off" else "full"


def _first_use(loop: StreamingTrainer) -> tuple[int, str] | None:
    """(batch index, version) of the first batch scored with a vector set, if any."""
    for step, version in loop.stats.backbone_versions:
        if version is not None:
            return int(step), str(version)
    return None


def _keys(scored: list[Scored]) -> np.ndarray:
    if not scored:
        return np.zeros(0, np.int64)
    part = np.concatenate([s.partition for s in scored]).astype(np.int64)
    seq = np.concatenate([s.seq for s in scored]).astype(np.int64)
    return (part << 40) | seq


def _scores(
    scored: list[Scored], select: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    probs = np.concatenate([s.probs for s in scored]) if scored else np.zeros(0)
    labels = np.concatenate([s.labels for s in scored]) if scored else np.zeros(0)
    users = np.concatenate([s.users for s in scored]) if scored else np.zeros(0, np.int64)
    if select is not None:
        keep = np.isin(_keys(scored), select)
        probs, labels, users = probs[keep], labels[keep], users[keep]
    return probs, labels, users
