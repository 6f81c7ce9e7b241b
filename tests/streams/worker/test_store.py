"""The RocksDB sequence store: chunked sequences trimmed to seq_len, counters, atomic
commits, reopen, and a secondary reader that follows a live writer."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rocksdict import AccessType, Options, Rdict

from streams.config import StoreConfig
from streams.contracts.records import SEQ_DTYPE, decode_sequence
from streams.worker.store import (
    MAX_ACTIONS,
    STATE_KEY,
    PartitionState,
    PartitionStore,
    StoreError,
    StoreReader,
    chunk_key,
    meta_key,
    partition_dir,
    unpack_meta,
)

T0 = 1_767_225_600_000


def records(items: list[int], ts: list[int] | None = None, action: int = 1) -> np.ndarray:
    out = np.zeros(len(items), SEQ_DTYPE)
    out["item"] = items
    out["ts"] = ts if ts is not None else [T0 + i for i in items]
    out["cond"] = [i % 7 for i in items]
    out["cat"] = [i % 3 for i in items]
    out["action"] = action
    return out


def append(
    store: PartitionStore, users: list[int], recs: np.ndarray, in_seq: list[bool] | None = None
) -> np.ndarray:
    flags = np.ones(len(users), bool) if in_seq is None else np.array(in_seq, bool)
    return store.append(np.array(users, np.int64), recs, flags)


def dump(path: Path) -> dict[bytes, bytes]:
    """Every key/value of one partition database (opened read-only)."""
    db = Rdict(str(path), Options(raw_mode=True), access_type=AccessType.read_only())
    try:
        items: Any = db.items()  # raw mode: bytes keys and values
        return dict(items)
    finally:
        db.close()


def get(store: PartitionStore, key: bytes) -> bytes:
    raw = store.db.get(key)
    assert raw is not None, key
    return bytes(raw)


def chunk_numbers(store: PartitionStore, user: int) -> list[int]:
    prefix = b"s" + user.to_bytes(8, "big", signed=True)
    return [int.from_bytes(k[9:], "big") for k, _ in store.scan(prefix)]


def test_sequence_is_trimmed_to_seq_len_and_stored_in_chunks(tmp_path: Path) -> None:
    cfg = StoreConfig(seq_len=10, chunk_events=4)
    store = PartitionStore(tmp_path, 3, cfg)
    assert store.path == partition_dir(tmp_path, 3) == tmp_path / "p00003"
    everything: list[int] = []
    for size in (1, 2, 5, 13, 3, 1, 4):  # a batch larger than seq_len included
        items = list(range(len(everything), len(everything) + size))
        append(store, [7] * size, records(items))
        everything += items
        store.commit()
        n = len(everything)
        assert store.n_total(7) == n
        assert store.sequence(7)["item"].tolist() == everything[-10:]
        # only the chunks covering the last seq_len events are kept
        assert chunk_numbers(store, 7) == list(range(max(0, n - 10) // 4, (n - 1) // 4 + 1))
    tail = get(store, chunk_key(7, (len(everything) - 1) // 4))
    assert len(decode_sequence(tail)) == (len(everything) % 4 or 4)  # a partial tail chunk
    store.close()


def test_append_returns_history_positions_and_counts_every_action(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path, 0, StoreConfig(seq_len=100, chunk_events=3))
    users = [1, 2, 1, 1, 2, 1, 3]
    in_seq = [True, True, False, True, False, True, True]
    recs = records([10, 20, 11, 12, 21, 13, 30], ts=[5, 9, 1, 7, 3, 8, 4])
    recs["action"] = [1, 1, 0, 2, 0, 1, 1]
    recs["ts"] += T0
    positions = append(store, users, recs, in_seq)
    # the user's sequence length just before each event, counting only sequence events
    assert positions.tolist() == [0, 0, 1, 1, 1, 2, 0]
    store.commit()
    assert store.sequence(1)["item"].tolist() == [10, 12, 13]
    assert store.sequence(2)["item"].tolist() == [20]
    meta = unpack_meta(get(store, meta_key(1)))
    n_total, first_ts, last_ts, *counts = meta
    assert (n_total, first_ts, last_ts) == (3, T0 + 1, T0 + 8)
    assert counts[:3] == [1, 2, 1]
    assert len(counts) == MAX_ACTIONS
    # a second batch continues the positions and widens first/last ts
    more = records([14, 15], ts=[T0 - 50, T0 + 99])
    assert append(store, [1, 1], more).tolist() == [3, 4]
    store.commit()
    meta = unpack_meta(get(store, meta_key(1)))
    assert meta[:3] == (5, T0 - 50, T0 + 99)
    store.close()


def test_history_reads_the_events_before_each_position(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path, 0, StoreConfig(seq_len=8, chunk_events=3))
    append(store, [4] * 6, records(list(range(6))))
    store.commit()
    append(store, [4] * 5 + [5], records([6, 7, 8, 9, 10, 50]))  # not committed: overlay
    lens, hist = store.history(
        np.array([4, 4, 4, 5, 4], np.int64), np.array([2, 11, 0, 1, 9], np.int64), 4
    )
    # user 4 has 11 events; the store keeps chunks 1.. (events 3..10), so the window
    # before position 2 is gone; before 11: events 7..10; before 9: events 5..8
    assert lens.tolist() == [0, 4, 0, 1, 4]
    assert hist["item"].tolist() == [7, 8, 9, 10, 50, 5, 6, 7, 8]
    store.close()


def test_commit_is_atomic_and_reopen_gives_the_same_store(tmp_path: Path) -> None:
    cfg = StoreConfig(seq_len=6, chunk_events=2)
    store = PartitionStore(tmp_path, 1, cfg)
    append(store, [1, 2, 1, 1, 1, 1, 1, 1], records(list(range(8))))
    store.state.next_offset = 8
    store.state.bump("applied", 8)
    store.new_blob(b"j", b"join state")
    store.commit()
    before = {u: store.sequence(u).tobytes() for u in (1, 2)}
    # an uncommitted batch is not durable: closing without commit (a crash) loses it
    append(store, [1, 3], records([100, 101]))
    store.state.next_offset = 10
    store.close()
    stored = dump(tmp_path / "p00001")
    reopened = PartitionStore(tmp_path, 1, cfg)
    assert reopened.state.next_offset == 8
    assert reopened.state.counters == {"applied": 8, "users": 2}  # users: meta records
    assert reopened.state.blob_no == 1
    assert {u: reopened.sequence(u).tobytes() for u in (1, 2)} == before
    assert reopened.n_total(3) == 0
    assert len(reopened.sequence(3)) == 0
    assert dict(reopened.scan(b"j")) == {b"j" + (0).to_bytes(8, "big"): b"join state"}
    reopened.close()
    assert dump(tmp_path / "p00001") == stored


def test_abort_forgets_the_batch_and_its_cached_effects(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path, 0, StoreConfig(seq_len=10, chunk_events=4))
    append(store, [1, 1], records([1, 2]))
    store.commit()
    append(store, [1, 1, 1], records([3, 4, 5]))
    store.state.next_offset = 99
    store.abort()
    assert store.state.next_offset == 0
    assert store.sequence(1)["item"].tolist() == [1, 2]
    append(store, [1], records([6]))
    store.commit()
    assert store.sequence(1)["item"].tolist() == [1, 2, 6]
    store.close()


def test_a_second_writer_is_refused_with_a_lock_error(tmp_path: Path) -> None:
    # the worker waits for a revoked owner to release the partition on this message
    store = PartitionStore(tmp_path, 0, StoreConfig())
    with pytest.raises(StoreError, match=r"(?i)lock"):
        PartitionStore(tmp_path, 0, StoreConfig())
    store.close()
    PartitionStore(tmp_path, 0, StoreConfig()).close()


def test_partition_state_round_trip_and_corruption() -> None:
    state = PartitionState(
        next_offset=5,
        watermark=T0,
        sample_seq=3,
        blob_no=2,
        label_window_ms=1000,
        counters={"applied": 4},
    )
    assert PartitionState.from_bytes(state.to_bytes()) == state
    assert PartitionState.from_bytes(None) == PartitionState()
    with pytest.raises(StoreError, match="corrupt"):
        PartitionState.from_bytes(b"{not json")
    with pytest.raises(StoreError, match="corrupt"):
        PartitionState.from_bytes(b'{"bogus": 1}')


def test_reader_follows_a_live_writer_after_refresh(tmp_path: Path) -> None:
    cfg = StoreConfig(seq_len=50, chunk_events=4)
    root = tmp_path / "store"
    writers = [PartitionStore(root, p, cfg) for p in (0, 1)]
    append(writers[0], [1, 1, 1], records([1, 2, 3]))
    writers[0].state.next_offset = 3
    writers[0].commit()
    append(writers[1], [2], records([9]))
    writers[1].commit()
    reader = StoreReader(root, cfg, tmp_path / "scratch")
    try:
        assert reader.sequence(1)["item"].tolist() == [1, 2, 3]
        assert reader.meta(2) == (1, unpack_meta(get(writers[1], meta_key(2))))
        append(writers[0], [1, 4], records([5, 40]))
        writers[0].state.next_offset = 5
        writers[0].commit()
        # the reader lags until it catches up with the writer
        assert reader.sequence(1)["item"].tolist() == [1, 2, 3]
        assert reader.meta(4) is None
        reader.refresh()
        assert reader.sequence(1)["item"].tolist() == [1, 2, 3, 5]
        assert reader.sequence(4)["item"].tolist() == [40]
        assert reader.states()[0].next_offset == 5
        assert sorted((p, u, m[0]) for p, u, m in reader.users()) == [
            (0, 1, 4),
            (0, 4, 1),
            (1, 2, 1),
        ]
        assert len(reader.sequence(12345)) == 0
    finally:
        reader.close()
        for w in writers:
            w.close()
    assert not (tmp_path / "scratch").exists()
    # the writer's data is untouched by the reader
    assert STATE_KEY in dump(root / "p00000")


@settings(max_examples=25, deadline=None)
@given(
    seq_len=st.integers(1, 12),
    chunk=st.integers(1, 5),
    batches=st.lists(
        st.lists(st.tuples(st.integers(0, 3), st.booleans()), min_size=0, max_size=15),
        min_size=1,
        max_size=6,
    ),
)
def test_store_matches_a_list_model(
    seq_len: int, chunk: int, batches: list[list[tuple[int, bool]]]
) -> None:
    """Random batches against the obvious model: per user, the list of sequence events."""
    cfg = StoreConfig(seq_len=seq_len, chunk_events=chunk, sync_writes=False)
    model: dict[int, list[int]] = {}
    counter = 0
    with tempfile.TemporaryDirectory() as tmp:
        store = PartitionStore(Path(tmp), 0, cfg)
        for batch in batches:
            if not batch:
                continue
            users = [u for u, _ in batch]
            items = list(range(counter, counter + len(batch)))
            counter += len(batch)
            want_pos = []
            for (u, in_seq), item in zip(batch, items, strict=True):
                seq = model.setdefault(u, [])
                want_pos.append(len(seq))
                if in_seq:
                    seq.append(item)
            got = append(store, users, records(items), [f for _, f in batch])
            assert got.tolist() == want_pos
            store.commit()
        store.drop_caches()  # read back from RocksDB, not from the write-through caches
        assert store.state.counters.get("users", 0) == len(model)
        for u, seq in model.items():
            assert store.n_total(u) == len(seq)
            assert store.sequence(u)["item"].tolist() == seq[-seq_len:]
        store.close()
