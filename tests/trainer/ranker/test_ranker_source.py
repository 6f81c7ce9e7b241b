"""trainer.ranker.source: sample files, deduplication of re-sent samples by (partition, seq),
corrupt blocks, resume positions that neither skip nor repeat a sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from support.metrics import sample
from support.ranker import blocks

from monitoring.metrics import Metrics
from streams.contracts.samplefile import iter_frames
from streams.contracts.samples import encode_block
from streams.sinks.samples import write_sample_file
from trainer.ranker.batch import Samples
from trainer.ranker.checkpoint import parse_stream_state, stream_state
from trainer.ranker.source import Assembler, MemorySampleSource, Message, SampleFileSource


def ids(s: Samples) -> list[tuple[int, int]]:
    return list(zip(s.partition.tolist(), s.rows["seq"].tolist(), strict=True))


def test_file_round_trip_and_truncated_tail(tmp_path: Path) -> None:
    bl = blocks()[:5]
    path = tmp_path / "s.bin"
    assert write_sample_file(path, bl) == 5
    msgs = [Message(0, pos, body, nxt) for pos, body, nxt in iter_frames(path)]
    assert [m.value for m in msgs] == [encode_block(b) for b in bl]
    assert msgs[1].offset == msgs[0].next_offset
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size - 10)  # a writer died mid-record
    assert len(list(iter_frames(path))) == 4
    src = SampleFileSource(path)
    src.seek({0: msgs[2].offset})
    assert [m.offset for m in src.poll(10, 0)] == [msgs[2].offset, msgs[3].offset]
    assert src.exhausted()


def test_resent_samples_and_corrupt_blocks_are_skipped(metrics: Metrics) -> None:
    bl = blocks()[:3]
    values = [encode_block(b) for b in bl]
    values.insert(2, values[1])  # the worker re-sent block 1 after a crash
    values.insert(1, b"LSB1 but not really")
    asm = Assembler(metrics=metrics)
    asm.add(Message(0, i, v, i + 1) for i, v in enumerate(values))
    got = ids(asm.take(10_000))
    assert got == [(0, int(s)) for b in bl for s in b.rows["seq"]]
    assert sample(metrics, "lumstream_ranker_samples_skipped_total", reason="duplicate") == len(
        bl[1]
    )
    assert sample(metrics, "lumstream_ranker_samples_skipped_total", reason="corrupt_block") == 1


def test_resuming_at_the_positions_repeats_and_skips_nothing() -> None:
    bl = blocks()[:6]
    src = MemorySampleSource.of_blocks(bl)
    everything = ids(Samples.concat([Samples.from_block(b) for b in bl]))
    learned: list[tuple[int, int]] = []
    asm = Assembler()
    asm.add(src.poll(4, 0))
    for n in (50, 37):  # learn two batches that end inside a block
        batch = asm.take(n)
        asm.learned(batch)
        learned += ids(batch)
    asm.take(20)  # taken but never learned: lost in the crash
    seen, positions = asm.learned_seen, asm.positions()
    resumed = Assembler(seen, positions)
    src.seek(positions)
    while not src.exhausted():
        resumed.add(src.poll(2, 0))
    learned += ids(resumed.take(10_000))
    assert learned == everything


def test_time_range_filter() -> None:
    s = Samples.from_block(blocks()[0])
    lo, hi = int(np.quantile(s.rows["ts"], 0.25)), int(np.quantile(s.rows["ts"], 0.75))
    asm = Assembler(ts_range=(lo, hi))
    asm.add([Message(0, 0, encode_block(blocks()[0]), 1)])
    got = asm.take(1000).rows["ts"]
    assert len(got)
    assert got.min() >= lo
    assert got.max() < hi


def test_a_block_resent_after_a_later_one_is_learned_once(metrics: Metrics) -> None:
    """The producer keeps order under retries but not gap-free: block 1 timed out, block 2
    landed, the worker re-sent both. Block 1 fills the gap; block 2 again is a duplicate."""
    bl = blocks()[:3]
    b0, b1, b2 = (encode_block(b) for b in bl)
    asm = Assembler(metrics=metrics)
    asm.add([Message(0, 0, b0, 1), Message(0, 1, b2, 2)])
    assert sample(metrics, "lumstream_ranker_sample_gap", partition="0") == len(bl[1])
    asm.add([Message(0, 2, b1, 3), Message(0, 3, b2, 4)])
    assert sample(metrics, "lumstream_ranker_sample_gap", partition="0") == 0
    got = sorted(ids(asm.take(10_000)))
    assert got == [(0, int(s)) for b in bl for s in b.rows["seq"]]
    assert sample(metrics, "lumstream_ranker_samples_skipped_total", reason="duplicate") == len(
        bl[2]
    )


def test_a_gap_survives_a_checkpoint() -> None:
    bl = blocks()[:3]
    b0, b1, b2 = (encode_block(b) for b in bl)
    asm = Assembler()
    asm.add([Message(0, 0, b0, 1), Message(0, 1, b2, 2)])
    asm.learned(asm.take(10_000))
    meta = stream_state(asm.learned_seen, asm.positions())
    assert meta["holes"] == {"0": [[int(bl[1].rows["seq"][0]), int(bl[1].rows["seq"][-1])]]}
    seen, positions = parse_stream_state(meta)
    resumed = Assembler(seen, positions)
    resumed.add([Message(0, 2, b1, 3), Message(0, 3, b0, 4)])  # the re-send, and an old one
    assert ids(resumed.take(10_000)) == [(0, int(s)) for s in bl[1].rows["seq"]]
