"""Benchmark of the ranking service: open-loop load at several rates, and in the same run
the limits and baselines it is compared with.

Usage::

    python bench/serve.py                          # defaults below, a table
    python bench/serve.py --rates 100,200,400 --duration-s 8 --json

What it does, with the real code paths:

1. generate ``--events`` synthetic events and apply them through the worker's processor
   into a RocksDB sequence store (so users have the history lengths the stream gives
   them); write a vector store (random o_q / e_i for every user / item: the LUM inputs'
   shapes, not their quality); train a ranker (default ``RankerConfig`` and
   ``EmbeddingsConfig``) on the samples once and publish it as r1;
2. start ``lumstream serve`` (``--workers`` processes, 1 torch thread each) on that data;
3. **open loop**: for each rate, send requests on a fixed schedule (request i at
   t0 + i/rate, whatever the answers do) for ``--duration-s``; each request is a random
   store user, a random condition and ``--candidates`` random items; latency is measured
   from the *scheduled* send time, so queueing in the client or server cannot hide;
   p50/p99/p99.9, errors, 503 rejections and 504 deadlines per rate, the workers' RSS after
   each rate (memory under overload), and the highest rate whose p99 is <= 10 ms;
4. in the same run: **the model alone** (the version's forward pass on one request's
   batch, and the whole feature path + forward, in this process, 1 thread); **the HTTP
   stack alone** (an aiohttp endpoint that returns ``{}`` to the same-size body, closed
   loop); and the **end-to-end generative baseline**: the LUM backbone (default
   ``BackboneConfig``) run over the user's sequence inside the request (group query for
   the request's condition, then o_q . e_i for the candidates), for the users' store
   sequences and for a sequence of ``store.seq_len`` events.

The load generator runs on the same machine as the service (2 cores here): its CPU use is
part of what the service competes with.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from embeddings.config import EmbeddingsConfig
from lumstream.config import load
from lumstream.pipeline.serve import start_service
from monitoring.metrics import Metrics
from serving.features import request_samples, score_samples
from serving.models import load_served
from serving.server import BackgroundServer
from streams.config import EventConfig, GeneratorConfig, StoreConfig, WorkerConfig
from streams.contracts.ids import stable_id
from streams.contracts.records import SEQ_DTYPE
from streams.contracts.samples import SampleBlock
from streams.generator import ClickStream, World
from streams.worker.processor import open_processor
from streams.worker.store import read_store
from trainer.backbone.config import BackboneConfig
from trainer.backbone.encoder import LumBackbone
from trainer.backbone.group_query import compute_vectors
from trainer.backbone.tokens import Vocabs
from trainer.ranker.batch import Samples
from trainer.ranker.checkpoint import publish_version
from trainer.ranker.config import RankerConfig
from trainer.ranker.engine import RankerEngine
from trainer.ranker.model import model_inputs
from trainer.vectors.store import VectorReader, VectorStore

LUM_DIM = 32
HISTORY = 50


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "aiohttp": aiohttp.__version__,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# -- data ------------------------------------------------------------------------------------
def build(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    gen = GeneratorConfig(
        users=args.users, items=args.items, categories=16, events=args.events, seed=3
    )
    pairs = [p for batch in ClickStream(gen).pair_batches() for p in batch]
    store_cfg = StoreConfig(sync_writes=False)
    proc = open_processor(
        root / "store",
        0,
        store_cfg,
        WorkerConfig(label_window_s=30.0, history_len=HISTORY),
        EventConfig(),
        Metrics(CollectorRegistry()),
    )
    blocks: list[SampleBlock] = []
    for i in range(0, len(pairs), 5000):
        chunk = pairs[i : i + 5000]
        res = proc.process(
            list(range(i, i + len(chunk))),
            [k for k, _ in chunk],
            [v for _, v in chunk],
            now_ms=2_000_000_000_000,
        )
        if res.samples is not None:
            blocks.append(res.samples)
        proc.commit()
    proc.close()
    conds = np.array([stable_id(World.condition_name(c)) for c in range(16)], np.int64)
    rng = np.random.default_rng(0)
    vs = VectorStore(root / "vectors", sync=False)
    vs.agree_layout(conds[:, None], ("cond",), LUM_DIM, 16)
    vs.add_version(1, 0, np.arange(args.items), rng.normal(size=(args.items, LUM_DIM)))
    users = np.arange(args.users)
    vecs = rng.normal(size=(args.users, 16, LUM_DIM)).astype(np.float32)
    vs.write(1, users, np.zeros(args.users, np.int64), vecs, np.ones(args.users, np.int64))
    vs.close()
    reader = VectorReader(root / "vectors", root / "scratch-train")
    eng = RankerEngine(RankerConfig(), EmbeddingsConfig(), LUM_DIM, 16, fused=False)
    s = Samples.concat([Samples.from_block(b) for b in blocks])
    for i in range(0, len(s), 512):
        eng.step(s.slice(i, min(i + 512, len(s))), reader)
    version = publish_version(root / "versions", eng, {"backbone": "v1"})
    reader.close()
    with read_store(root / "store", store_cfg) as r:
        seqs = {u: seq.copy() for u, seq in r.sequences()}
    return {"gen": gen, "version": version, "seqs": seqs, "samples": len(s), "conds": conds}


def bodies(world: dict[str, Any], n: int, candidates: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    users = sorted(world["seqs"])
    gen: GeneratorConfig = world["gen"]
    out = []
    for _ in range(n):
        items = rng.choice(gen.items, candidates, replace=False)
        c = int(rng.integers(gen.categories))
        req = {
            "user_id": str(users[int(rng.integers(len(users)))]),
            "condition": World.condition_name(c),
            "candidates": [
                {"item_id": str(int(i)), "category": World.condition_name(int(i) % 16)}
                for i in items
            ],
        }
        out.append(json.dumps(req).encode())
    return out


# -- open loop ---------------------------------------------------------------------------------
async def open_loop(url: str, pool: list[bytes], rate: float, duration_s: float) -> dict[str, Any]:
    n = int(rate * duration_s)
    lat: list[float] = []
    codes: dict[int, int] = {}
    errors = 0
    conn = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        loop = asyncio.get_running_loop()

        async def one(i: int, scheduled: float) -> None:
            nonlocal errors
            try:
                async with session.post(
                    f"{url}/v1/rank",
                    data=pool[i % len(pool)],
                    headers={"Content-Type": "application/json"},
                ) as resp:
                    await resp.read()
                    codes[resp.status] = codes.get(resp.status, 0) + 1
                    if resp.status == 200:
                        lat.append(loop.time() - scheduled)
            except (aiohttp.ClientError, TimeoutError):
                errors += 1

        tasks = []
        t0 = loop.time() + 0.05
        for i in range(n):
            scheduled = t0 + i / rate
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, scheduled)))
        await asyncio.gather(*tasks)
    ms = [x * 1000 for x in lat]
    return {
        "rate": rate,
        "sent": n,
        "ok": codes.get(200, 0),
        "p50_ms": pct(ms, 50),
        "p99_ms": pct(ms, 99),
        "p999_ms": pct(ms, 99.9),
        "rejected_503": codes.get(503, 0),
        "deadline_504": codes.get(504, 0),
        "errors": errors + sum(v for k, v in codes.items() if k not in (200, 503, 504)),
    }


def rss_mb(pid: int) -> float:
    """RSS of the service's worker processes (children of its supervisor), MB."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                for line in Path(f"/proc/{child}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                pass
    return total / 1024


