"""The ranker version being served, and the swap to a newer one.

:class:`Served` bundles everything one version needs to score (the loaded model, its id
mappers inside a :class:`~trainer.ranker.batch.BatchBuilder`, its drift reference); the
service holds exactly one and replaces the whole object with one assignment, so a request
(which takes the reference once) is scored entirely by one version: never a mix.

:class:`VersionWatcher` decides what to load: the newest version under the versions
directory, or the pinned one. Versions only move forward (a version older than the one
served is never loaded, unless pinned), so the versions a client sees are monotone.
Loading is weights-only (:func:`trainer.ranker.checkpoint.load_ranker`); a version that
fails to load is logged and skipped, and the one served stays.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.durable import VersionError
from monitoring.drift import DriftReference
from trainer.ranker.batch import BatchBuilder
from trainer.ranker.checkpoint import CheckpointError, LoadedRanker, load_ranker, versions_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Served:
    """One loaded ranker version, ready to score.

    Args:
        name / number / path: ``rN``, N and its directory.
        ranker: the model and id mappers.
        builder: the trainer's batch builder over the version's mappers.
        loaded_at_ms / published_at_ms: when it was loaded here / published.
        reference: the version's drift reference (served score PSI), when it has one.
    """

    name: str
    number: int
    path: Path
    ranker: LoadedRanker
    builder: BatchBuilder
    loaded_at_ms: int
    published_at_ms: int
    reference: DriftReference | None

    @property
    def manifest(self) -> dict[str, Any]:
        return self.ranker.manifest


def load_served(path: Path) -> Served:
    """Load ``VERSIONS/rN`` (raises CheckpointError when it cannot be used)."""
    loaded = load_ranker(path)
    lum = loaded.manifest["lum"]
    builder = BatchBuilder(
        loaded.model.cfg, loaded.mappers, int(lum["dim"]), int(lum["conditions"]), metrics=None
    )
    ref = None
    raw = loaded.manifest.get("drift_reference")
    if isinstance(raw, dict):
        try:
            ref = DriftReference.from_json(raw)
        except ValueError as exc:
            log.warning("serving: %s: drift reference not usable (%s)", path, exc)
    return Served(
        name=path.name,
        number=versions_dir(path.parent).number(path),
        path=path,
        ranker=loaded,
        builder=builder,
        loaded_at_ms=time.time_ns() // 1_000_000,
        published_at_ms=int(loaded.manifest.get("created_at_ms", 0)),
        reference=ref,
    )


class VersionWatcher:
    """Finds the version to serve and loads it when it changes.

    Args:
        root: the published versions directory.
        pin: a version name (``r12``) to serve instead of the newest; empty = newest.
        on_load: receives each newly loaded :class:`Served` (the service swaps it in).
        on_failure: called with the version name when a version cannot be loaded.
    """

    def __init__(
        self,
        root: Path,
        pin: str,
        on_load: Callable[[Served], None],
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.root, self.pin, self.on_load, self.on_failure = root, pin, on_load, on_failure
        self.current: Served | None = None
        self._failed: set[str] = set()
        self._wake = threading.Event()
        self._lock = threading.Lock()

    def available(self) -> list[str]:
        """Version names on disk, oldest first."""
        if not self.root.is_dir():
            return []
        return [p.name for p in versions_dir(self.root).paths()]

    def _wanted(self) -> Path | None:
        if not self.root.is_dir():
            return None
        vd = versions_dir(self.root)
        if self.pin:
            path = self.root / self.pin
            return path if path.is_dir() else None
        cur = -1 if self.current is None else self.current.number
        for path in reversed(vd.paths()):
            if path.name not in self._failed and vd.number(path) > cur:
                return path
            if vd.number(path) <= cur:
                break
        return None

    def check(self) -> bool:
        """Load the wanted version when it is not the one served; True when swapped."""
        with self._lock:
            path = self._wanted()
            if path is None or (self.current is not None and self.current.path == path):
                return False
            try:
                served = load_served(path)
            except (CheckpointError, VersionError, OSError, KeyError, ValueError) as exc:
                if path.name not in self._failed:
                    log.warning("serving: version %s not loaded: %s", path.name, exc)
                    self._failed.add(path.name)
                    if self.on_failure is not None:
                        self.on_failure(path.name)
                return False
            self.current = served
            self.on_load(served)
            log.info("serving: now serving %s (%s)", served.name, path)
            return True

    def wake(self) -> None:
        """Check now (an announcement on lum.model-updates arrived)."""
        self._wake.set()

    def run(self, stop: threading.Event, every_s: float) -> None:
        """Check every ``every_s`` seconds (or when woken) until ``stop`` is set."""
        while not stop.is_set():
            try:
                self.check()
            except Exception:  # a watcher that dies would freeze the version: log, go on
                log.exception("serving: version check failed")
            self._wake.wait(every_s)
            self._wake.clear()
