"""`lumstream replay produce|backfill SOURCE`: archived events -> lum.events, or straight into
a store.

    lumstream replay produce events.jsonl.gz --rate 5000            # re-produce, rate-limited
    lumstream replay backfill logs/ --samples-out s.lsb --deadletters-out d.jsonl
    lumstream replay backfill kafka:lum.events --from 2026-01-01 --to 2026-01-02 \\
        --store data/backfill/jan1

Both resume after an interruption: run the same command again. Ctrl-C (or SIGTERM) stops
after the current batch, leaving a clean resume point (exit 130); a second one aborts.
Exit 2: the replay cannot start or go on; 1: records were not delivered. See
docs/replay.md. The work is :mod:`streams.replay.run`.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lumstream.config import Config
    from monitoring.metrics import Metrics
    from streams.replay.base import EventSource

HELP = "replay event logs or a Kafka time range into lum.events, or backfill a store from them"
ROLE = "replay"
NOTICE = "replay: stopping after the current batch (Ctrl-C again aborts)..."


def add_arguments(p: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "source",
        metavar="SOURCE",
        help="an event log (.jsonl, .ndjson, .gz, .parquet), a directory or glob of them "
        "(replayed in name order), or kafka:TOPIC",
    )
    common.add_argument(
        "--from",
        dest="start",
        metavar="TIME",
        help="kafka:TOPIC only: first event time, ms since the epoch or ISO 8601 (UTC)",
    )
    common.add_argument(
        "--to", dest="end", metavar="TIME", help="kafka:TOPIC only: end (exclusive)"
    )
    common.add_argument("--quiet", action="store_true", help="no progress bar")
    common.add_argument("--json", action="store_true", help="print the summary as JSON")

    sub = p.add_subparsers(dest="action", metavar="MODE", required=True)
    produce = sub.add_parser(
        "produce",
        parents=[common],
        help="re-produce the events into a topic, rate-limited, resumable",
        description="Re-produce the events into a topic in the source's order, keyed by user.",
    )
    produce.add_argument("--topic", metavar="T", help="target topic (default kafka.topic_events)")
    produce.add_argument(
        "--rate", type=float, metavar="R", help="events/s; 0 = as fast as possible (replay.rate)"
    )
    produce.add_argument(
        "--checkpoint",
        type=Path,
        metavar="FILE",
        help="checkpoint file (default <data_dir>/replay/produce-<hash>.json)",
    )
    produce.add_argument(
        "--restart", action="store_true", help="forget the checkpoint and replay everything again"
    )
    backfill = sub.add_parser(
        "backfill",
        parents=[common],
        help="apply the events straight to a store with the worker's code, resumable",
        description="Build a sequence store from the events with the live worker's processing; "
        "samples and dead letters go to Kafka or to files.",
    )
    backfill.add_argument(
        "--store",
        type=Path,
        metavar="DIR",
        help="store directory (default replay.store or <data_dir>/backfill/store)",
    )
    backfill.add_argument(
        "--partitions",
        type=int,
        metavar="N",
        help="partitions to spread events over (default kafka.partitions)",
    )
    backfill.add_argument(
        "--samples-out",
        type=Path,
        metavar="FILE",
        help="write samples to this sample file instead of kafka.topic_samples",
    )
    backfill.add_argument(
        "--deadletters-out",
        type=Path,
        metavar="FILE",
        help="write dead letters as JSON lines instead of kafka.topic_deadletter",
    )


class _Bar:
    """A tqdm bar with ETA for an opened source, made on the first report (so a resumed run
    starts part-way)."""

    def __init__(self, desc: str, *, enabled: bool) -> None:
        self.desc, self.enabled = desc, enabled
        self.source: EventSource | None = None
        self.bar: Any = None

    def attach(self, source: EventSource) -> _Bar:
        self.source = source
        return self

    def __call__(self, done: int) -> None:
        if not self.enabled or self.source is None:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.source.total(),
                initial=done,
                desc=self.desc,
                unit=f" {self.source.unit}",
                unit_scale=True,
                file=sys.stderr,
                mininterval=0.5,
                dynamic_ncols=True,
            )
        elif done > self.bar.n:
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _connect(cfg: Config, metrics: Metrics, *, embedded: bool) -> AbstractContextManager[str]:
    """The cluster; with ``embedded`` False, a throwaway embedded broker is refused."""
    from lumstream.cluster import cluster
    from streams.kafka.broker import running_broker
    from streams.replay.base import ReplayError

    if (
        not embedded
        and not cfg.kafka.bootstrap_servers
        and running_broker(cfg.layout.broker_run_file) is None
    ):
        raise ReplayError(
            "no Kafka cluster: set kafka.bootstrap_servers or start `lumstream broker`, "
            "or backfill to files with --samples-out FILE --deadletters-out FILE"
        )
    return cluster(cfg, metrics, note_if_embedded=True)


def run(cfg: Config, args: argparse.Namespace) -> int:
    import orjson

    from core.settings import build
    from core.signals import stop_on_signals
    from core.times import TimeError, time_range
    from lumstream.commands.base import fail, serving_metrics
    from streams.kafka.broker import BrokerError
    from streams.kafka.producer import ProduceError
    from streams.replay.base import ReplayError
    from streams.replay.run import run_backfill, run_produce

    try:
        from_ts, to_ts = time_range(args.start, args.end)
    except TimeError as exc:
        return fail("replay", exc, 2)
    rcfg = cfg.replay
    if args.action == "produce" and args.rate is not None:
        rcfg = build(type(rcfg), {"rate": args.rate}, source="--rate", base=rcfg)
    bar = _Bar(args.action, enabled=not args.quiet and sys.stderr.isatty())
    with (
        serving_metrics(cfg, ROLE) as (metrics, _),
        stop_on_signals(notice=NOTICE, second_aborts=True) as stop,
    ):
        try:
            if args.action == "produce":
                stats = run_produce(
                    args.source,
                    cfg.kafka,
                    lambda: _connect(cfg, metrics, embedded=True),
                    checkpoint_dir=cfg.layout.replay_checkpoints,
                    checkpoint=args.checkpoint,
                    restart=args.restart,
                    topic=args.topic,
                    from_ts=from_ts,
                    to_ts=to_ts,
                    cfg=rcfg,
                    metrics=metrics,
                    stop=stop,
                    progress=bar.attach,
                )
            else:
                stats = run_backfill(
                    args.source,
                    args.store or cfg.layout.backfill_store,
                    cfg.kafka.partitions if args.partitions is None else args.partitions,
                    store=cfg.store,
                    worker=cfg.worker,
                    events=cfg.events,
                    kafka=cfg.kafka,
                    connect=lambda: _connect(cfg, metrics, embedded=False),
                    samples_out=args.samples_out,
                    deadletters_out=args.deadletters_out,
                    from_ts=from_ts,
                    to_ts=to_ts,
                    cfg=rcfg,
                    metrics=metrics,
                    stop=stop,
                    progress=bar.attach,
                )
        except (ReplayError, FileExistsError, OSError) as exc:
            return fail("replay", exc, 2)
        except ProduceError as exc:
            return fail("replay", f"{exc}; run the same command again to resume")
        except BrokerError as exc:
            return fail("replay", exc)
        finally:
            bar.close()
    if args.json:
        print(orjson.dumps(stats.to_dict()).decode())
    else:
        print(stats.summary())
    return 0 if stats.complete else 130
