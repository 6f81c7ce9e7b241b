"""Helpers of the replay/backfill tests: event logs from the generator, store and sample dumps."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import orjson

from streams.config import GeneratorConfig, StoreConfig, WorkerConfig
from streams.contracts.samples import SampleBlock
from streams.generator import ClickStream
from streams.replay.base import user_key
from streams.worker.store import PartitionStore

T0 = 1_767_225_600_000  # the generator's default start time
WORKER = WorkerConfig(label_window_s=1.0, dedup_window_s=5.0, history_len=20, batch_max=300)
STORE = StoreConfig(seq_len=256, chunk_events=8, sync_writes=False)


def generated(events: int, *, seed: int = 3, malformed: float = 0.02) -> list[bytes]:
    """Generator values (with malformed ones) plus re-sent copies, one-line and keyed by a
    readable user id (what the equivalence with Kafka's partitioner needs)."""
    gen = GeneratorConfig(
        users=40,
        items=60,
        categories=4,
        events=events,
        malformed_fraction=malformed,
        click_delay_mean_s=0.5,
        time_step_ms=100,
        slate_size=4,
        base_ctr=0.2,
        purchase_prob=0.3,
        seed=seed,
    )
    values = [v for batch in ClickStream(gen).pair_batches() for _, v in batch]
    out: list[bytes] = []
    for i, value in enumerate(values):
        if b"\n" in value or b"\r" in value or user_key(value) is None:
            continue
        out.append(value)
        if i % 97 == 5:
            out.append(values[i - 3])  # a producer retry a little later: a duplicate
    return [v for v in out if b"\n" not in v and user_key(v) is not None]


def write_jsonl(path: Path, values: Iterable[bytes]) -> Path:
    path.write_bytes(b"".join(v + b"\n" for v in values))
    return path


def event(eid: str, user: int, item: int, action: str, ts: int) -> bytes:
    return orjson.dumps(
        {
            "event_id": eid,
            "user_id": str(user),
            "item_id": str(item),
            "action": action,
            "condition": "home",
            "ts": ts,
        }
    )


def dump_store(root: Path, partitions: int, store: StoreConfig = STORE) -> dict[int, object]:
    """Per partition: the sequence and user records (bytes) and the state less ``blob_no``
    (how many join/dedup blobs were written depends on the batch cuts)."""
    out: dict[int, object] = {}
    for p in range(partitions):
        ps = PartitionStore(root, p, store)
        try:
            rows = {k: v for prefix in (b"m", b"s") for k, v in ps.scan(prefix)}
            state = dict(ps.state.__dict__)
            del state["blob_no"]
            out[p] = (rows, state)
        finally:
            ps.close()
    return out


def sample_rows(blocks: Iterable[SampleBlock]) -> dict[tuple[int, int], tuple[bytes, bytes]]:
    """(partition, seq) -> (row bytes, history bytes); a repeat must equal the first."""
    out: dict[tuple[int, int], tuple[bytes, bytes]] = {}
    for block in blocks:
        ends = np.cumsum(block.hist_lengths, dtype=np.int64)
        starts = ends - block.hist_lengths
        for i in range(len(block)):
            seq = int(block.rows["seq"][i])
            got = (
                block.rows[i : i + 1].tobytes(),
                block.hist[int(starts[i]) : int(ends[i])].tobytes(),
            )
            assert out.setdefault((block.partition, seq), got) == got, (block.partition, seq)
    return out
