"""What every importer shares: row outcomes, bad-row reports, counting and writing.

An importer turns input rows into event dicts and hands them to an :class:`ImportRun`,
which validates them against the event contract (``streams.contracts.events.validate``), writes the
events of good rows to the sink, and reports bad rows as ``file:line: reason: detail``.
A bad row never stops the import unless ``strict`` is set (then :class:`ImportAborted`).

Example:
    >>> from prometheus_client import CollectorRegistry
    >>> from monitoring.metrics import Metrics
    >>> from streams.config import EventConfig
    >>> class ListSink:
    ...     count = 0
    ...     def write(self, event): self.count += 1
    ...     def close(self): pass
    >>> run = ImportRun("demo", ListSink(), EventConfig(), metrics=Metrics(CollectorRegistry()))
    >>> run.bad("in.csv", 3, RowReason.BAD_NUMBER, "ts: 'x' is not a number")
    >>> run.stats.bad["bad_number"], run.stats.rows_read
    (1, 1)
"""

from __future__ import annotations

import enum
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from streams.config import EventConfig
from streams.contracts.events import Event, EventError, validate

if TYPE_CHECKING:
    from monitoring.metrics import Metrics
    from streams.sinks.events import EventSink

T = TypeVar("T")
_STOP_CHECK = 1024  # input items between looks at the stop flag


class RowReason(enum.StrEnum):
    """Why an input row was rejected before event validation (event reasons also apply)."""

    WRONG_COLUMN_COUNT = "wrong_column_count"
    MISSING_VALUE = "missing_value"
    BAD_NUMBER = "bad_number"
    BAD_TIMESTAMP = "bad_timestamp"
    UNKNOWN_MOVIE = "unknown_movie"
    UNMAPPED_ACTION = "unmapped_action"
    MALFORMED_ROW = "malformed_row"


def short(value: object, limit: int = 40) -> str:
    """``repr(value)`` cut to about ``limit`` characters, for bad-row details."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


class RowError(ValueError):
    """Raised by row parsers; the importer turns it into a bad-row report.

    Args:
        reason: a :class:`RowReason` or ``streams.contracts.events.Reason`` value.
        detail: what was wrong, naming the column or field.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = str(reason)
        self.detail = detail


class ImportSetupError(ValueError):
    """The import cannot start (missing file or column, bad option): one line for the user."""


@dataclass(frozen=True, slots=True)
class BadRow:
    """One rejected input row."""

    file: str
    line: int
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}: {self.detail}"


class ImportAborted(Exception):
    """``strict`` mode stopped at the first bad row (carried in ``bad_row``)."""

    def __init__(self, bad_row: BadRow) -> None:
        super().__init__(f"stopped at the first bad row (--strict): {bad_row}")
        self.bad_row = bad_row


class ImportInterrupted(Exception):
    """The run's ``stop`` was set: the import ended before its input did."""


@dataclass
class ImportStats:
    """Counts of one import; ``rows_read == rows_ok + rows_bad + rows_dropped``."""

    importer: str
    source: str = ""  # what was read, e.g. "MovieLens latest: DIR"
    rows_read: int = 0
    rows_ok: int = 0
    rows_bad: int = 0
    rows_dropped: int = 0
    events: int = 0
    seconds: float = 0.0
    bad: Counter[str] = field(default_factory=Counter)
    actions: Counter[str] = field(default_factory=Counter)
    files: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "importer": self.importer,
            "source": self.source,
            "rows_read": self.rows_read,
            "rows_ok": self.rows_ok,
            "rows_bad": self.rows_bad,
            "rows_dropped": self.rows_dropped,
            "events": self.events,
            "seconds": round(self.seconds, 3),
            "bad": dict(self.bad),
            "actions": dict(self.actions),
            "files": dict(self.files),
        }

    def summary(self) -> str:
        """A few human-readable lines for the end of ``lumstream import``."""
        rate = self.events / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"import {self.importer} ({self.source}): {self.rows_read:,} rows read "
            f"({self.rows_ok:,} ok, {self.rows_bad:,} bad, {self.rows_dropped:,} dropped) "
            f"in {self.seconds:.2f} s",
            f"  events written: {self.events:,} ({rate:,.0f}/s): "
            + (", ".join(f"{a} {n:,}" for a, n in sorted(self.actions.items())) or "none"),
        ]
        lines += [f"  rows from {name}: {n:,}" for name, n in sorted(self.files.items())]
        lines += [f"  bad rows, {reason}: {n:,}" for reason, n in self.bad.most_common()]
        return "\n".join(lines)


