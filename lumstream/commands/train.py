"""``lumstream train``: keep the CTR ranker fresh from lum.samples, or train on history.

Live (default): consumes ``kafka.topic_samples`` until Ctrl-C/SIGTERM, scoring each batch
before learning it, checkpointing on the ``ranker.checkpoint_every_*`` cadence, publishing
every checkpoint as a ranker version and announcing it on ``kafka.topic_model_updates``.
A restart resumes from the newest valid checkpoint.

Replay: ``--replay FROM..TO`` (ISO dates/times or epoch ms, either side may be empty)
reads the samples of that event-time range once, trains ``--epochs K`` epochs
(``--mode sparse_reset`` or ``naive``), then checkpoints and publishes.

``--samples-file`` reads a file of length-prefixed sample blocks instead of Kafka. Several
processes: ``torchrun --nproc-per-node N -m lumstream.cli train ...`` (gloo on CPU); rank 0
reads and broadcasts, the tables are sharded over all ranks.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lumstream.config import Config

HELP = "train the ranker on lum.samples (progressive validation, checkpoints, versions)"
log = logging.getLogger(__name__)
_OUR_LOGGERS = ("lumstream", "trainer", "embeddings", "streams", "monitoring")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--replay", metavar="FROM..TO", help="train on this event-time range, then stop")
    p.add_argument("--epochs", type=int, default=1, metavar="K", help="epochs of a replay")
    p.add_argument(
        "--mode",
        choices=("sparse_reset", "naive"),
        default="sparse_reset",
        help="multi-epoch mode of a replay (default: sparse_reset)",
    )
    p.add_argument(
        "--inherit",
        action="store_true",
        help="replay: start from the newest checkpoint (its tables are θ_s^(0))",
    )
    p.add_argument("--samples-file", metavar="PATH", help="read this sample file, not Kafka")
    p.add_argument("--vectors", metavar="DIR", help="LUM vector sets (default: ranker.vectors_dir)")
    p.add_argument("--max-batches", type=int, metavar="N", help="stop after N batches")
    p.add_argument("--threads", type=int, default=0, metavar="N", help="torch threads (0: default)")


def parse_range(text: str) -> tuple[int, int]:
    """``FROM..TO`` -> (from ms, to ms); an empty side is unbounded.

    Example:
        >>> parse_range("2018-01-01..")[0]
        1514764800000
    """
    lo, sep, hi = text.partition("..")
    if not sep:
        raise ValueError(f"--replay {text!r}: expected FROM..TO")
    return (_ms(lo) if lo else 0, _ms(hi) if hi else 2**63 - 1)


def _ms(text: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--replay: {text!r} is neither epoch ms nor an ISO date/time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def _configure_logging() -> None:
    """This project's INFO lines (others' warnings) on stderr, tagged with the rank under
    torchrun.

    Called before the ranker's imports: importing fbgemm_gpu logs through the root logger,
    which configures it (without the format) when nothing did before.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    tag = f"rank {os.environ.get('RANK', '?')} " if world > 1 else ""
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s {tag}%(name)s %(message)s")
    for name in _OUR_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)


