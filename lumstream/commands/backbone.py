"""``lumstream backbone train|refresh|eval|versions``: the LUM generative backbone.

- ``train``: pre-train on the sequence store (or ``--log FILE`` for offline work), hold
  out each user's last event for evaluation, publish the next version ``vN``.
- ``refresh``: forever on ``refresh.cadence_s`` (or ``--once``): warm-start from the last
  version on the data since its watermark, publish, recompute the condition-query vectors
  (changed users first) into the vector store and lum.cq. Serves /metrics.
- ``eval``: leave-last-out retrieval metrics of a version (HR@10, NDCG@10, MRR) next to
  the popularity baseline, on the store or an event log.
- ``versions``: the published versions and their manifests.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lumstream.config import Config
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


def _paths(cfg: Config) -> RefreshPaths:
    from trainer.backbone.refresh import RefreshPaths

    layout = cfg.layout
    return RefreshPaths(
        store=layout.store,
        versions=layout.backbone_versions,
        vectors=layout.vector_store,
        vector_sets=layout.vector_sets,
    )


def run(cfg: Config, args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    paths = _paths(cfg)
    action = {"train": _train, "refresh": _refresh, "eval": _eval, "versions": _versions}
    try:
        return action[args.action](cfg, args, paths)
    except Exception as exc:  # store missing/locked, corrupt version: one clear line
        from streams.worker.store import StoreError
        from trainer.backbone.versions import VersionError

        if isinstance(exc, StoreError | VersionError | FileNotFoundError):
            print(f"lumstream backbone: {exc}", file=sys.stderr)
            return 1
        raise


def _source(cfg: Config, log: str | None, scratch: Path) -> tuple[object, object]:
    """(SequenceSource, something to close or None)."""
    from monitoring.metrics import default_metrics
    from streams.worker.store import StoreReader
    from trainer.backbone.data import EventLogSequences

    if log:
        return EventLogSequences(log, cfg.events, default_metrics()), None
    if not cfg.layout.store.is_dir():
        raise FileNotFoundError(
            f"no sequence store at {cfg.layout.store} (run `lumstream worker`, or pass --log FILE)"
        )
    reader = StoreReader(cfg.layout.store, cfg.store, scratch)
    reader.refresh()
    return reader, reader


def _train(cfg: Config, args: argparse.Namespace, paths: RefreshPaths) -> int:
    import tempfile

    from monitoring.metrics import default_metrics
    from trainer.backbone.data import MemorySequences
    from trainer.backbone.refresh import train_version
    from trainer.backbone.versions import latest

    with tempfile.TemporaryDirectory(prefix="lumstream-train-") as scratch:
        source, closer = _source(cfg, args.log, Path(scratch))
        try:
            snapshot = MemorySequences(dict(source.sequences()))  # type: ignore[attr-defined]
        finally:
            if closer is not None:
                closer.close()  # type: ignore[attr-defined]
    parent = latest(paths.versions)
    done = train_version(
        cfg.backbone,
        cfg.refresh,
        cfg.events,
        snapshot,
        paths.versions,
        default_metrics(),
        init=None,
        watermark=snapshot.watermark(),
    )
    if done is None:
        print("lumstream backbone: no user has two events of the sequence actions", file=sys.stderr)
        return 1
    info, _, users = done
    print(
        f"published {info.name} at {info.path} ({users:,} users, "
        f"{info.manifest['param_count']:,} parameters; previous: "
        f"{parent.name if parent else 'none'})"
    )
    _print_metrics(info.manifest["metrics"])
    return 0


def _refresh(cfg: Config, args: argparse.Namespace, paths: RefreshPaths) -> int:
    from monitoring.metrics import default_metrics
    from monitoring.server import serve_metrics
    from streams.kafka.broker import running_broker
    from streams.kafka.producer import Producer
    from trainer.backbone.refresh import refresh_once, run_forever

    metrics = default_metrics()
    server = serve_metrics(cfg.metrics, metrics.registry) if not args.once else None
    bootstrap = cfg.kafka.bootstrap_servers or running_broker(cfg.layout.broker_run_file)
    producer = None
    if cfg.refresh.publish_cq and bootstrap:
        producer = Producer(cfg.kafka, bootstrap, metrics=metrics)
    elif cfg.refresh.publish_cq:
        print(
            "note: no Kafka cluster configured and no `lumstream broker` running: vectors "
            "go to the vector store only, not to lum.cq",
            file=sys.stderr,
        )

    def cq(records: list[tuple[bytes, bytes]]) -> None:
        assert producer is not None
        producer.send_many(cfg.kafka.topic_cq, records, source="backbone")
        producer.flush()

    sink = cq if producer is not None else None
    try:
        if args.once:
            result = refresh_once(
                cfg.backbone,
                cfg.refresh,
                cfg.store,
                cfg.events,
                paths,
                metrics,
                cq=sink,
                retrain=args.retrain,
            )
            _report(result)
            return 0
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        print(f"refreshing every {cfg.refresh.cadence_s:.0f} s (Ctrl-C stops)", file=sys.stderr)
        run_forever(
            cfg.backbone,
            cfg.refresh,
            cfg.store,
            cfg.events,
            paths,
            metrics,
            stop,
            cq=sink,
            retrain=args.retrain,
            on_refresh=_report,
        )
        return 0
    finally:
        if producer is not None:
            producer.close()
        if server is not None:
            server.close()


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


def _eval(cfg: Config, args: argparse.Namespace, paths: RefreshPaths) -> int:
    import tempfile

    from trainer.backbone.data import action_indices, prepare
    from trainer.backbone.eval import evaluate, leave_last_out, popularity
    from trainer.backbone.versions import latest, load_model, read_manifest

    info = read_manifest(paths.versions / args.version) if args.version else latest(paths.versions)
    if info is None:
        print(f"lumstream backbone: no versions under {paths.versions}", file=sys.stderr)
        return 1
    model = load_model(info.path)
    with tempfile.TemporaryDirectory(prefix="lumstream-eval-") as scratch:
        source, closer = _source(cfg, args.log, Path(scratch))
        try:
            pairs, _ = prepare(
                source,  # type: ignore[arg-type]
                action_indices(model.cfg.sequence_actions, cfg.events),
            )
        finally:
            if closer is not None:
                closer.close()  # type: ignore[attr-defined]
    history, held = leave_last_out(pairs, model.cfg.condition_fields)
    print(
        f"{info.name} ({model.cfg.objective}, {info.manifest['param_count']:,} parameters) "
        f"on {len(history):,} users, leave-last-out, full ranking, history excluded"
    )
    print(f"  {'model':<12} {'hr@10':>8} {'ndcg@10':>8} {'mrr':>8}")
    for name, m in (("backbone", evaluate(model, held)), ("popularity", popularity(history, held))):
        print(f"  {name:<12} {m['hr@10']:>8.4f} {m['ndcg@10']:>8.4f} {m['mrr']:>8.4f}")
    return 0


def _versions(cfg: Config, args: argparse.Namespace, paths: RefreshPaths) -> int:
    from trainer.backbone.versions import list_versions

    versions = list_versions(paths.versions)
    if not versions:
        print(f"no versions under {paths.versions}")
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
