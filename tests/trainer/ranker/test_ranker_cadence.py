"""When the ranker checkpoints and publishes: every N batches exactly, while the stream is
idle, and over a damaged newest checkpoint (issue 17, items 3 to 5)."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import torch
from support.metrics import sample
from support.ranker import CFG, EMB, blocks, truth_vectors

from core.durable import VersionedDir
from monitoring.metrics import Metrics
from trainer.ranker.checkpoint import STREAM, Checkpointer, versions_dir
from trainer.ranker.engine import RankerEngine
from trainer.ranker.loop import StreamingTrainer
from trainer.ranker.source import MemorySampleSource, Message

torch.set_num_threads(1)
V = truth_vectors()


class LiveSource(MemorySampleSource):
    """Pre-encoded messages, then nothing more for a while: a live topic gone quiet."""

    def exhausted(self) -> bool:
        return False


class Trickle(MemorySampleSource):
    """One message per poll, a little later each time: a topic that keeps arriving."""

    def poll(self, max_messages: int, timeout_s: float) -> list[Message]:
        time.sleep(0.02)
        return super().poll(1, timeout_s)


def _loop(
    root: Path, source: MemorySampleSource, metrics: Metrics | None = None, **cfg: object
) -> StreamingTrainer:
    rcfg = dataclasses.replace(CFG, **cfg)  # type: ignore[arg-type]
    return StreamingTrainer(
        rcfg,
        RankerEngine(rcfg, EMB, V.layout.dim, V.layout.capacity),
        source,
        vectors=V,
        checkpointer=Checkpointer(root / "ck", keep=10, metrics=metrics),
        versions_dir=root / "versions",
        metrics=metrics,
    )


def _steps(root: Path) -> list[int]:
    ck = VersionedDir(root / "ck", "ck-", width=12, manifest=STREAM)
    return [ck.number(p) for p in ck.paths()]


def test_every_n_batches_means_after_the_nth(tmp_path: Path) -> None:
    source = MemorySampleSource.of_blocks(blocks())
    loop = _loop(tmp_path, source, checkpoint_every_batches=10, checkpoint_every_s=0)
    stats = loop.run(max_batches=25)
    assert stats.batches == 25
    assert _steps(tmp_path) == [10, 20, 25]  # the last one when the run stops


def test_an_idle_stream_still_checkpoints_and_publishes(tmp_path: Path, metrics: Metrics) -> None:
    source = LiveSource.of_blocks(blocks()[:6])
    loop = _loop(
        tmp_path,
        source,
        metrics,
        checkpoint_every_s=0.5,
        checkpoint_every_batches=0,
        idle_flush_s=0.05,
    )
    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,))
    thread.start()
    try:
        deadline = time.monotonic() + 30
        learned = sum(len(b) for b in blocks()[:6])
        while time.monotonic() < deadline:
            saved = Checkpointer(tmp_path / "ck").list()
            published = versions_dir(tmp_path / "versions").latest() is not None
            if saved and published and loop.engine.samples_learned == learned:
                # (the version follows the checkpoint: both, or the check races the publication)
                meta = VersionedDir(tmp_path / "ck", "ck-", width=12, manifest=STREAM).verify(
                    saved[0]
                )
                if meta["samples_learned"] == learned:
                    break
            time.sleep(0.05)
        else:
            raise AssertionError("no checkpoint of all samples while the stream was idle")
        assert not stop.is_set()  # still running: saved and published while idle
        stamp = sample(metrics, "lumstream_ranker_checkpoint_timestamp_seconds")
        assert stamp is not None
        assert time.time() - 30 < stamp <= time.time()
    finally:
        stop.set()
        thread.join(timeout=60)


def test_a_damaged_newest_checkpoint_is_replaced_not_repeated(tmp_path: Path) -> None:
    bl = blocks()[:40]  # 20 batches of 128
    loop = _loop(
        tmp_path, MemorySampleSource.of_blocks(bl), checkpoint_every_batches=5, checkpoint_every_s=0
    )
    loop.run()
    assert _steps(tmp_path) == [5, 10, 15, 20]
    newest = Checkpointer(tmp_path / "ck").list()[0]
    data = next(f for f in newest.iterdir() if f.suffix == ".distcp")
    data.write_bytes(data.read_bytes()[:1000])  # truncated on disk

    again = _loop(
        tmp_path, MemorySampleSource.of_blocks(bl), checkpoint_every_batches=5, checkpoint_every_s=0
    )
    assert again.resume()
    assert again.engine.steps == 15  # the damaged step-20 checkpoint was skipped
    again.run()
    ck = VersionedDir(tmp_path / "ck", "ck-", width=12, manifest=STREAM)
    assert ck.verify(ck.paths()[-1])["steps"] == 20  # the damaged one was replaced

    third = _loop(
        tmp_path, MemorySampleSource.of_blocks(bl), checkpoint_every_batches=5, checkpoint_every_s=0
    )
    assert third.resume()
    assert third.engine.steps == 20  # so a restart no longer repeats the work


def test_a_loop_without_checkpoints_keeps_reading_after_its_cadence(tmp_path: Path) -> None:
    """The time cadence only applies to a loop that checkpoints: one without a
    checkpointer (the demo's baseline ranker) once spun on "wait" without reading."""
    bl = blocks()[:8]
    source = Trickle.of_blocks(bl)
    rcfg = dataclasses.replace(CFG, checkpoint_every_s=0.01, idle_flush_s=0.05)
    loop = StreamingTrainer(rcfg, RankerEngine(rcfg, EMB, 1, 1), source)
    done = threading.Event()
    thread = threading.Thread(target=lambda: (loop.run(), done.set()), daemon=True)
    thread.start()
    assert done.wait(30), "the loop stopped reading"
    assert loop.engine.samples_learned == sum(len(b) for b in bl)