def run(cfg: Config, args: argparse.Namespace) -> int:
    """Under torchrun (``WORLD_SIZE`` > 1) inside a gloo process group, which every rank
    leaves together once it is done: a rank whose peer tore its group down first could
    abort in gloo's destructor and exit non-zero after all its work was saved."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return _run(cfg, args)
    dist.init_process_group("gloo")
    code = _run(cfg, args)
    # Only after a success, which every rank reaches together: a rank that failed (an
    # exception, or a refusal such as a missing vector set) may leave its peers inside a
    # collective, where a barrier would wait for the gloo timeout; it exits instead, and
    # torchrun stops the others.
    if code == 0:
        dist.barrier()
        dist.destroy_process_group()
    return code


def _run(cfg: Config, args: argparse.Namespace) -> int:
    _configure_logging()
    import torch

    from embeddings.config import EmbeddingsConfig
    from monitoring.metrics import default_metrics
    from monitoring.server import serve_metrics
    from trainer.ranker.checkpoint import Checkpointer
    from trainer.ranker.config import RankerConfig
    from trainer.ranker.distributed import world
    from trainer.ranker.engine import RankerEngine
    from trainer.vectors.sets import VectorsWatcher

    if args.threads:
        torch.set_num_threads(args.threads)
    rank, _ = world()
    rcfg: RankerConfig = cfg.ranker
    ecfg: EmbeddingsConfig = cfg.embeddings
    ckpt_dir, versions = cfg.layout.ranker_checkpoints, cfg.layout.ranker_versions
    vec_root = Path(args.vectors) if args.vectors else cfg.layout.vector_sets
    metrics = default_metrics()
    watcher = None
    lum_dim, lum_n = 1, 1
    if rcfg.lum_features != "off":
        watcher = VectorsWatcher(vec_root, rcfg.vectors_poll_s, metrics)
        if watcher.current is None:
            print(
                f"lumstream train: no LUM vector set under {vec_root}; publish backbone vectors "
                "there, pass --vectors, or set ranker.lum_features=off",
                file=sys.stderr,
            )
            return 2
        lum_dim, lum_n = watcher.current.dim, watcher.current.n_conditions
    server = serve_metrics(cfg.metrics, metrics.registry) if rank == 0 else None
    try:
        engine = RankerEngine(rcfg, ecfg, lum_dim, lum_n, metrics=metrics)
        checkpointer = Checkpointer(ckpt_dir, rcfg.keep_checkpoints, metrics)
        return _with_source(cfg, args, engine, checkpointer, watcher, versions, metrics)
    finally:
        if server is not None:
            server.close()


def _with_source(
    cfg: Config,
    args: argparse.Namespace,
    engine: Any,
    checkpointer: Any,
    watcher: Any,
    versions: Path,
    metrics: Any,
) -> int:
    from trainer.ranker.distributed import world
    from trainer.ranker.source import SampleFileSource

    rank, _ = world()
    replay = args.replay is not None or args.epochs > 1
    if args.samples_file or rank != 0:
        source: Any = SampleFileSource(args.samples_file) if rank == 0 else None
        return _train(cfg, args, engine, checkpointer, watcher, versions, metrics, source, None)
    from lumstream.cluster import cluster
    from streams.kafka.consumer import PositionedConsumer, end_offsets
    from streams.kafka.producer import make_producer
    from streams.kafka.topics import ensure_topics

    with cluster(cfg, metrics) as bootstrap:
        ensure_topics(cfg.kafka, bootstrap)
        ranker_cfg = cfg.ranker
        ends = end_offsets(cfg.kafka, bootstrap, cfg.kafka.topic_samples) if replay else None
        source = PositionedConsumer(
            cfg.kafka, bootstrap, cfg.kafka.topic_samples, start=ranker_cfg.start, stop_at=ends
        )
        producer = make_producer(cfg.kafka, bootstrap, metrics=metrics)
        try:

            def send(key: bytes, value: bytes) -> None:
                producer.send(cfg.kafka.topic_model_updates, key, value)
                producer.flush()

            return _train(cfg, args, engine, checkpointer, watcher, versions, metrics, source, send)
        finally:
            source.close()
            producer.close()


def _train(
    cfg: Config,
    args: argparse.Namespace,
    engine: Any,
    checkpointer: Any,
    watcher: Any,
    versions: Path,
    metrics: Any,
    source: Any,
    send: Any,
) -> int:
    from trainer.ranker.checkpoint import announce
    from trainer.ranker.distributed import world
    from trainer.ranker.loop import StreamingTrainer

    rank, _ = world()
    rcfg = cfg.ranker

    def announcer(path: Path, extra: dict[str, Any]) -> None:
        if send is not None:
            announce(send, path, extra)
        print(f"published ranker version {path}", file=sys.stderr, flush=True)

    ts_range = parse_range(args.replay) if args.replay else None
    loop = StreamingTrainer(
        rcfg,
        engine,
        source,
        vectors=watcher,
        checkpointer=checkpointer,
        versions_dir=versions if rcfg.publish else None,
        announce=announcer,
        metrics=metrics,
        ts_range=ts_range,
    )
    if args.replay is not None or args.epochs > 1:
        return _replay(args, loop, metrics, ts_range)
    resumed = loop.resume()
    if rank == 0:
        start = f"resumed at {engine.samples_learned} samples" if resumed else "fresh"
        print(
            f"train: {start}, checkpoints {checkpointer.root}, versions {versions}",
            file=sys.stderr,
            flush=True,
        )
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    stats = loop.run(stop, max_batches=args.max_batches)
    if rank == 0:
        w = stats.window
        print(
            f"train: {stats.batches:,} batches, {stats.samples:,} samples in {stats.seconds:.1f} s"
            + (f"; window auc {w['auc']:.4f} gauc {w['gauc']:.4f}" if w else ""),
            file=sys.stderr,
        )
    return 0


def _replay(
    args: argparse.Namespace, loop: Any, metrics: Any, ts_range: tuple[int, int] | None
) -> int:
    from trainer.ranker.multi_epoch import collect, train_epochs

    if args.inherit and loop.resume() and loop.source is not None:
        loop.source.seek({})  # the replay reads its range from the start
    samples = collect(loop.source, ts_range, metrics)
    if not len(samples):  # the same on every rank
        if loop.rank == 0:
            print("train --replay: no samples in the range", file=sys.stderr)
        return 1
    loop.assembler.learned(samples)
    results = train_epochs(
        loop.engine, samples, None, mode=args.mode, epochs=args.epochs, vectors=loop.vectors
    )
    loop.stats.backbone_versions = [[0, loop.vectors.version if loop.vectors else None]]
    loop.watermark = int(samples.rows["ts"].max())
    loop.assembler = type(loop.assembler)(loop.assembler.learned_hwm, {}, metrics)
    loop.checkpoint()
    if loop.rank == 0:
        for r in results:
            print(
                f"epoch {r.epoch}: progressive auc {r.train['auc']:.4f} gauc {r.train['gauc']:.4f}",
                file=sys.stderr,
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m lumstream.commands.train`` (the same as ``lumstream train``)."""
    from lumstream.cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
