"""A small e-commerce behaviour log of the common public shape, for the worked example in
docs/importers.md and its test.

``user,item,category,behavior,ts`` rows (behaviours ``pv``, ``cart``, ``buy``; ``ts`` in
seconds), **sorted by user, then time**, as such logs are usually distributed. Each user
has two favourite categories of six (70% of their views), views 20-40 items over ten
days, and puts some liked items in the cart 30 s to 10 min after the view; 70% of those are
bought 5 minutes to 6 hours after the view. Deterministic for a seed.

Usage::

    python bench/shoplog.py shop.csv --users 1000 --seed 0
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

T0 = 1_700_000_000  # seconds
CATEGORIES = 6
ITEMS_PER_CATEGORY = 40


def write_log(path: Path, users: int = 150, seed: int = 0) -> int:
    """Write the log (see the module doc) to ``path``; returns the number of purchases."""
    rng = np.random.default_rng(seed)
    lines, buys = [], 0
    for u in range(users):
        fav = rng.choice(CATEGORIES, 2, replace=False)
        rows = []
        for _ in range(int(rng.integers(20, 40))):
            in_fav = rng.random() < 0.7
            c = int(fav[rng.integers(0, 2)]) if in_fav else int(rng.integers(CATEGORIES))
            item = c * ITEMS_PER_CATEGORY + int(rng.integers(0, ITEMS_PER_CATEGORY))
            t = T0 + int(rng.integers(0, 10 * 86_400))
            rows.append((item, c, "pv", t))
            liked = c in fav and item % ITEMS_PER_CATEGORY < 25
            if liked and rng.random() < 0.5:
                rows.append((item, c, "cart", t + int(rng.integers(30, 600))))
                if rng.random() < 0.7:
                    rows.append((item, c, "buy", t + int(rng.integers(300, 6 * 3600))))
                    buys += 1
        rows.sort(key=lambda r: r[3])
        lines += [f"{u},{i},{c},{b},{t}\n" for i, c, b, t in rows]
    path.write_text("user,item,category,behavior,ts\n" + "".join(lines))
    return buys


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    buys = write_log(args.out, args.users, args.seed)
    print(f"{args.out}: {args.users:,} users, {buys:,} purchases")


if __name__ == "__main__":
    main()
