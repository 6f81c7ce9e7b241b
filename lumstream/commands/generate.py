"""`lumstream generate`: the synthetic click stream to Kafka (default) or an event-log file.

Flags override the ``[generator]`` config section; docs/generator.md describes the ground
truth. Serves /metrics while it runs and counts ``lumstream_events_produced``. Ctrl-C or
SIGTERM stops after the current batch (what was written is kept; exit 130), a second one
at once. The work is :func:`streams.generator.pump.generate`.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lumstream.config import Config
    from streams.generator.stream import StreamStats

HELP = (
    "stream synthetic click events (condition-dependent interests, delayed clicks, drift) "
    "to Kafka or a file"
)
ROLE = "generate"

# flag dest -> GeneratorConfig field
_OVERRIDES = {
    "events": "events",
    "duration": "duration_s",
    "rate": "rate",
    "seed": "seed",
    "drift_at": "drift_at",
    "malformed_fraction": "malformed_fraction",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out",
        metavar="FILE",
        help="write an event log (.jsonl, .jsonl.gz, "
        ".ndjson, .parquet) instead of producing to Kafka",
    )
    p.add_argument("--topic", help="Kafka topic (default: kafka.topic_events)")
    p.add_argument(
        "--events",
        type=int,
        metavar="N",
        help="events to generate; 0 = until --duration or Ctrl-C (default: generator.events)",
    )
    p.add_argument(
        "--duration",
        type=float,
        metavar="S",
        help="stop after S seconds of wall-clock time (default: generator.duration_s)",
    )
    p.add_argument(
        "--rate",
        type=float,
        metavar="R",
        help="target events/s, 0 = as fast as possible (default: generator.rate)",
    )
    p.add_argument("--seed", type=int, help="random seed (default: generator.seed)")
    p.add_argument(
        "--drift-at",
        type=float,
        metavar="F",
        help="interests shift after this fraction of the run; <0 = never",
    )
    p.add_argument(
        "--malformed-fraction",
        type=float,
        metavar="F",
        help="fraction of deliberately malformed records (Kafka output only)",
    )
    p.add_argument("--quiet", action="store_true", help="no live progress bar")


def run(cfg: Config, args: argparse.Namespace) -> int:
    from core.settings import build
    from core.signals import stop_on_signals
    from lumstream.cluster import cluster
    from lumstream.commands.base import fail, serving_metrics
    from streams.generator.pump import generate
    from streams.kafka.broker import BrokerError
    from streams.kafka.producer import ProduceError

    overrides = {
        field: getattr(args, dest)
        for dest, field in _OVERRIDES.items()
        if getattr(args, dest) is not None
    }
    gen = build(type(cfg.generator), overrides, source="command line", base=cfg.generator)
    bar = _Bar(gen.events or None, enabled=not args.quiet)
    with (
        serving_metrics(cfg, ROLE) as (metrics, _),
        stop_on_signals("generate: stopping after this batch (Ctrl-C again aborts)") as stop,
    ):
        try:
            if args.out:
                result = generate(gen, out=args.out, metrics=metrics, stop=stop, progress=bar)
            else:
                with cluster(cfg, metrics, note_if_embedded=True) as bootstrap:
                    result = generate(
                        gen,
                        kafka=cfg.kafka,
                        bootstrap=bootstrap,
                        topic=args.topic,
                        metrics=metrics,
                        stop=stop,
                        progress=bar,
                    )
        except (BrokerError, ProduceError) as exc:
            return fail("generate", exc)
        finally:
            bar.close()
    print(result.summary())
    return 130 if result.interrupted else 0


class _Bar:
    """A tqdm bar on stderr fed with the stream's running counts."""

    def __init__(self, total: int | None, *, enabled: bool) -> None:
        self.total, self.enabled = total, enabled
        self.bar: Any = None

    def __call__(self, stats: StreamStats) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.total,
                unit="ev",
                unit_scale=True,
                dynamic_ncols=True,
                desc="generate",
                mininterval=0.5,
                file=sys.stderr,
            )
        self.bar.update(stats.events - self.bar.n)
        self.bar.set_postfix(clicks=stats.clicks, ctr=f"{stats.ctr:.2%}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
