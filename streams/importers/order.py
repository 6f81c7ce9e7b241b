"""Event-time order for imports: an external merge sort and a measure of disorder.

Logs are often ordered by user, then time (one user's whole history, then the next
user's), but the label join's watermark and every time split assume event-time order. An
:class:`EventSorter` takes validated events in input order and gives them back sorted by
``ts``, stable (equal times keep input order), in bounded memory: every ``run_events``
events are sorted in memory and spilled to a temporary run file (canonical wire-format
lines), and the runs are merged with :func:`heapq.merge` (stable: on equal keys the
earlier run, i.e. the earlier input, comes first). With ``presorted`` it passes events
through untouched and only measures.

:class:`Disorder` measures the input order as it arrives: how many events came with a
time earlier than one already seen (``behind``), and by how much at most (``max_back_ms``).

Example:
    >>> d = Disorder()
    >>> for t in (5, 3, 9, 1): d.see(t)
    >>> d.behind, d.max_back_ms
    (2, 8)
"""

from __future__ import annotations

import heapq
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.config import EventConfig
from streams.contracts.events import Event, decode, encode

DEFAULT_RUN_EVENTS = 500_000


@dataclass
class Disorder:
    """How far an input strays from event-time order.

    ``behind``: events whose time is earlier than the latest time seen before them;
    ``max_back_ms``: the largest such gap; ``seen``: events measured.
    """

    seen: int = 0
    behind: int = 0
    max_back_ms: int = 0
    _latest: int | None = None

    def see(self, ts: int) -> None:
        self.seen += 1
        if self._latest is None or ts >= self._latest:
            self._latest = ts
            return
        self.behind += 1
        self.max_back_ms = max(self.max_back_ms, self._latest - ts)

    @property
    def share(self) -> float:
        """Fraction of events that arrived behind the time already seen."""
        return self.behind / self.seen if self.seen else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "events": self.seen,
            "behind": self.behind,
            "share": round(self.share, 6),
            "max_back_s": round(self.max_back_ms / 1000, 3),
        }

    def summary(self) -> str:
        if not self.behind:
            return "input order: in event-time order"
        return (
            f"input order: {self.behind:,} of {self.seen:,} events ({self.share:.1%}) came "
            f"after a later event, up to {self.max_back_ms / 1000:,.0f} s back"
        )


class EventSorter:
    """Events in, the same events out in stable event-time order (external merge sort).

    Args:
        cfg: the event contract (to read spilled runs back).
        presorted: trust the input order: no sorting, only the :class:`Disorder` measure.
        run_events: events sorted in memory per run; more go to temporary run files.
        tmp_dir: where run files go (default: the system's temporary directory).

    Example:
        >>> s = EventSorter(EventConfig(), run_events=2)
        >>> for i, t in enumerate((3, 1, 2, 1)):
        ...     s.add(Event(f"e{i}", "u", "i", "click", "c", 1_700_000_000_000 + t))
        >>> [e.event_id for e in s.sorted()]
        ['e1', 'e3', 'e2', 'e0']
        >>> s.runs_spilled
        2
    """

    def __init__(
        self,
        cfg: EventConfig,
        *,
        presorted: bool = False,
        run_events: int = DEFAULT_RUN_EVENTS,
        tmp_dir: str | Path | None = None,
    ) -> None:
        if run_events < 1:
            raise ValueError(f"run_events must be >= 1, got {run_events}")
        self.cfg = cfg
        self.presorted = presorted
        self.run_events = run_events
        self.disorder = Disorder()
        self.runs_spilled = 0
        self._buf: list[Event] = []
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._tmp_root = tmp_dir
        self._runs: list[Path] = []

    def add(self, event: Event) -> None:
        self.disorder.see(event.ts)
        self._buf.append(event)
        if not self.presorted and len(self._buf) >= self.run_events:
            self._spill()

    def _spill(self) -> None:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="lumstream-sort-", dir=self._tmp_root)
        self._buf.sort(key=_ts)  # list.sort is stable
        path = Path(self._tmp.name) / f"run-{len(self._runs):06d}.jsonl"
        with path.open("wb") as fh:
            fh.writelines(encode(e) + b"\n" for e in self._buf)
        self._runs.append(path)
        self.runs_spilled += 1
        self._buf = []

    def _read_run(self, path: Path) -> Iterator[Event]:
        with path.open("rb") as fh:
            for line in fh:
                yield decode(line.rstrip(b"\n"), self.cfg, now_ms=2**62)

    def sorted(self) -> Iterator[Event]:
        """Every event added, in stable event-time order (input order when presorted);
        the run files are removed when the iterator ends or is closed."""
        buf, self._buf = self._buf, []
        if self.presorted:
            yield from buf
            return
        buf.sort(key=_ts)
        try:
            if not self._runs:
                yield from buf
                return
            runs = [self._read_run(p) for p in self._runs]
            yield from heapq.merge(*runs, buf, key=_ts)  # earlier runs first on ties
        finally:
            self.close()

    def close(self) -> None:
        """Remove the run files (also done by :meth:`sorted` at its end)."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        self._runs = []


def _ts(event: Event) -> int:
    return event.ts
