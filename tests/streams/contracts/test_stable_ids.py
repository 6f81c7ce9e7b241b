"""Stable ids: numeric strings keep their value, everything else hashes above 2**62, and one
stable id always belongs to one Kafka key (so to one partition store)."""

from __future__ import annotations

import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from streams.contracts.ids import NUMERIC_LIMIT, stable_id, stable_ids


def test_canonical_decimal_strings_keep_their_value() -> None:
    assert stable_id("0") == 0
    assert stable_id("42") == 42
    assert stable_id(str(NUMERIC_LIMIT - 1)) == NUMERIC_LIMIT - 1
    assert stable_id(str(NUMERIC_LIMIT)) >= NUMERIC_LIMIT  # too large: hashed


def test_other_strings_hash_above_the_numeric_range() -> None:
    for raw in ("Comedy", "-1", "4.0", " 7", "७", "0x10"):
        assert NUMERIC_LIMIT <= stable_id(raw) < 2**63, raw


def test_leading_zeros_are_another_id_as_they_are_another_key() -> None:
    """ "900000001" and "0900000001" are different Kafka keys, so they may land on
    different partitions: they must not share a stable id (and state) either."""
    assert stable_id("900000001") == 900000001
    assert stable_id("0900000001") != stable_id("900000001")
    assert stable_id("00") != stable_id("0")


@given(st.lists(st.text(max_size=12) | st.from_regex(r"\A[0-9]{1,20}\Z"), max_size=40))
def test_equal_ids_come_from_equal_strings(raws: list[str]) -> None:
    ids = stable_ids(raws)
    assert ids.tolist() == [stable_id(r) for r in raws]
    by_id: dict[int, str] = {}
    for raw, i in zip(raws, ids.tolist(), strict=True):
        assert by_id.setdefault(i, raw) == raw  # one id, one key


def test_the_mapping_is_the_same_in_another_process() -> None:
    code = "from streams.contracts.ids import stable_id; print(stable_id('Comedy'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) == stable_id("Comedy")
