"""Writing the click stream out: to an event log or a Kafka topic, paced, time-bounded and
stoppable (``lumstream generate``).

:func:`generate` is the entry point; :class:`Pump` moves batches from the stream to a
writer. The stream is the same whatever the target (docs/generator.md): a topic gets the
pre-encoded ``(key, value)`` pairs (the fast path, malformed records included), a log the
events.

Example:
    >>> result = generate(GeneratorConfig(events=1000), out="events.jsonl")  # doctest: +SKIP
    >>> print(result.summary())  # doctest: +SKIP
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.settings import ConfigError
from monitoring.metrics import Metrics
from streams.config import GeneratorConfig, KafkaConfig
from streams.generator.pacing import TokenBucket, batch_size_for
from streams.generator.stream import ClickStream, StreamStats

SOURCE = "generator"  # the events_produced{source} label
Progress = Callable[[StreamStats], None]  # called after each batch with the running counts


@dataclass
class GenerateResult:
    """What one run wrote: the stream's counts, where to, how long, and whether it was
    stopped before its end (``stop``)."""

    stats: StreamStats
    target: str
    seconds: float
    interrupted: bool

    def summary(self) -> str:
        s = self.stats
        rate = s.events / self.seconds if self.seconds > 0 else 0.0
        drift = "none" if s.drift_ts_ms is None else f"at event time {s.drift_ts_ms} ms"
        return "\n".join(
            [
                f"{'interrupted' if self.interrupted else 'done'}: {s.events:,} events -> "
                f"{self.target}",
                f"  impressions  {s.impressions:>12,}",
                f"  clicks       {s.clicks:>12,}   CTR {s.ctr:.2%}",
                f"  purchases    {s.purchases:>12,}",
                f"  malformed    {s.malformed:>12,}",
                f"  users        {s.users:>12,}",
                f"  drift        {drift}",
                f"  elapsed      {self.seconds:>12.2f} s   {rate:,.0f} events/s",
            ]
        )


class Pump:
    """Moves batches from a stream to a writer: paced, time-bounded, stoppable.

    Args:
        stream: the click stream (its stats are what ``progress`` sees).
        duration_s / rate: wall-clock bound and target events/s (0 = none).
        stop: set it to stop before the next batch.
        progress: called after each batch.
    """

    def __init__(
        self,
        stream: ClickStream,
        *,
        duration_s: float = 0.0,
        rate: float = 0.0,
        stop: threading.Event | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.stream, self.duration_s, self.rate = stream, duration_s, rate
        self.stop, self.progress = stop, progress

    @property
    def batch_size(self) -> int:
        return batch_size_for(self.rate)

    def run(self, batches: Iterator[list[Any]], write: Callable[[list[Any]], Any]) -> bool:
        """Write batches until the stream ends, the time is up or ``stop`` is set; True
        when ``stop`` ended it (the writer keeps what it was given)."""
        bucket = TokenBucket(self.rate) if self.rate > 0 else None
        deadline = time.monotonic() + self.duration_s if self.duration_s > 0 else None
        # the deadline is checked before a batch is taken: the stream counts what it yields
        while deadline is None or time.monotonic() < deadline:
            if self.stop is not None and self.stop.is_set():
                return True
            batch = next(batches, None)
            if batch is None:
                break
            if bucket is not None:
                bucket.acquire(len(batch))
            write(batch)
            if self.progress is not None:
                self.progress(self.stream.stats)
        return False


def generate(
    cfg: GeneratorConfig,
    *,
    out: str | Path | None = None,
    kafka: KafkaConfig | None = None,
    bootstrap: str | None = None,
    topic: str | None = None,
    metrics: Metrics | None = None,
    stop: threading.Event | None = None,
    progress: Progress | None = None,
) -> GenerateResult:
    """Stream ``cfg``'s click stream to the event log ``out``, or else to ``topic`` (default
    ``kafka.topic_events``, created when missing with the lumstream topics) on ``bootstrap``.

    A log is written atomically: it appears complete, or with what was written before
    ``stop``; an error leaves none. Records queued for Kafka are delivered before this
    returns, also after ``stop``. Counts ``events_produced{source="generator"}``.

    Raises:
        ConfigError: malformed records asked for a log (logs hold valid events only), or a
            log name of unknown format.
        ProduceError: records were not delivered.
    """
    if out is not None and cfg.malformed_fraction > 0:
        raise ConfigError(
            "generator.malformed_fraction: malformed records go to Kafka only "
            "(event-log files hold valid events); drop --out or set it to 0"
        )
    from streams.sinks.events import KafkaEventSink, event_output

    stream = ClickStream(cfg)  # before any output opens: it checks the settings
    pump = Pump(stream, duration_s=cfg.duration_s, rate=cfg.rate, stop=stop, progress=progress)
    if out is not None:
        target = str(out)
    elif kafka is not None and bootstrap is not None:
        from streams.kafka.topics import ensure_topics, topic_specs

        topic = topic or kafka.topic_events
        ensure_topics(kafka, bootstrap, topic_specs(kafka, topic))
        target = f"{topic} @ {bootstrap}"
    else:
        raise ValueError("generate: give a file (out) or a cluster (kafka and bootstrap)")
    try:
        output = event_output(
            out, kafka=kafka, bootstrap=bootstrap, topic=topic, metrics=metrics, source=SOURCE
        )
    except ValueError as exc:  # an unknown suffix
        raise ConfigError(f"--out: {exc}") from None
    started = time.perf_counter()
    with output as sink:
        if isinstance(sink, KafkaEventSink):
            interrupted = pump.run(stream.pair_batches(batch_size=pump.batch_size), sink.write_many)
        else:

            def write(batch: list[Any]) -> None:
                for event in batch:
                    sink.write(event)

            interrupted = pump.run(stream.event_batches(batch_size=pump.batch_size), write)
    return GenerateResult(stream.stats, target, time.perf_counter() - started, interrupted)