# -- in-process references ---------------------------------------------------------------------
def model_alone(world: dict[str, Any], root: Path, pool: list[bytes], reps: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    served = load_served(world["version"])
    reader = VectorReader(root / "vectors", root / "scratch-bench")
    now = int(time.time() * 1000)
    fwd, path = [], []
    for body in pool[:reps]:
        req = json.loads(body)
        user = int(req["user_id"])
        items = np.array([int(c["item_id"]) for c in req["candidates"]], np.int64)
        cats = np.array([stable_id(c["category"]) for c in req["candidates"]], np.int64)
        seq = world["seqs"].get(user, np.empty(0, SEQ_DTYPE))
        cond = stable_id(req["condition"])
        t = time.perf_counter()
        s = request_samples(user, cond, items, cats, seq, HISTORY, now)
        score_samples(served.builder, served.ranker.model, s, reader)
        path.append((time.perf_counter() - t) * 1000)
        b = served.builder
        batch = b.local(b.map(b.clean(s), learn=False), 0, 1, reader)
        with torch.inference_mode():
            t = time.perf_counter()
            served.ranker.model(*model_inputs(batch))
            fwd.append((time.perf_counter() - t) * 1000)
    reader.close()
    return {
        "forward_p50_ms": statistics.median(fwd),
        "forward_p99_ms": pct(fwd, 99),
        "feature_path_and_forward_p50_ms": statistics.median(path),
        "feature_path_and_forward_p99_ms": pct(path, 99),
    }


async def _closed_loop(url: str, body: bytes, n: int) -> list[float]:
    out = []
    async with aiohttp.ClientSession() as session:
        loop = asyncio.get_running_loop()
        for _ in range(n):
            t = loop.time()
            async with session.post(f"{url}/empty", data=body) as resp:
                await resp.read()
            out.append((loop.time() - t) * 1000)
    return out


def http_alone(body: bytes, n: int) -> dict[str, Any]:
    async def empty(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"{}", content_type="application/json")

    app = web.Application()
    app.router.add_post("/empty", empty)
    with BackgroundServer(app) as srv:
        lat = asyncio.run(_closed_loop(srv.url, body, n))
    return {"empty_p50_ms": statistics.median(lat), "empty_p99_ms": pct(lat, 99)}


def generative(world: dict[str, Any], pool: list[bytes], reps: int, seq_len: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    cfg = BackboneConfig()
    seqs = [s for s in world["seqs"].values() if len(s)]
    model = LumBackbone(cfg, Vocabs.build(seqs, cfg)).eval()
    vocabs = model.vocabs
    rng = np.random.default_rng(1)
    long_seq = np.concatenate(seqs)[:seq_len].copy()
    long_seq["ts"] = np.sort(long_seq["ts"])
    out: dict[str, Any] = {}
    for name, pick in (("store_sequence", None), (f"{seq_len}_events", long_seq)):
        lat = []
        for body in pool[:reps]:
            req = json.loads(body)
            user = int(req["user_id"])
            seq = world["seqs"].get(user) if pick is None else pick
            if seq is None or not len(seq):
                seq = seqs[int(rng.integers(len(seqs)))]
            items = np.array([int(c["item_id"]) for c in req["candidates"]], np.int64)
            cond = np.array([[stable_id(req["condition"])]], np.int64)
            t = time.perf_counter()
            with torch.inference_mode():
                _, o = compute_vectors(model, [(user, seq)], cond)  # (1, 1, D)
                e = model.item_embeddings(torch.from_numpy(vocabs.items.lookup(items)))
                (o[0, 0] @ e.T).numpy()
            lat.append((time.perf_counter() - t) * 1000)
        out[name] = {"p50_ms": statistics.median(lat), "p99_ms": pct(lat, 99)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--items", type=int, default=5000)
    ap.add_argument("--events", type=int, default=150_000)
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--rates", default="50,100,200,400,800,2000")
    ap.add_argument("--duration-s", type=float, default=8.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as d:
        root = Path(d)
        t = time.monotonic()
        world = build(root, args)
        setup_s = time.monotonic() - t
        pool = bodies(world, 1000, args.candidates, seed=2)
        hist = [min(len(s), HISTORY) for s in world["seqs"].values()]
        cfg = load(
            env={},
            overrides={
                "paths": {"data_dir": str(root / "data")},
                "store": {"path": str(root / "store")},
                "refresh": {"vector_store_dir": str(root / "vectors")},
                "ranker": {"versions_dir": str(root / "versions")},
                "worker": {"history_len": str(HISTORY)},
                "serving": {
                    "port": "0",
                    "workers": str(args.workers),
                    "torch_threads": "1",
                    "deadline_ms": "1000",
                    "max_inflight": "64",
                },
                "metrics": {"port": "0"},
            },
        )
        runs = []
        with start_service(cfg, timeout_s=180) as svc:
            asyncio.run(open_loop(svc.url, pool, 50, 2.0))  # warm up
            for rate in [float(r) for r in args.rates.split(",")]:
                r = asyncio.run(open_loop(svc.url, pool, rate, args.duration_s))
                r["workers_rss_mb"] = round(rss_mb(svc.child.pid), 1)
                runs.append(r)
        alone = model_alone(world, root, pool, args.reps)
        http = http_alone(pool[0], 2000)
        gen_base = generative(world, pool, min(args.reps, 100), StoreConfig().seq_len)
    ok_rates = [
        r["rate"]
        for r in runs
        if r["p99_ms"] <= 10.0
        and r["errors"] == 0
        and r["rejected_503"] == 0
        and r["deadline_504"] == 0
    ]
    result = {
        "machine": machine(),
        "config": {
            **{k: v for k, v in vars(args).items() if k != "json"},
            "history_len": HISTORY,
            "samples_trained": world["samples"],
            "history_p50": statistics.median(hist),
            "history_max": max(hist),
            "setup_s": round(setup_s, 1),
        },
        "open_loop": runs,
        "highest_rate_p99_le_10ms": max(ok_rates) if ok_rates else None,
        "model_alone": alone,
        "http_alone": http,
        "generative_baseline": gen_base,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    m, c = result["machine"], result["config"]
    print(f"machine: {m['platform']}, {m['cpus']} CPUs, torch {m['torch']}, aiohttp {m['aiohttp']}")
    print(
        f"config: {args.workers} workers x 1 thread, {args.candidates} candidates, users "
        f"{args.users}, history p50 {c['history_p50']} max {c['history_max']} (cap {HISTORY}), "
        f"{args.duration_s:g} s per rate, open loop"
    )
    print(
        f"{'rate/s':>7} {'sent':>6} {'ok':>6} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} "
        f"{'503':>5} {'504':>5} {'err':>4} {'RSS MB':>7}"
    )
    for r in runs:
        print(
            f"{r['rate']:>7.0f} {r['sent']:>6} {r['ok']:>6} {r['p50_ms']:>8.2f} "
            f"{r['p99_ms']:>8.2f} {r['p999_ms']:>9.2f} {r['rejected_503']:>5} "
            f"{r['deadline_504']:>5} {r['errors']:>4} {r['workers_rss_mb']:>7.0f}"
        )
    print(
        "highest rate with p99 <= 10 ms (no errors/rejections): "
        f"{result['highest_rate_p99_le_10ms']}"
    )
    a = result["model_alone"]
    print(
        f"model forward alone (1 thread): p50 {a['forward_p50_ms']:.2f} ms, p99 "
        f"{a['forward_p99_ms']:.2f} ms; feature path + forward: p50 "
        f"{a['feature_path_and_forward_p50_ms']:.2f} ms, "
        f"p99 {a['feature_path_and_forward_p99_ms']:.2f} ms"
    )
    h = result["http_alone"]
    print(
        f"aiohttp empty endpoint (same body, closed loop): p50 {h['empty_p50_ms']:.2f} ms, "
        f"p99 {h['empty_p99_ms']:.2f} ms"
    )
    for name, g in result["generative_baseline"].items():
        print(f"generative baseline ({name}): p50 {g['p50_ms']:.2f} ms, p99 {g['p99_ms']:.2f} ms")


if __name__ == "__main__":
    main()
