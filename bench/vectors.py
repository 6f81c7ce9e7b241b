"""Benchmark of keeping condition-query vectors fresh: incremental passes against
full-refresh-only, on a live-like stream, in one run.

Usage::

    python bench/vectors.py                       # defaults below, a table
    python bench/vectors.py --users 2000 --events 300000 --step-s 60 --full-every-s 1800 --json

What it does, with the real code paths (the worker's processor into a RocksDB sequence
store, the backbone's full pass and :class:`~trainer.backbone.vector_pass.IncrementalRefresher`
into vector stores, the consumers' point-in-time reader):

1. generate ``--events`` synthetic events; apply the first ``--warmup`` share to a store,
   train backbone v1 on it and write every user's vectors (a full pass) into two vector
   stores;
2. apply the rest in slices of ``--step-s`` seconds of event time; after each slice,
   store *incremental* gets an incremental pass (the users whose sequences grew), store
   *full-only* gets a full pass (every user, the same frozen v1) every ``--full-every-s``
   of event time — what it would get without incremental passes;
3. as each slice's labelled samples come out of the label join (an impression at event
   time t, once its label window closed), look up their users' vectors as of t in both
   stores, as a trainer would then, and report the vector age ``t - covered`` (the newest
   event the vectors summarise) at p50/p90/p99, the share of samples whose vectors miss
   a sequence event before t, the share with vectors at all, and the users refreshed per
   second of compute by each kind of pass.

The stream's event time runs much faster than wall time here; the ages are in event time,
as a consumer at that moment would see them if each pass finished before the next slice.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import CollectorRegistry

from core.settings import ConfigError, build
from monitoring.metrics import Metrics
from streams.config import EventConfig, GeneratorConfig, StoreConfig, WorkerConfig
from streams.generator import ClickStream
from streams.worker.processor import open_processor
from trainer.backbone.config import BackboneConfig, RefreshConfig
from trainer.backbone.data import action_indices, open_store
from trainer.backbone.refresh import RefreshPaths, refresh_once
from trainer.backbone.vector_pass import IncrementalRefresher, full_pass, open_vectors
from trainer.backbone.versions import latest, load_model
from trainer.vectors.store import VectorReader


def machine(threads: int) -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": threads,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def _measure(reader: VectorReader, rows: np.ndarray, seqs: Any) -> dict[str, np.ndarray]:
    """Per sample, as a consumer sees it now: found, age (its event time minus the newest
    event its vectors summarise, s) and events behind (the user's sequence events before
    the sample that the vectors do not summarise)."""
    layout = reader.layout
    assert layout is not None
    reader.refresh()
    conds = np.repeat(layout.conditions[:1], len(rows), axis=0)
    got = reader.lookup(rows["user"], rows["item"], conds, rows["ts"])
    behind = np.zeros(len(rows), np.int64)
    for k, (u, t) in enumerate(zip(rows["user"].tolist(), rows["ts"].tolist(), strict=True)):
        before = int(np.searchsorted(seqs.sequence(u)["ts"], t, side="left"))
        have = 0
        if got.user_found[k]:
            r = reader._records[u]
            assert r is not None
            mine = (r.head["version"] == got.version[k]) & (r.head["covered"] == got.covered[k])
            have = int(r.head["events"][mine].max())
        behind[k] = max(before - have, 0)
    found = got.user_found
    return {
        "found": found,
        "age": (rows["ts"][found] - got.covered[found]) / 1000.0,
        "behind": behind,
    }


def _summary(parts: list[dict[str, np.ndarray]]) -> dict[str, float]:
    found = np.concatenate([p["found"] for p in parts])
    age = np.concatenate([p["age"] for p in parts])
    behind = np.concatenate([p["behind"][p["found"]] for p in parts])  # of those with vectors
    out = {
        "samples": len(found),
        "with_vectors": float(found.mean()),
        "behind_share": float((behind > 0).mean()) if len(behind) else 0.0,
        "behind_p99": float(np.percentile(behind, 99)) if len(behind) else 0.0,
    }
    for q in (50, 90, 99):
        out[f"age_p{q}_s"] = float(np.percentile(age, q)) if len(age) else float("nan")
    return out


def _event_times(records: list[bytes]) -> np.ndarray:
    """(n,) non-decreasing event time of each record (a malformed one takes its
    predecessor's), for slicing the stream by event time."""
    out = np.zeros(len(records), np.int64)
    last = 0
    for k, raw in enumerate(records):
        with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            last = max(last, int(orjson.loads(raw)["ts"]))
        out[k] = last
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    gen = GeneratorConfig(users=args.users, items=4 * args.users, events=args.events, seed=11)
    records = [v for batch in ClickStream(gen).pair_batches() for _, v in batch]
    bcfg = BackboneConfig(dim=args.dim, layers=2, heads=2, epochs=2, max_len=100)
    rcfg = RefreshConfig(eval_users=200, vector_batch_users=128, incremental_max_users=10**9)
    events, store_cfg = EventConfig(), StoreConfig(sync_writes=False)
    metrics = Metrics(CollectorRegistry())
    out: dict[str, Any] = {
        "bench": "vectors",
        "config": {
            "users": args.users,
            "events": len(records),
            "warmup": args.warmup,
            "step_s": args.step_s,
            "full_every_s": args.full_every_s,
            "dim": args.dim,
            "label_window_s": args.worker.label_window_s,
        },
        "machine": machine(args.threads),
    }
    with tempfile.TemporaryDirectory(prefix="bench-vectors-") as d:
        root = Path(d)
        paths = RefreshPaths(root / "store", root / "versions", root / "inc")
        proc = open_processor(paths.store, 0, store_cfg, args.worker, events, metrics)
        offset = 0

        def apply(chunk: list[bytes]) -> np.ndarray:
            """Apply a slice; the samples it emitted (their label windows closed)."""
            nonlocal offset
            res = proc.process(list(range(offset, offset + len(chunk))), [None] * len(chunk), chunk)
            proc.commit()
            offset += len(chunk)
            return res.samples.rows.copy() if res.samples is not None else np.empty(0)

        cut = int(len(records) * args.warmup)
        for i in range(0, cut, 5000):
            apply(records[i : min(i + 5000, cut)])
        t0 = time.perf_counter()
        first = refresh_once(bcfg, rcfg, store_cfg, events, paths, metrics)
        out["full_refresh_s"] = round(time.perf_counter() - t0, 2)
        assert first.version is not None
        info = latest(paths.versions)
        assert info is not None
        model = load_model(info.path)
        inc_store = open_vectors(paths.vectors, rcfg)
        full_store = open_vectors(root / "full", rcfg)
        incremental = IncrementalRefresher(
            bcfg, rcfg, store_cfg, events, paths.store, paths.versions, inc_store, metrics
        )
        scratch = root / "scratch"
        acts = action_indices(bcfg.sequence_actions, events)

        def full(store: Any) -> tuple[int, float]:
            reader = open_store(paths.store, store_cfg, scratch / "full-pass")
            try:
                counts = {u: int(m[0]) for _, u, m in reader.users()}
                users = []
                for u, seq in reader.sequences():
                    if acts is not None:
                        seq = seq[np.isin(seq["action"], acts)]
                    if len(seq):
                        users.append((u, seq, counts[u]))
            finally:
                reader.close()
            layout = store.layout() or inc_store.layout()
            if store.layout() is None:
                store.agree_layout(layout.conditions, layout.fields, layout.dim, layout.capacity)
                layout = store.layout()
            t = time.perf_counter()
            n = full_pass(store, layout, info, model, users, rcfg, metrics)
            return n, time.perf_counter() - t

        full(full_store)  # the baseline starts from the same full pass
        readers = {
            "incremental": VectorReader(paths.vectors, scratch / "read-inc"),
            "full_only": VectorReader(root / "full", scratch / "read-full"),
        }
        seqs = open_store(paths.store, store_cfg, scratch / "read-seq")
        parts: dict[str, list[dict[str, np.ndarray]]] = {k: [] for k in readers}
        inc_users = inc_s = full_users = full_s = 0.0
        ts = _event_times(records)
        step_ms, every_ms = int(args.step_s * 1000), int(args.full_every_s * 1000)
        next_full = int(ts[cut]) + every_ms
        i = cut
        while i < len(records):
            j = int(np.searchsorted(ts, ts[i] + step_ms, side="left"))  # one slice of time
            j = max(j, i + 1)
            rows = apply(records[i:j])
            t = time.perf_counter()
            inc_users += incremental.step()
            inc_s += time.perf_counter() - t
            if ts[j - 1] >= next_full:
                n, s = full(full_store)
                full_users += n
                full_s += s
                next_full += every_ms
            if len(rows):  # what a consumer reading these samples now would get
                seqs.refresh()
                for name, reader in readers.items():
                    parts[name].append(_measure(reader, rows, seqs))
            i = j
        for reader in readers.values():
            reader.close()
        seqs.close()
        incremental.close()
        proc.close()
        inc_store.close()
        full_store.close()
        result = {name: _summary(p) for name, p in parts.items()}
        result["incremental"]["users_refreshed"] = int(inc_users)
        result["incremental"]["users_per_s"] = round(inc_users / max(inc_s, 1e-9), 1)
        result["full_only"]["users_refreshed"] = int(full_users)
        result["full_only"]["users_per_s"] = round(full_users / max(full_s, 1e-9), 1)
        out.update(result)
    return out


def print_table(res: dict[str, Any]) -> None:
    c, m = res["config"], res["machine"]
    print(
        f"vectors: {c['users']:,} users, {c['events']:,} events (first {c['warmup']:.0%} "
        f"before v1), slices of {c['step_s']:g} s event time, full passes every "
        f"{c['full_every_s']:g} s, dim {c['dim']}, label window {c['label_window_s']:g} s"
    )
    print(
        f"machine: {m['platform']}, {m['cpus']} CPUs, torch {m['torch']} "
        f"({m['threads']} threads), load {m['loadavg_1m']}; v1 trained in "
        f"{res['full_refresh_s']} s"
    )
    print(
        f"  {'kind':<13}{'samples':>9}{'with vec':>10}{'age p50 s':>11}{'p90 s':>9}"
        f"{'p99 s':>9}{'behind':>8}{'p99 ev':>8}{'users refreshed':>17}{'users/s':>9}"
    )
    for kind in ("incremental", "full_only"):
        r = res[kind]
        print(
            f"  {kind:<13}{r['samples']:>9,}{r['with_vectors']:>10.1%}{r['age_p50_s']:>11.1f}"
            f"{r['age_p90_s']:>9.1f}{r['age_p99_s']:>9.1f}{r['behind_share']:>8.1%}"
            f"{r['behind_p99']:>8.0f}{r['users_refreshed']:>17,}{r['users_per_s']:>9,.0f}"
        )
    print(
        "  age: sample time minus the newest event its vectors summarise; behind: share of the "
        "samples with vectors whose vectors miss a sequence event before them (p99 ev: how many)"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--warmup", type=float, default=0.5, help="share of events before v1")
    p.add_argument("--step-s", type=float, default=60.0, help="event time per slice")
    p.add_argument("--full-every-s", type=float, default=1800.0, help="full-only cadence")
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="worker.NAME=VALUE",
        help="a worker setting for the label join (e.g. worker.label_window_s=120)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    worker: dict[str, str] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("worker."):
            p.error(f"--set {item!r}: expected worker.NAME=VALUE")
        worker[key.removeprefix("worker.")] = value
    try:
        args.worker = build(WorkerConfig, worker, source="--set")
    except ConfigError as exc:
        p.error(str(exc))
    res = run(args)
    if args.json:
        print(json.dumps(res, indent=1, default=float))
    else:
        print_table(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
