"""``lumstream train``: keep the CTR ranker fresh from lum.samples, or train on history.

Live (default): consumes ``kafka.topic_samples`` until Ctrl-C/SIGTERM, scoring each batch
before learning it, checkpointing on the ``ranker.checkpoint_every_*`` cadence, publishing
every checkpoint as a ranker version and announcing it on ``kafka.topic_model_updates``.
A restart resumes from the newest valid checkpoint.

Replay: ``--replay [--from TIME] [--to TIME]`` (ms since the epoch or ISO 8601, ``--to``
exclusive, either side may be left out) reads the samples of that event-time range once,
trains ``--epochs K`` epochs (``--epoch-mode sparse_reset`` or ``naive``), then
checkpoints and publishes.

``--samples-file`` reads a file of length-prefixed sample blocks instead of Kafka. Several
processes: ``torchrun --nproc-per-node N -m lumstream.cli train ...`` (gloo on CPU); rank 0
reads and broadcasts, the tables are sharded over all ranks.

The work is :class:`trainer.ranker.job.RankerJob`'s; this module parses, finds the
cluster, prints and chooses the exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lumstream.config import Config
    from monitoring.metrics import Metrics
    from trainer.ranker.job import JobResult, TrainPlan

HELP = "train the ranker on lum.samples (progressive validation, checkpoints, versions)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--replay",
        action="store_true",
        help="train on the samples of --from/--to (--epochs K), publish once, then stop",
    )
    p.add_argument(
        "--from",
        dest="time_from",
        metavar="TIME",
        help="replay: first event time, ms since the epoch or ISO 8601 (default: the oldest)",
    )
    p.add_argument(
        "--to",
        dest="time_to",
        metavar="TIME",
        help="replay: event time to stop before (exclusive; default: the newest)",
    )
    p.add_argument("--epochs", type=int, default=1, metavar="K", help="epochs of a replay")
    p.add_argument(
        "--epoch-mode",
        choices=("sparse_reset", "naive"),
        help="multi-epoch mode of a replay (default: sparse_reset)",
    )
    p.add_argument(
        "--inherit",
        action="store_true",
        help="replay: start from the newest checkpoint (its tables are θ_s^(0))",
    )
    p.add_argument("--samples-file", metavar="PATH", help="read this sample file, not Kafka")
    p.add_argument(
        "--vectors",
        metavar="DIR",
        help="the LUM vector store (default: refresh.vector_store_dir, else <data_dir>/vectors)",
    )
    p.add_argument("--max-batches", type=int, metavar="N", help="live: stop after N batches")
    p.add_argument("--threads", type=int, default=0, metavar="N", help="torch threads (0: default)")


def plan(cfg: Config, args: argparse.Namespace) -> TrainPlan:
    """The run the arguments ask for.

    Raises:
        ValueError: arguments that do not go together, or a bad time (one line).
    """
    from core.times import time_range
    from trainer.ranker.job import Replay, TrainPlan

    if args.epochs < 1:
        raise ValueError(f"--epochs {args.epochs}: must be at least 1")
    replay = None
    if args.replay:
        if args.max_batches is not None:
            raise ValueError("--max-batches is for live training; a replay reads its whole range")
        replay = Replay(
            time_range(args.time_from, args.time_to),
            args.epochs,
            args.epoch_mode or "sparse_reset",
            args.inherit,
        )
    else:
        given = [
            flag
            for flag, on in (
                (f"--epochs {args.epochs}", args.epochs > 1),
                ("--epoch-mode", args.epoch_mode is not None),
                ("--from", args.time_from is not None),
                ("--to", args.time_to is not None),
                ("--inherit", args.inherit),
            )
            if on
        ]
        if given:
            verb = "needs" if len(given) == 1 else "need"
            raise ValueError(
                f"{', '.join(given)} {verb} --replay (live training learns each sample once, "
                "resuming from the newest checkpoint)"
            )
    layout = cfg.layout
    return TrainPlan(
        checkpoints=layout.ranker_checkpoints,
        versions=layout.ranker_versions,
        vector_store=Path(args.vectors) if args.vectors else layout.vector_store,
        lum_dim=cfg.backbone.dim,
        lum_capacity=cfg.refresh.condition_capacity,
        samples_file=Path(args.samples_file) if args.samples_file else None,
        replay=replay,
        max_batches=args.max_batches,
        threads=args.threads,
    )


def run(cfg: Config, args: argparse.Namespace) -> int:
    """Under torchrun (``WORLD_SIZE`` > 1) inside a gloo process group
    (:func:`trainer.ranker.distributed.in_torchrun_group`)."""
    from lumstream.commands.base import fail

    try:
        job_plan = plan(cfg, args)
    except ValueError as exc:  # core.times.TimeError is one
        return fail("train", exc, 2)
    from trainer.ranker.distributed import in_torchrun_group

    return in_torchrun_group(lambda: _train(cfg, job_plan))


@contextlib.contextmanager
def _metrics(cfg: Config, rank: int) -> Iterator[Metrics]:
    """The process metrics; rank 0 serves them on /metrics."""
    from lumstream.commands.base import serving_metrics
    from monitoring.metrics import default_metrics

    if rank != 0:
        yield default_metrics()
        return
    with serving_metrics(cfg, "trainer") as (metrics, _):
        yield metrics


def _train(cfg: Config, job_plan: TrainPlan) -> int:
    from core.signals import stop_on_signals
    from lumstream.cluster import cluster
    from lumstream.commands.base import fail
    from trainer.ranker.distributed import world
    from trainer.ranker.job import RankerJob, TrainRefused

    def started(resumed_at: int | None) -> None:
        start = "fresh" if resumed_at is None else f"resumed at {resumed_at} samples"
        print(
            f"train: {start}, checkpoints {job_plan.checkpoints}, versions {job_plan.versions}",
            file=sys.stderr,
            flush=True,
        )

    def published(path: Path) -> None:
        print(f"published ranker version {path}", file=sys.stderr, flush=True)

    rank, _ = world()
    with _metrics(cfg, rank) as metrics:
        try:
            job = RankerJob(
                cfg.ranker,
                cfg.embeddings,
                cfg.kafka,
                job_plan,
                metrics,
                drift=cfg.drift,
                on_start=started,
                on_publish=published,
            )
        except TrainRefused as exc:
            return fail("train", exc, 2)
        with contextlib.ExitStack() as stack:
            stack.callback(job.close)
            bootstrap = stack.enter_context(cluster(cfg, metrics)) if job.reads_kafka else None
            stop = None
            if job_plan.replay is None:
                notice = "train: stopping after this batch (again: abort)"
                stop = stack.enter_context(stop_on_signals(notice))
            result = job.run(bootstrap, stop)
    return _report(result, job_plan)


def _report(result: JobResult, job_plan: TrainPlan) -> int:
    from lumstream.commands.base import fail

    if job_plan.replay is not None:
        if not result.epochs:  # the same on every rank
            return fail("train", "--replay: no samples in the range", 1) if result.lead else 1
        if result.lead:
            for r in result.epochs:
                print(
                    f"epoch {r.epoch}: progressive auc {r.train['auc']:.4f} "
                    f"gauc {r.train['gauc']:.4f}",
                    file=sys.stderr,
                )
        return 0
    if result.lead:
        stats, w = result.stats, result.stats.window
        print(
            f"train: {stats.batches:,} batches, {stats.samples:,} samples in {stats.seconds:.1f} s"
            + (f"; window auc {w['auc']:.4f} gauc {w['gauc']:.4f}" if w else ""),
            file=sys.stderr,
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m lumstream.commands.train`` (the same as ``lumstream train``)."""
    from lumstream.cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
