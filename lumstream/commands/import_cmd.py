"""`lumstream import`: MovieLens or any CSV / JSONL / Parquet log -> events.

    lumstream import movielens DIR --out events.jsonl[.gz|.parquet]
    lumstream import generic FILE --map user_id=uid,item_id=sku,ts=time --action click --out ...
    lumstream import movielens DIR --kafka        # produce to lum.events instead

Events are written in event-time order (a stable external merge sort; --presorted to
trust the input), with how disordered the input was, the impression -> positive delays
and a recommended label window, recorded beside an event log in ``<log>.meta.json``;
--negatives K adds sampled negative impressions for implicit-feedback logs. Bad rows are
printed as ``file:line: reason: detail`` (the first --show-bad of them) and
counted; the import carries on unless --strict. See docs/importers.md. The work is
:func:`streams.importers.run.run_import`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from lumstream.config import Config
    from streams.importers.rows import BadRow, WriteOptions
    from streams.importers.run import GenericInput, MovieLensInput

HELP = "import MovieLens ratings or a CSV/JSONL/Parquet log as events (to a file or Kafka)"
ROLE = "import"


def add_arguments(p: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    out = common.add_argument_group("output (one of)").add_mutually_exclusive_group(required=True)
    out.add_argument(
        "--out",
        type=Path,
        metavar="PATH",
        help="event log to write atomically: .jsonl, .ndjson, .jsonl.gz or .parquet",
    )
    out.add_argument(
        "--kafka",
        action="store_true",
        help="produce to the events topic (kafka.bootstrap_servers; empty = embedded broker)",
    )
    common.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first bad row (exit 1; no output file is left)",
    )
    common.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bar and no bad-row lines (the summary still prints)",
    )
    common.add_argument(
        "--show-bad",
        type=int,
        default=20,
        metavar="N",
        help="print the first N bad rows (default: 20); all are counted",
    )
    common.add_argument("--json", action="store_true", help="print the summary as JSON")
    order = common.add_argument_group("event-time order")
    order.add_argument(
        "--presorted",
        action="store_true",
        help="the input is already in event-time order: write it as it comes (its disorder "
        "is still reported); default: sort by event time (stable, external merge sort)",
    )
    order.add_argument(
        "--sort-run-events",
        type=int,
        default=500_000,
        metavar="N",
        help="events sorted in memory per run; more are spilled to run files (default 500000)",
    )
    order.add_argument(
        "--sort-tmp", metavar="DIR", help="where sorted runs are spilled (default: system temp)"
    )
    neg = common.add_argument_group("implicit feedback: sampled negative impressions")
    neg.add_argument(
        "--negatives",
        type=int,
        default=0,
        metavar="K",
        help="add K sampled impressions of other items with each interaction (click, "
        "purchase), marked features.sampled; for logs with no record of what was shown",
    )
    neg.add_argument(
        "--negative-mode",
        default="uniform",
        choices=("uniform", "popularity"),
        help="draw items uniformly or by interactions so far (default uniform)",
    )
    neg.add_argument("--negative-seed", type=int, default=0, metavar="S", help="seed (default 0)")
    neg.add_argument(
        "--negative-exclude-s",
        type=float,
        default=30 * 86_400.0,
        metavar="SEC",
        help="never draw an item the user interacted with within SEC either side "
        "(default 30 days; 'inf': ever, keeps the log in memory)",
    )
    neg.add_argument(
        "--impress-interactions",
        action="store_true",
        help="also add an impression of each interacted item just before it (logs of "
        "interactions only, e.g. purchases), so the interaction labels a sample 1",
    )

    sub = p.add_subparsers(dest="importer", metavar="IMPORTER", required=True)
    ml = sub.add_parser(
        "movielens",
        parents=[common],
        help="MovieLens ratings (latest/20M/25M, 1M/10M, 100K)",
        description="One impression per rating (condition = the movie's first genre, event "
        "time = rating time) plus a click 1 ms later when rating >= --click-threshold.",
    )
    ml.add_argument(
        "directory",
        type=Path,
        metavar="DIR",
        help="directory with ratings.csv+movies.csv, ratings.dat+movies.dat or u.data+u.item",
    )
    ml.add_argument(
        "--click-threshold",
        type=float,
        default=4.0,
        metavar="R",
        help="ratings >= R add a click (default: 4.0)",
    )

    g = sub.add_parser(
        "generic",
        parents=[common],
        help="a CSV/TSV, JSONL or Parquet log with a column mapping",
        description="Map input columns to event fields; rows are imported in input order.",
    )
    g.add_argument(
        "file",
        type=Path,
        metavar="FILE",
        help=".csv/.tsv, .jsonl/.ndjson (optionally .gz) or .parquet",
    )
    g.add_argument(
        "--map",
        required=True,
        dest="columns",
        metavar="FIELD=COL,...",
        help="user_id=COL,item_id=COL,ts=COL[,action=COL,condition=COL,"
        "event_id=COL,category=COL,features.NAME=COL]",
    )
    g.add_argument(
        "--action-map",
        metavar="VALUE=ACTION,...",
        help="map input action values, e.g. 'view=impression,cart=click,buy=click'",
    )
    g.add_argument(
        "--drop-unmapped",
        action="store_true",
        help="skip rows whose action is not in --action-map (default: bad row)",
    )
    g.add_argument(
        "--ts-unit",
        default="ms",
        metavar="s|ms|iso",
        help="unit of the ts column: s, ms (default) or iso (ISO 8601; no offset = UTC)",
    )
    g.add_argument(
        "--action", metavar="ACTION", help="the action of every row when no action column is mapped"
    )
    g.add_argument(
        "--condition",
        default="default",
        metavar="VALUE",
        help="condition when no condition column is mapped or the cell is empty "
        "(default: 'default')",
    )
    g.add_argument(
        "--format",
        dest="fmt",
        metavar="csv|jsonl|parquet",
        help="input format (default: from the file name)",
    )
    g.add_argument(
        "--delimiter", default=",", help="CSV field separator (default ','; .tsv files use tab)"
    )
    g.add_argument("--encoding", default="utf-8", help="CSV text encoding (default utf-8)")


def _bad_printer(args: argparse.Namespace) -> Callable[[BadRow], None]:
    from tqdm import tqdm

    shown = 0

    def on_bad(bad: BadRow) -> None:
        nonlocal shown
        if args.quiet:
            return
        if shown < args.show_bad:
            tqdm.write(str(bad), file=sys.stderr)
        elif shown == args.show_bad:
            tqdm.write("... more bad rows are counted, not printed (--show-bad N)", file=sys.stderr)
        shown += 1

    return on_bad


def _input(args: argparse.Namespace) -> MovieLensInput | GenericInput:
    """What to import, from the flags; ImportSetupError names a bad one."""
    from streams.importers.run import GenericInput, MovieLensInput

    if args.importer == "movielens":
        return MovieLensInput(args.directory, click_threshold=args.click_threshold)
    from streams.importers.generic import ColumnMap, GenericOptions, parse_action_map

    opts = GenericOptions(
        columns=ColumnMap.parse(args.columns),
        ts_unit=args.ts_unit,
        action_map=parse_action_map(args.action_map) if args.action_map else None,
        drop_unmapped=args.drop_unmapped,
        action=args.action,
        condition=args.condition,
        fmt=args.fmt,
        delimiter=args.delimiter,
        encoding=args.encoding,
    )
    return GenericInput(args.file, opts)


def _write_options(args: argparse.Namespace) -> WriteOptions:
    """Ordering and sampling from the flags; ImportSetupError names a bad one."""
    from streams.importers.negatives import NegativeSampling
    from streams.importers.rows import ImportSetupError, WriteOptions

    if args.sort_run_events < 1:
        raise ImportSetupError(f"--sort-run-events {args.sort_run_events}: expected >= 1")
    if args.negatives < 0:
        raise ImportSetupError(f"--negatives {args.negatives}: expected K >= 0")
    negatives = None
    if args.negatives:
        try:
            negatives = NegativeSampling(
                k=args.negatives,
                mode=args.negative_mode,
                seed=args.negative_seed,
                exclude_s=args.negative_exclude_s,
                impress_interactions=args.impress_interactions,
            )
        except ValueError as exc:
            raise ImportSetupError(str(exc)) from None
    elif args.impress_interactions:
        raise ImportSetupError("--impress-interactions goes with --negatives K")
    return WriteOptions(
        presorted=args.presorted,
        run_events=args.sort_run_events,
        tmp_dir=args.sort_tmp,
        negatives=negatives,
    )


def run(cfg: Config, args: argparse.Namespace) -> int:
    import functools

    import orjson

    from core.signals import stop_on_signals
    from lumstream.cluster import cluster
    from lumstream.commands.base import fail, serving_metrics
    from streams.importers.rows import ImportAborted, ImportInterrupted, ImportSetupError
    from streams.importers.run import run_import
    from streams.kafka.broker import BrokerError
    from streams.kafka.producer import ProduceError

    with serving_metrics(cfg, ROLE) as (metrics, _), stop_on_signals() as stop:
        import_into = functools.partial(
            run_import,
            metrics=metrics,
            strict=args.strict,
            on_bad=_bad_printer(args),
            progress=not args.quiet,
            stop=stop,
        )
        try:
            what = _input(args)
            import_into = functools.partial(import_into, write=_write_options(args))
            if not args.kafka:
                stats = import_into(what, cfg.events, out=args.out)
            else:
                with cluster(cfg, metrics, note_if_embedded=True) as bootstrap:
                    stats = import_into(what, cfg.events, kafka=cfg.kafka, bootstrap=bootstrap)
        except (ImportSetupError, OSError) as exc:
            return fail("import", exc, 2)
        except (ImportAborted, BrokerError, ProduceError) as exc:
            return fail("import", exc)
        except ImportInterrupted as exc:
            kept = f"they are in {cfg.kafka.topic_events}" if args.kafka else "no log written"
            return fail("import", f"{exc}; {kept}", 130)
    where = f"topic {cfg.kafka.topic_events}" if args.kafka else str(args.out)
    if args.json:
        print(orjson.dumps({**stats.to_dict(), "out": where}).decode())
    else:
        print(f"{stats.summary()}\n  output: {where}")
    return 0
