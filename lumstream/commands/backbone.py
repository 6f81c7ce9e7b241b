"""``lumstream backbone train|refresh|eval|versions``: the LUM generative backbone.

- ``train``: pre-train on the sequence store (or ``--log FILE`` for offline work), hold
  out each user's last event for evaluation, publish the next version ``vN``.
- ``refresh``: forever on ``refresh.cadence_s`` (or ``--once``): warm-start from the last
  version on the data since its watermark, publish, recompute the condition-query vectors
  (changed users first) into the vector store; in between, every
  ``refresh.incremental_every_s``, recompute the users whose sequences grew. Serves
  /metrics (not ``--once``).
- ``eval``: leave-last-out retrieval metrics of a version (HR@10, NDCG@10, MRR) next to
  the popularity baseline, on the store or an event log.
- ``versions``: the published versions and their manifests.

The work is ``trainer.backbone``'s (``refresh.train_fresh``, ``refresh.refresh_once``,
``refresh.run_forever``, ``eval.evaluate_version``, ``versions.find_version`` and
``versions.list_versions``); this module parses, prints and chooses the exit code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lumstream.config import Config
    from monitoring.metrics import Metrics
    from trainer.backbone.refresh import RefreshPaths, RefreshResult

HELP = "the LUM backbone: train, refresh forever (versions + condition-query vectors), eval"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    train = sub.add_parser("train", help="pre-train on the store (or --log) and publish vN")
    train.add_argument("--log", metavar="FILE", help="an event log instead of the store")
    refresh = sub.add_parser("refresh", help="fine-tune, publish, write vectors; repeat")
    refresh.add_argument("--once", action="store_true", help="one refresh, then exit")
    refresh.add_argument(
        "--retrain",
        action="store_true",
        help="train the first refresh from scratch instead of warm-starting",
    )
    ev = sub.add_parser("eval", help="retrieval metrics of a version (default: the newest)")
    ev.add_argument("--version", metavar="vN", help="which version (default: the newest)")
    ev.add_argument("--log", metavar="FILE", help="an event log instead of the store")
    sub.add_parser("versions", help="list the published versions")


def paths(cfg: Config) -> RefreshPaths:
    """Where the backbone reads and writes, from ``cfg.layout``."""
    from trainer.backbone.refresh import RefreshPaths

    layout = cfg.layout
    return RefreshPaths(
        store=layout.store,
        versions=layout.backbone_versions,
        vectors=layout.vector_store,
    )


def run(cfg: Config, args: argparse.Namespace) -> int:
    from core.durable import VersionError
    from lumstream.commands.base import fail
    from streams.worker.store import StoreError
    from trainer.vectors.layout import LayoutError
    from trainer.vectors.store import VectorStoreError

    action = {"train": _train, "refresh": _refresh, "eval": _eval, "versions": _versions}
    try:
        return action[args.action](cfg, args, paths(cfg))
    except (StoreError, VersionError, FileNotFoundError, VectorStoreError) as exc:
        # no store (or a locked one), no event log, a missing or corrupt version, the
        # vector store held by another refresh
        return fail("backbone", exc)
    except LayoutError as exc:  # the vector store's contract with its consumers
        return fail("backbone", f"refresh refused, the vector layout would break: {exc}")


def _log(args: argparse.Namespace) -> Path | None:
    return Path(args.log) if args.log else None


def _train(cfg: Config, args: argparse.Namespace, where: RefreshPaths) -> int:
    from lumstream.commands.base import fail
    from monitoring.metrics import default_metrics
    from trainer.backbone.data import read_sequences
    from trainer.backbone.refresh import train_fresh

    metrics = default_metrics()
    source = read_sequences(where.store, cfg.store, cfg.events, log=_log(args), metrics=metrics)
    result = train_fresh(cfg.backbone, cfg.refresh, cfg.events, source, where.versions, metrics)
    if result.version is None:
        return fail("backbone", result.reason)
    print(
        f"published {result.version.name} at {result.version.path} "
        f"({result.users_trained:,} users, {result.version.manifest['param_count']:,} "
        f"parameters; previous: {result.previous or 'none'})"
    )
    _print_metrics(result.metrics or {})
    return 0


def _refresh(cfg: Config, args: argparse.Namespace, where: RefreshPaths) -> int:
    from lumstream.commands.base import serving_metrics
    from monitoring.metrics import default_metrics

    if args.once:
        return _refresh_once(cfg, args, where, default_metrics())
    from core.signals import stop_on_signals
    from trainer.backbone.refresh import run_forever

    notice = "backbone refresh: stopping after the refresh in progress (again: abort)"
    with (
        serving_metrics(cfg, "backbone") as (metrics, _),
        stop_on_signals(notice) as stop,
    ):
        every = cfg.refresh.incremental_every_s
        incremental = f", changed users' vectors every {every:g} s" if every > 0 else ""
        print(
            f"refreshing every {cfg.refresh.cadence_s:.0f} s{incremental} (Ctrl-C stops)",
            file=sys.stderr,
        )
        run_forever(
            cfg.backbone,
            cfg.refresh,
            cfg.store,
            cfg.events,
            where,
            metrics,
            stop,
            retrain=args.retrain,
            on_refresh=_report,
        )
    return 0


def _refresh_once(
    cfg: Config, args: argparse.Namespace, where: RefreshPaths, metrics: Metrics
) -> int:
    from trainer.backbone.refresh import refresh_once

    result = refresh_once(
        cfg.backbone, cfg.refresh, cfg.store, cfg.events, where, metrics, retrain=args.retrain
    )
    _report(result)
    return 0


def _report(result: RefreshResult) -> None:
    if result.version is None:
        print(f"refresh: nothing to do ({result.reason})", flush=True)
        return
    print(
        f"refresh: published {result.version.name} in {result.seconds:.1f} s: "
        f"{result.users_trained:,} users trained, {result.vectors_written:,} users' "
        f"vectors written",
        flush=True,
    )
    _print_metrics(result.metrics or {})


def _print_metrics(metrics: dict[str, float]) -> None:
    print("  " + "  ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())), flush=True)


def _eval(cfg: Config, args: argparse.Namespace, where: RefreshPaths) -> int:
    from monitoring.metrics import default_metrics
    from trainer.backbone.data import read_sequences
    from trainer.backbone.eval import evaluate_version
    from trainer.backbone.versions import find_version

    version = find_version(where.versions, args.version)  # before reading a whole store
    source = read_sequences(
        where.store, cfg.store, cfg.events, log=_log(args), metrics=default_metrics()
    )
    ev = evaluate_version(version, source, cfg.events)
    print(
        f"{ev.version.name} ({ev.objective}, {ev.version.manifest['param_count']:,} parameters) "
        f"on {ev.users:,} users, leave-last-out, full ranking, history excluded"
    )
    print(f"  {'model':<12} {'hr@10':>8} {'ndcg@10':>8} {'mrr':>8}")
    for name, m in (("backbone", ev.backbone), ("popularity", ev.popularity)):
        print(f"  {name:<12} {m['hr@10']:>8.4f} {m['ndcg@10']:>8.4f} {m['mrr']:>8.4f}")
    return 0


def _versions(cfg: Config, args: argparse.Namespace, where: RefreshPaths) -> int:
    from trainer.backbone.versions import list_versions

    versions = list_versions(where.versions)
    if not versions:
        print(f"no versions under {where.versions}")
        return 0
    print(
        f"{'version':<8} {'created (UTC)':<21} {'parent':<7} {'params':>10} "
        f"{'data watermark':>15}  metrics"
    )
    for v in versions:
        m = v.manifest
        metrics = " ".join(f"{k}={val:.4f}" for k, val in sorted(m.get("metrics", {}).items()))
        print(
            f"{v.name:<8} {m.get('created_at', '?'):<21} {m.get('parent') or '-':<7} "
            f"{m.get('param_count', 0):>10,} {m.get('data_watermark', 0):>15}  {metrics}"
        )
    return 0