class ImportRun:
    """Validates, counts and writes the rows of one import.

    Args:
        importer: name used in metrics and the summary (``movielens``, ``generic``).
        sink: where the events of good rows go.
        cfg: the event contract every event must pass.
        metrics: counts ``import_rows{importer, outcome}`` and
            ``events_rejected{stage="import", reason}`` when given.
        strict: raise :class:`ImportAborted` at the first bad row.
        on_bad: called with each :class:`BadRow` (e.g. to print the first few).
        progress: show tqdm progress bars (on stderr) in :meth:`progress`.
        now_ms: the wall clock for the contract's future bound (default: now, fixed at start).
        stop: when set, the input loops (those wrapped by :meth:`progress`) raise
            :class:`ImportInterrupted`.
    """

    def __init__(
        self,
        importer: str,
        sink: EventSink,
        cfg: EventConfig,
        *,
        metrics: Metrics | None = None,
        strict: bool = False,
        on_bad: Callable[[BadRow], None] | None = None,
        progress: bool = False,
        now_ms: int | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.importer = importer
        self.sink = sink
        self.cfg = cfg
        self.metrics = metrics
        self.strict = strict
        self.on_bad = on_bad
        self.show_progress = progress
        self.stop = stop
        self.now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        self.stats = ImportStats(importer)
        self._t0 = time.perf_counter()
        self._ok = metrics.import_rows.labels(importer=importer, outcome="ok") if metrics else None

    def check(self, file: str, line: int, objs: Sequence[Mapping[str, Any]]) -> list[Event] | None:
        """Validate the events of one input row; all pass (row ok) or the row is bad (None)."""
        try:
            events = [validate(obj, self.cfg, self.now_ms) for obj in objs]
        except EventError as exc:
            self.bad(file, line, exc.reason, exc.detail)
            return None
        self.ok(file)
        return events

    def ok(self, file: str) -> None:
        """Count one good row (done by :meth:`check`; rows without events call it directly)."""
        stats = self.stats
        stats.rows_read += 1
        stats.rows_ok += 1
        stats.files[file] += 1
        if self._ok is not None:
            self._ok.inc()

    def bad(self, file: str, line: int, reason: str, detail: str) -> None:
        """Count and report one bad row; raises :class:`ImportAborted` when strict."""
        reason = str(reason)
        stats = self.stats
        stats.rows_read += 1
        stats.rows_bad += 1
        stats.bad[reason] += 1
        stats.files[file] += 1
        if self.metrics is not None:
            self.metrics.import_rows.labels(importer=self.importer, outcome="bad").inc()
            self.metrics.events_rejected.labels(stage="import", reason=reason).inc()
        bad_row = BadRow(file, line, reason, detail)
        if self.on_bad is not None:
            self.on_bad(bad_row)
        if self.strict:
            raise ImportAborted(bad_row)

    def drop(self, file: str) -> None:
        """Count a row skipped on purpose (e.g. an unmapped action with drop_unmapped)."""
        self.stats.rows_read += 1
        self.stats.rows_dropped += 1
        self.stats.files[file] += 1
        if self.metrics is not None:
            self.metrics.import_rows.labels(importer=self.importer, outcome="dropped").inc()

    def write(self, events: Iterable[Event]) -> None:
        """Write already validated events to the sink."""
        sink, actions = self.sink, self.stats.actions
        for ev in events:
            sink.write(ev)
            actions[ev.action] += 1
            self.stats.events += 1

    def progress(
        self, items: Iterable[T], desc: str, total: int | None = None, unit: str = " rows"
    ) -> Iterable[T]:
        """An importer's input loop: ``items``, checked for ``stop`` every so many, in a tqdm
        bar when progress is on and stderr is a terminal."""
        if self.stop is not None:
            items = self._stoppable(items, self.stop)
        if not self.show_progress or not sys.stderr.isatty():
            return items
        from tqdm import tqdm

        return tqdm(
            items,
            desc=desc,
            total=total,
            unit=unit,
            unit_scale=True,
            leave=False,
            mininterval=0.5,
        )

    def _stoppable(self, items: Iterable[T], stop: threading.Event) -> Iterator[T]:
        for i, item in enumerate(items):
            if i % _STOP_CHECK == 0 and stop.is_set():
                raise ImportInterrupted(
                    f"interrupted after {self.stats.rows_read:,} rows "
                    f"({self.stats.events:,} events written)"
                )
            yield item

    def finish(self) -> ImportStats:
        """Stop the clock and return the stats."""
        self.stats.seconds = time.perf_counter() - self._t0
        return self.stats
