"""The demo's backbone: the refresh job of ``lumstream backbone refresh``, in a thread.

Started once the replayed history is in the store, its first pass trains backbone v1 on
that history, publishes it and writes every user's condition-query vectors; from then on,
while the live traffic runs, the frozen v1 recomputes every few seconds the vectors of
the users whose sequences grew (incremental refresh). The report compares the age of the
vectors the live samples got (sample event time minus the newest event the vectors
cover) with what a full-refresh-only job would have given them (v1's full pass alone).
"""

from __future__ import annotations

import logging
import tempfile
import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from lumstream.config import Config
    from monitoring.metrics import Metrics
    from trainer.backbone.refresh import RefreshPaths, RefreshResult

log = logging.getLogger(__name__)


class LiveBackbone:
    """The refresh loop of the demo.

    Args:
        cfg: the effective config (``refresh.cadence_s`` is stretched past the demo: one
            full refresh, then incremental passes every ``incremental_every_s``).
        root: the demo directory (store, backbone versions, vectors).
        metrics: the process metrics.
        incremental_every_s: seconds between incremental passes.
    """

    def __init__(
        self, cfg: Config, root: Path, metrics: Metrics, incremental_every_s: float
    ) -> None:
        from trainer.backbone.refresh import RefreshPaths

        self.cfg = cfg
        self.rcfg = replace(
            cfg.refresh,
            cadence_s=10 * 365 * 86_400.0,
            incremental_every_s=incremental_every_s,
            vector_records_kept=max(cfg.refresh.vector_records_kept, 64),
        )
        self.paths: RefreshPaths = RefreshPaths(root / "store", root / "backbone", root / "vectors")
        self.metrics = metrics
        self.stop = threading.Event()
        self.first = threading.Event()
        self.result: RefreshResult | None = None
        self.errors: list[BaseException] = []
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="demo-backbone", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from trainer.backbone.refresh import run_forever

        def first(result: RefreshResult) -> None:
            if self.result is None:
                self.result = result
                self.first.set()

        try:
            run_forever(
                self.cfg.backbone,
                self.rcfg,
                self.cfg.store,
                self.cfg.events,
                self.paths,
                self.metrics,
                self.stop,
                on_refresh=first,
            )
        except BaseException as exc:  # reported by wait_first / close, never swallowed
            log.exception("demo backbone failed")
            self.errors.append(exc)
        finally:
            self.first.set()

    def wait_first(self) -> RefreshResult | None:
        """Block until the first refresh is done; its result (None when it failed)."""
        self.first.wait()
        if self.errors:
            raise RuntimeError(f"the demo backbone failed: {self.errors[0]!r}") from self.errors[0]
        return self.result

    def close(self) -> None:
        self.stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def incremental_users(self) -> int:
        """Vectors written by incremental passes so far (from the metrics)."""
        n = self.metrics.registry.get_sample_value(
            "lumstream_backbone_vectors_written_total", {"mode": "incremental"}
        )
        return int(n or 0)


def print_refresh(result: RefreshResult | None, paths: RefreshPaths) -> bool:
    """The first refresh's lines of the summary; True when it published vectors."""
    from trainer.backbone.versions import list_versions

    if result is None or result.version is None:
        print(f"  no version: {result.reason if result is not None else 'the refresh failed'}")
        return False
    scores = "  ".join(f"{k} {v:.4f}" for k, v in sorted((result.metrics or {}).items()))
    print(
        f"  published   {result.version.name} in {result.seconds:.1f} s "
        f"({result.version.manifest['param_count']:,} parameters, "
        f"{result.users_trained:,} users): {scores}"
    )
    print(
        f"  vectors     {result.vectors_written:,} users x {result.conditions} conditions to "
        f"{paths.vectors}"
    )
    print(
        f"  versions    {', '.join(v.name for v in list_versions(paths.versions))} under "
        f"{paths.versions}"
    )
    return result.vectors_written > 0


def vector_ages(
    vectors: Path, users: np.ndarray, ts: np.ndarray, live_from_ms: int
) -> dict[str, np.ndarray]:
    """Seconds of event time between each sample and the newest event its vectors cover,
    as the samples got them (``incremental``) and as v1's full pass alone would have given
    them (``full_only``: the records valid when the live traffic began); samples without a
    vector are left out."""
    from trainer.vectors.store import VectorReader

    with tempfile.TemporaryDirectory(prefix="lumstream-demo-ages-") as scratch:
        reader = VectorReader(vectors, Path(scratch) / "secondary")
        try:
            zeros = np.zeros(len(users), np.int64)
            got = reader.lookup(users, zeros, zeros, ts)
            base = reader.lookup(users, zeros, zeros, np.full(len(users), live_from_ms))
        finally:
            reader.close()
    return {
        "incremental": (ts - got.covered)[got.user_found] / 1000.0,
        "full_only": (ts - base.covered)[base.user_found] / 1000.0,
    }


def print_ages(ages: dict[str, np.ndarray], clock: float, incremental_users: int) -> None:
    """The vector-age lines of the summary."""
    print(
        f"  vector age  event time of a live sample minus the newest event its vectors cover "
        f"(the demo's event clock runs {clock:,.0f}x real time); {incremental_users:,} user "
        "vectors recomputed incrementally"
    )
    for name, label in (("incremental", "incremental"), ("full_only", "v1's full pass only")):
        a = ages[name]
        if not len(a):
            print(f"    {label:<20} no live sample had vectors")
            continue
        p50, p99 = np.percentile(a, [50, 99])
        print(
            f"    {label:<20} p50 {p50:>8,.0f} s  p99 {p99:>8,.0f} s  "
            f"({len(a):,} samples; {p50 / clock:,.1f} s / {p99 / clock:,.1f} s of real time)"
        )
