"""Binary record layouts shared by the sequence store and its readers.

A user's behaviour sequence is a numpy structured array of ``SEQ_DTYPE`` in event-time
order (oldest first), stored as raw little-endian bytes (33 bytes per event, no padding).
Readers (backbone refresh, serving) decode it with :func:`decode_sequence` without any
JSON or pickle.
"""

from __future__ import annotations

import numpy as np

SEQ_DTYPE = np.dtype(
    [
        ("ts", "<i8"),  # event time, ms since the epoch
        ("item", "<i8"),  # streams.contracts.ids.stable_id(item_id)
        ("cond", "<i8"),  # streams.contracts.ids.stable_id(condition)
        ("cat", "<i8"),  # stable_id(features["category"]) or 0 when absent
        ("action", "u1"),  # index into EventConfig.actions
    ]
)


def decode_sequence(raw: bytes) -> np.ndarray:
    """Bytes from the store -> read-only structured array of SEQ_DTYPE."""
    if len(raw) % SEQ_DTYPE.itemsize:
        raise ValueError(
            f"sequence record of {len(raw)} bytes is not a multiple of "
            f"{SEQ_DTYPE.itemsize}: corrupt or written by another layout"
        )
    return np.frombuffer(raw, dtype=SEQ_DTYPE)
