"""``lumstream store stats|get USER``: inspect the RocksDB sequence store.

Opens every partition as a RocksDB secondary instance
(:func:`streams.worker.store.read_store`), so it works while workers write (what it shows
lags the writers by at most one catch-up). ``--store DIR`` goes before or after the action.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lumstream.config import Config
    from streams.worker.store import StoreReader

HELP = "inspect the sequence store: per-partition stats, or one user's sequence"


def add_arguments(p: argparse.ArgumentParser) -> None:
    store_help = "store directory (default: store.path or <paths.data_dir>/store)"
    p.add_argument("--store", metavar="DIR", help=store_help)
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    stats = sub.add_parser("stats", help="per-partition offsets, watermark, counters, users")
    get = sub.add_parser("get", help="one user's counters and sequence (newest last)")
    get.add_argument("user", help="the raw user id (as in events)")
    get.add_argument(
        "--last",
        type=int,
        default=20,
        metavar="N",
        help="show the last N events (default 20; 0 = all)",
    )
    for action in (stats, get):  # also after the action; SUPPRESS keeps one given before
        action.add_argument("--store", metavar="DIR", default=argparse.SUPPRESS, help=store_help)


def _time(ms: int) -> str:
    if ms <= 0:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def run(cfg: Config, args: argparse.Namespace) -> int:
    from lumstream.commands.base import fail
    from streams.contracts.ids import stable_id
    from streams.worker.store import StoreError, read_store

    root = Path(args.store) if args.store else cfg.layout.store
    try:
        with read_store(root, cfg.store) as reader:
            if args.action == "stats":
                return _stats(reader)
            return _get(reader, cfg, args.user, stable_id(args.user), args.last)
    except StoreError as exc:
        return fail("store", exc)


def _stats(reader: StoreReader) -> int:
    users_by_part: dict[int, int] = {}
    lengths: list[int] = []
    for part, _user, meta in reader.users():
        users_by_part[part] = users_by_part.get(part, 0) + 1
        lengths.append(min(meta[0], reader.cfg.seq_len))
    print(
        f"{'part':>4} {'next offset':>12} {'watermark (UTC)':>24} {'users':>8} "
        f"{'applied':>10} {'samples +/-':>17} {'dups':>6} {'rejected':>8}"
    )
    for part, state in sorted(reader.states().items()):
        c = state.counters
        print(
            f"{part:>4} {state.next_offset:>12,} {_time(state.watermark):>24} "
            f"{users_by_part.get(part, 0):>8,} {c.get('applied', 0):>10,} "
            f"{c.get('samples_positive', 0):>8,}/{c.get('samples_negative', 0):<8,} "
            f"{c.get('duplicates', 0):>6,} {c.get('rejected', 0):>8,}"
        )
    if lengths:
        import numpy as np

        arr = np.array(lengths)
        print(
            f"sequence length: users {len(arr):,}, mean {arr.mean():.1f}, "
            f"p50 {np.percentile(arr, 50):.0f}, p99 {np.percentile(arr, 99):.0f}, "
            f"max {arr.max()}"
        )
    return 0


def _get(reader: StoreReader, cfg: Config, raw_user: str, user: int, last: int) -> int:
    from lumstream.commands.base import fail

    found = reader.meta(user)
    if found is None:
        return fail("store", f"user {raw_user!r} (id {user}) is not in the store")
    part, meta = found
    counts = {a: meta[3 + i] for i, a in enumerate(cfg.events.actions) if meta[3 + i]}
    print(
        f"user {raw_user!r} (id {user}), partition {part}: {meta[0]:,} sequence events, "
        f"first {_time(meta[1])}, last {_time(meta[2])}, counts {counts}"
    )
    seq = reader.sequence(user)
    shown = seq[-last:] if last else seq
    print(f"{'event time (UTC)':>24} {'action':>10} {'item':>20} {'condition':>20}")
    for row in shown:
        action = (
            cfg.events.actions[row["action"]]
            if row["action"] < len(cfg.events.actions)
            else str(row["action"])
        )
        print(
            f"{_time(int(row['ts'])):>24} {action:>10} {int(row['item']):>20} "
            f"{int(row['cond']):>20}"
        )
    return 0
