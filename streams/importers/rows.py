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
import math
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from streams.config import EventConfig
from streams.contracts.events import Event, EventError, to_dict, validate
from streams.importers.negatives import ImpressionSampler, NegativeSampling
from streams.importers.order import DEFAULT_RUN_EVENTS, Disorder, EventSorter
from streams.importers.windows import DEFAULT_HORIZON_S, LabelDelays

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


@dataclass(frozen=True)
class WriteOptions:
    """What happens between an importer's validated events and the sink.

    Args:
        presorted: the input is already in event-time order: write in input order (the
            disorder is still measured and reported).
        run_events: events per in-memory sorted run of the external merge sort.
        tmp_dir: where sorted runs are spilled (default: the system's temporary directory).
        negatives: add sampled negative impressions (implicit feedback); None: none.
        delay_horizon_s: the longest impression -> positive delay measured for the
            recommended label window.
    """

    presorted: bool = False
    run_events: int = DEFAULT_RUN_EVENTS
    tmp_dir: str | None = None
    negatives: NegativeSampling | None = None
    delay_horizon_s: float = DEFAULT_HORIZON_S


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
    disorder: dict[str, Any] = field(default_factory=dict)
    sorted_runs: int = 0
    label_delays: dict[str, Any] = field(default_factory=dict)
    negatives: dict[str, Any] | None = None

    @property
    def recommended_label_window_s(self) -> float | None:
        value = self.label_delays.get("recommended_label_window_s")
        return float(value) if value is not None else None

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
            "disorder": self.disorder,
            "sorted_runs": self.sorted_runs,
            "label_delays": self.label_delays,
            "recommended_label_window_s": self.recommended_label_window_s,
            "negatives": self.negatives,
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
        d = self.disorder
        if d:
            lines.append(
                f"  input order: {d['behind']:,} of {d['events']:,} events "
                f"({d['share']:.1%}) came after a later one, up to {d['max_back_s']:,} s back"
                + (
                    f"; sorted by event time ({self.sorted_runs} spilled runs)"
                    if d.get("sorted")
                    else ""
                )
            )
        if self.negatives:
            n = self.negatives
            lines.append(
                f"  sampled negatives ({n['mode']}, k={n['k']}, seed {n['seed']}): "
                f"{n['sampled']:,} for {n['interactions']:,} interactions ({n['short']:,} short)"
            )
        ld = self.label_delays
        if ld:
            if ld.get("recommended_label_window_s") is None:
                lines.append(
                    f"  label delays: none of {ld['positives']:,} positives follows an "
                    "impression of its item: the label join will find no positive "
                    "(map an impression action or add --negatives)"
                )
            else:
                lines.append(
                    f"  label delays: {ld['with_impression']:,} of {ld['positives']:,} positives "
                    f"follow an impression (p50 {ld['p50_s']:,} s, p99 {ld['p99_s']:,} s); "
                    f"recommended worker.label_window_s = {ld['recommended_label_window_s']:.0f}"
                )
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
        write: ordering and negative sampling (:class:`WriteOptions`); events reach the
            sink in :meth:`flush`.
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
        write: WriteOptions | None = None,
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
        self.options = write or WriteOptions()
        self.sorter = EventSorter(
            cfg,
            presorted=self.options.presorted,
            run_events=self.options.run_events,
            tmp_dir=self.options.tmp_dir,
        )
        self.delays = LabelDelays(horizon_s=self.options.delay_horizon_s)
        self.input_disorder: Disorder | None = None  # set by an importer that sorts itself
        neg = self.options.negatives
        self.sampler = ImpressionSampler(neg) if neg is not None else None

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
        """Hand over validated events: sorted runs collect them (they reach the sink in
        :meth:`flush`); when presorted they go on at once (through the sampler)."""
        for ev in events:
            if not self.options.presorted:
                self.sorter.add(ev)
                continue
            self.sorter.disorder.see(ev.ts)
            try:
                self._out(self.sampler.push(ev) if self.sampler else (ev,))
            except ValueError as exc:  # the sampler met events out of order
                raise ImportSetupError(str(exc)) from None

    def _out(self, events: Iterable[Event]) -> None:
        sink, actions, stats = self.sink, self.stats.actions, self.stats
        for ev in self._checked(events) if self.sampler else events:
            self.delays.see(ev)
            sink.write(ev)
            actions[ev.action] += 1
            stats.events += 1

    def flush(self) -> None:
        """Write what is still held to the sink: every event in event-time order unless
        presorted, with the sampled negatives; then fill in the order, delay and sampling
        stats."""
        stream: Iterable[Event] = () if self.options.presorted else self.sorter.sorted()
        sampler = self.sampler
        if sampler is not None:
            stream = sampler.run(iter(stream))  # presorted: what it still holds back
        try:
            self._out(self.progress(stream, desc="writing", unit=" events"))
        except ValueError as exc:  # the sampler met events out of order (--presorted)
            raise ImportSetupError(str(exc)) from None
        disorder = self.input_disorder or self.sorter.disorder
        self.stats.disorder = {
            **disorder.to_dict(),
            "sorted": not self.options.presorted or self.input_disorder is not None,
        }
        self.stats.sorted_runs = self.sorter.runs_spilled
        self.stats.label_delays = self.delays.to_dict()
        if sampler is not None:
            neg = sampler.cfg
            self.stats.negatives = {
                "k": neg.k,
                "mode": neg.mode,
                "seed": neg.seed,
                "exclude_s": "inf" if math.isinf(neg.exclude_s) else neg.exclude_s,
                "interactions": sampler.interactions,
                "sampled": sampler.sampled,
                "short": sampler.short,
            }

    def _checked(self, events: Iterable[Event]) -> Iterator[Event]:
        """Sampled events through the contract (their ids are longer than the input's)."""
        for ev in events:
            if "~" in ev.event_id:
                try:
                    ev = validate(to_dict(ev), self.cfg, self.now_ms)
                except EventError as exc:
                    self.stats.bad[f"sampled_{exc.reason}"] += 1
                    continue
            yield ev

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
