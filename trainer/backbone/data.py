"""Where the backbone's sequences come from: the :class:`SequenceSource` interface.

A source yields ``(user id, sequence)`` pairs, the sequence a ``SEQ_DTYPE`` array oldest
first, and tells its watermark (the newest event time it holds). Backends:

- :class:`MemorySequences` — a dict (tests, benchmarks, a snapshot of the store);
- :class:`EventLogSequences` — an event log written by ``lumstream import`` / the sinks
  (JSONL, JSONL.gz, Parquet), decoded and validated with ``streams.contracts.events``;
- the RocksDB sequence store (``streams/``) implements the same two methods.

:func:`prepare` applies the backbone's view (which actions form the sequence) and skips
sequences too short to train on, counting each reason. :func:`read_sequences` reads a
store or an event log once into memory (what ``lumstream backbone train|eval`` work on).
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from core.settings import ConfigError
from monitoring.metrics import Metrics
from streams.config import EventConfig, StoreConfig
from streams.contracts.eventlog import iter_event_log
from streams.contracts.events import Event, EventError, decode
from streams.contracts.ids import stable_id
from streams.contracts.records import SEQ_DTYPE

if TYPE_CHECKING:
    from streams.worker.store import StoreReader

log = logging.getLogger(__name__)

Pairs = list[tuple[int, np.ndarray]]


class SequenceSource(Protocol):
    """Anything that holds users' behaviour sequences."""

    def sequences(self) -> Iterator[tuple[int, np.ndarray]]:
        """(user id, SEQ_DTYPE array oldest first) for every user; order is the source's."""
        ...

    def watermark(self) -> int:
        """The newest event time (ms) the source holds; 0 when empty."""
        ...


class MemorySequences:
    """Sequences held in a dict.

    Args:
        seqs: user id -> SEQ_DTYPE array (oldest first).

    Example:
        >>> s = np.zeros(2, SEQ_DTYPE); s["ts"] = [1, 5]
        >>> MemorySequences({7: s}).watermark()
        5
    """

    def __init__(self, seqs: dict[int, np.ndarray]) -> None:
        self.seqs = seqs

    def sequences(self) -> Iterator[tuple[int, np.ndarray]]:
        yield from self.seqs.items()

    def watermark(self) -> int:
        return max((int(s["ts"].max()) for s in self.seqs.values() if len(s)), default=0)


class EventLogSequences:
    """Sequences rebuilt from an event log; bad and duplicate events are skipped and counted.

    Args:
        path: an event log readable by ``streams.contracts.eventlog.iter_event_log``.
        events: the event contract (valid actions; the action index is stored).
        metrics: where rejected events are counted (stage ``backbone``).
    """

    def __init__(
        self, path: str | Path, events: EventConfig | None = None, metrics: Metrics | None = None
    ) -> None:
        self.path, self.events, self.metrics = Path(path), events or EventConfig(), metrics
        self._seqs: dict[int, np.ndarray] | None = None
        self.rejected: Counter[str] = Counter()

    def _load(self) -> dict[int, np.ndarray]:
        def valid() -> Iterator[Event]:
            seen: set[str] = set()
            for _offset, raw in iter_event_log(self.path):
                try:
                    ev = decode(raw, self.events)
                except EventError as exc:
                    self._reject(str(exc.reason))
                    continue
                if ev.event_id in seen:
                    self._reject("duplicate")
                    continue
                seen.add(ev.event_id)
                yield ev

        out = sequences_from_events(valid(), self.events)
        if self.rejected:
            log.warning("event log %s: skipped %s", self.path, dict(self.rejected))
        return out

    def _reject(self, reason: str) -> None:
        self.rejected[reason] += 1
        if self.metrics is not None:
            self.metrics.events_rejected.labels(stage="backbone", reason=reason).inc()

    def sequences(self) -> Iterator[tuple[int, np.ndarray]]:
        if self._seqs is None:
            self._seqs = self._load()
        yield from self._seqs.items()

    def watermark(self) -> int:
        return max((int(s["ts"][-1]) for _, s in self.sequences() if len(s)), default=0)


