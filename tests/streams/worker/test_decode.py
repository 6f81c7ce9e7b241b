"""The worker's columnar decode path equals the per-record reference on any mix."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.config import EventConfig, GeneratorConfig
from streams.generator import ClickStream
from streams.worker.decode import _reference, decode_batch, event_hash, event_hashes

NOW = 1_800_000_000_000
CFG = EventConfig()


def _event(user: bytes = b'"1"', ts: bytes = b"1767225600000", tail: bytes = b"") -> bytes:
    return (
        b'{"event_id":"x","user_id":' + user + b',"item_id":"1","action":"click",'
        b'"condition":"c","ts":' + ts + tail + b"}"
    )


EXTRA_BAD = [
    b"",  # a tombstone's value
    _event(user=b'" "'),
    _event(ts=b"9223372036854775808"),
    _event(tail=b',"features":{"f":1e999}'),
    _event(tail=b',"features":{"category":" "}'),
    _event(user=b"7", ts=b"1767225600000.0"),  # normalised by the reference: accepted
    _event(tail=b',"features":{"category":5}'),  # normalised by the reference: accepted
    _event(tail=b',"features":{"n":123456789012345678901}'),  # beyond 64 bits: wrong_type
    _event(tail=b',"features":{"n":18446744073709551615}'),  # 2**64 - 1: accepted
    b"\xef\xbb\xbf" + _event(),  # a byte-order mark: accepted
    _event(user=b"123456789012345678901"),  # a 21-digit integer id: its digits
    _event(user=b'"0900000001"'),
]


def _records(n: int, seed: int) -> list[bytes]:
    gen = GeneratorConfig(events=n, users=50, malformed_fraction=0.1, seed=seed)
    return [v for batch in ClickStream(gen).pair_batches() for _, v in batch]


def _same(values: list[bytes]) -> None:
    cols, rejected = decode_batch(values, CFG, NOW)
    ref, ref_rejected = _reference(
        values, list(range(len(values))), CFG, np.full(len(values), NOW, np.int64)
    )
    assert rejected == ref_rejected
    assert cols.event_id == ref.event_id
    for name in ("index", "user", "item", "cond", "cat", "action", "ts"):
        assert np.array_equal(getattr(cols, name), getattr(ref, name)), name


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.lists(st.integers(0, len(EXTRA_BAD) - 1), max_size=5))
def test_fast_path_equals_reference(seed: int, extra: list[int]) -> None:
    values = _records(300, seed)
    for k, which in enumerate(extra):
        values.insert((k * 37) % len(values), EXTRA_BAD[which])
    _same(values)


def test_normalised_forms_are_accepted_like_the_reference() -> None:
    values = _records(50, 1) + EXTRA_BAD
    cols, rejected = decode_batch(values, CFG, NOW)
    assert len(cols.index) + len(rejected) == len(values)
    assert len(values) - 2 in cols.index.tolist()  # integer user id + integral float ts
    _same(values)


def test_future_bound_counts_from_each_record_time() -> None:
    raw = (
        b'{"event_id":"x","user_id":"1","item_id":"1","action":"click","condition":"c",'
        b'"ts":1767225700000}'
    )
    cols, rejected = decode_batch(
        [raw, raw], CFG, [1767225700000, 1767225600000 - CFG.max_future_ms]
    )
    assert cols.index.tolist() == [0]
    assert [r.reason for r in rejected] == ["ts_out_of_range"]


@pytest.mark.parametrize("ids", [["a", "bb", "ccc", "g7-12345"], ["é", "日本", "x" * 100]])
def test_vectorised_event_hash_equals_reference(ids: list[str]) -> None:
    assert event_hashes(ids).tolist() == [event_hash(i) for i in ids]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=12), max_size=20))
def test_vectorised_event_hash_equals_reference_on_any_text(ids: list[str]) -> None:
    assert event_hashes(ids).tolist() == [event_hash(i) for i in ids]