def sequences_from_events(events: Iterable[Event], cfg: EventConfig) -> dict[int, np.ndarray]:
    """Valid events -> user id -> SEQ_DTYPE array in event-time order (ties: input order).

    Ids and conditions go through ``stable_id``; the category is ``features["category"]``
    (0 when absent); the action is its index in ``cfg.actions``.
    """
    actions = {a: i for i, a in enumerate(cfg.actions)}
    rows: dict[int, list[tuple[int, int, int, int, int]]] = {}
    for ev in events:
        cat = (ev.features or {}).get("category")
        rows.setdefault(stable_id(ev.user_id), []).append(
            (
                ev.ts,
                stable_id(ev.item_id),
                stable_id(ev.condition),
                0 if cat is None else stable_id(str(cat)),
                actions[ev.action],
            )
        )
    out = {}
    for user, r in rows.items():
        seq = np.array(r, dtype=SEQ_DTYPE)
        out[user] = seq[np.argsort(seq["ts"], kind="stable")]
    return out


def action_indices(names: tuple[str, ...], events: EventConfig) -> np.ndarray | None:
    """Indices of ``names`` in ``events.actions``; None (= all) when ``names`` is empty."""
    if not names:
        return None
    unknown = [a for a in names if a not in events.actions]
    if unknown:
        raise ConfigError(
            f"backbone.sequence_actions: {unknown[0]!r} is not one of "
            f"events.actions ({', '.join(events.actions)})"
        )
    return np.array([events.actions.index(a) for a in names], np.uint8)


def prepare(
    source: SequenceSource,
    actions: np.ndarray | None,
    min_events: int = 2,
    metrics: Metrics | None = None,
) -> tuple[Pairs, Counter[str]]:
    """The users to train on: events of ``actions`` only; fewer than ``min_events`` left
    -> skipped and counted (reasons ``empty``, ``too_short``).

    Returns:
        (pairs sorted by user id, skip counts).
    """
    out: Pairs = []
    skipped: Counter[str] = Counter()
    for user, seq in source.sequences():
        if actions is not None:
            seq = seq[np.isin(seq["action"], actions)]
        if len(seq) < min_events:
            reason = "empty" if len(seq) == 0 else "too_short"
            skipped[reason] += 1
            if metrics is not None:
                metrics.backbone_sequences_skipped.labels(reason=reason).inc()
            continue
        out.append((user, seq))
    if skipped:
        log.info("backbone: skipped %s sequences (fewer than %d events)", dict(skipped), min_events)
    out.sort(key=lambda p: p[0])
    return out, skipped


def since(source: SequenceSource, watermark: int, old_share: float, seed: int) -> MemorySequences:
    """Users with events after ``watermark`` plus a random ``old_share`` of the others (a
    warm-start refresh keeps some older users so the model does not forget them)."""
    rng = np.random.default_rng(seed)
    keep: dict[int, np.ndarray] = {}
    for user, seq in source.sequences():
        if (len(seq) and int(seq["ts"][-1]) > watermark) or rng.random() < old_share:
            keep[user] = seq
    return MemorySequences(keep)


def changed_first(pairs: Pairs, watermark: int) -> Pairs:
    """Users ordered for vector recomputation: most events after ``watermark`` first, then
    the unchanged ones (by user id)."""
    new = [int((seq["ts"] > watermark).sum()) for _, seq in pairs]
    order = sorted(range(len(pairs)), key=lambda i: (-new[i], pairs[i][0]))
    return [pairs[i] for i in order]


def open_store(root: Path, cfg: StoreConfig, scratch: Path) -> StoreReader:
    """The sequence store under ``root`` opened read-only (RocksDB secondaries, beside the
    workers writing it) and caught up; the caller closes it.

    Raises:
        StoreError: no store at ``root``, or a partition that cannot be opened.
    """
    from streams.worker.store import StoreError, StoreReader

    if not root.is_dir():
        raise StoreError(f"no sequence store at {root} (`lumstream worker` writes it)")
    reader = StoreReader(root, cfg, scratch)
    try:
        reader.refresh()
    except BaseException:
        reader.close()
        raise
    return reader


def read_sequences(
    store: Path,
    cfg: StoreConfig,
    events: EventConfig,
    *,
    log: Path | None = None,
    metrics: Metrics | None = None,
) -> MemorySequences:
    """Every user's sequence, read once into memory: from the event log ``log`` when given
    (bad and duplicate events skipped and counted), else from the sequence store ``store``.

    Raises:
        StoreError: no store at ``store`` (see :func:`open_store`).
        FileNotFoundError: no event log at ``log``.
    """
    if log is not None:
        if not log.exists():
            raise FileNotFoundError(f"no event log at {log}")
        return MemorySequences(dict(EventLogSequences(log, events, metrics).sequences()))
    with tempfile.TemporaryDirectory(prefix="lumstream-sequences-") as scratch:
        reader = open_store(store, cfg, Path(scratch))
        try:
            return MemorySequences(dict(reader.sequences()))
        finally:
            reader.close()
