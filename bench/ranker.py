"""Benchmarks of the ranker (LUM step 3): LUM gain, multi-epoch sparse-reset, throughput.

Usage::

    python bench/ranker.py lum-gain --data /tmp/ml.jsonl          # MovieLens event log
    python bench/ranker.py lum-gain --data synthetic --json
    python bench/ranker.py multi-epoch --data /tmp/ml.jsonl --epochs 4
    python bench/ranker.py throughput --json
    python bench/ranker.py source --json

``--data`` is ``synthetic`` (the built-in generator) or an event log written by
``lumstream import`` (``lumstream import movielens ml-latest-small --out ml.jsonl``: every
rating an impression, a rating >= 4 adds a click). Events go through the stream worker's
own label join (``streams.worker.processor``, one partition) to become samples, so the ranker sees
what it sees live. ``--set SECTION.NAME=VALUE`` overrides a ``ranker``, ``embeddings``,
``backbone``, ``generator`` or ``worker`` setting (``worker.label_window_s`` and the other
label-join settings reach the join every benchmark runs; on an event log without it, the
window its import recorded in ``<log>.meta.json`` is used). Each run prints a table with
its configuration and the machine, the label window (and where it came from), the label
rate of the train and eval parts and the positives outside the window, or with ``--json``
one JSON object. A part that is empty or holds one class stops the run with the cause and
the fix (never a ``nan`` in the table); GAUC on too few users is printed with a warning.

- lum-gain: ``--protocol time`` (default) splits at the ``--split`` quantile of sample
  time; ``--protocol user`` holds out each user's last ``1 - --split`` of samples (as CTR
  papers on MovieLens usually do: the eval part interleaves in time with other users'
  train samples). The backbone (version 1, frozen) is trained on the sequences before the
  backbone cut (the time split, or with ``--protocol user`` each user's own eval start);
  its vectors go into an in-memory vector store with the store's point-in-time semantics
  (trainer/vectors): a full pass at the backbone cut and, for the ``incremental`` variants,
  a pass every ``--refresh`` samples recomputing the users whose sequences grew. Every
  sample gets its user's vectors as of its own time (never from later events, never from
  a model trained on data after it under the time protocol). The ranker trains on the
  train part, then scores-then-learns the eval part (progressive validation). Variants,
  same code and budget: ``no_lum``, ``lum_direct`` (o_q of the sample's condition and e_i,
  incremental), ``lum_full`` (+ interest matching, incremental), ``lum_full_fullonly``
  (``lum_full`` with the backbone-cut full pass only: what incremental refresh adds; time
  protocol only, the users' cuts differ under ``user``), and
  ``e2e_gr``: the backbone alone, sim(o_q, e_i) (its logloss through a sigmoid fitted
  on the eval part itself: an optimistic bound; AUC and GAUC do not depend on it).
  Reference row ``item_mean``: the candidate item's smoothed mean label so far (item
  quality, no personalisation). Each LUM variant's gain over ``no_lum`` comes with a 95%
  interval from a paired bootstrap over users (``--bootstrap`` draws): how much of it the
  eval's users could move by chance. ``--seeds 5,6,7`` trains every variant once per
  ranker seed and reports the means (the gain's interval then covers the mean gain).
- multi-epoch: the same split; epochs 1..K on the train part, the eval part scored (not
  learned) after each epoch: naive, sparse-reset, single epoch.
- throughput: training samples/s of the default model, fused TorchRec tables vs plain
  ``nn.Embedding`` (+ the same row-wise Adagrad in torch), with and without LUM features,
  interleaved repeats, median reported.
- source: how fast the live trainer's Kafka source drains lum.samples (the worker's sample
  blocks of the synthetic stream on the embedded broker): the ranker's ``PositionedConsumer``
  (confluent-kafka) against the kafka-python consumer loop it replaced, interleaved
  repeats, median reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import CollectorRegistry

from core.settings import build
from embeddings.config import EmbeddingsConfig
from monitoring.metrics import Metrics
from streams.config import EventConfig, GeneratorConfig, StoreConfig, WorkerConfig
from streams.contracts.eventlog import window_for_log
from streams.contracts.events import EventError, decode
from streams.contracts.ids import stable_id
from streams.contracts.samples import SampleBlock, encode_block, split_blocks
from streams.worker.processor import open_processor
from trainer.backbone.config import BackboneConfig
from trainer.backbone.data import MemorySequences, sequences_from_events
from trainer.ranker.batch import Samples
from trainer.ranker.config import RankerConfig
from trainer.ranker.engine import RankerEngine, Scored
from trainer.ranker.metrics import MetricError, bootstrap_gain, check_part, summary
from trainer.ranker.multi_epoch import train_epochs
from trainer.vectors.layout import ConditionLayout
from trainer.vectors.lookup import MemoryVectors

VARIANTS = ("no_lum", "lum_direct", "lum_full", "lum_full_fullonly")
# variant -> (ranker.lum_features, which vectors)
VARIANT_SETUP = {
    "no_lum": ("off", None),
    "lum_direct": ("direct", "incremental"),
    "lum_full": ("full", "incremental"),
    "lum_full_fullonly": ("full", "full_only"),
}
# a world small enough that users have ~80 clicks each within a few minutes of CPU
SYNTHETIC = {
    "users": "500",
    "items": "1000",
    "categories": "8",
    "events": "300000",
    "base_ctr": "0.15",
}
BACKBONE = {
    "heads": "2",
    "layers": "1",
    "max_len": "100",
    "batch_users": "32",
    "dropout": "0.1",
    "temperature": "0.1",
}
BACKBONE_BY_DATA = {"synthetic": {"dim": "64", "epochs": "20"}, "log": {"dim": "32", "epochs": "5"}}


# -- settings, machine ---------------------------------------------------------------------------
def overrides(items: list[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise SystemExit(f"--set {item!r}: expected SECTION.NAME=VALUE")
        out.setdefault(section, {})[name] = value
    return out


def backbone_cfg(data: str, over: dict[str, dict[str, str]]) -> BackboneConfig:
    by_data = BACKBONE_BY_DATA["synthetic" if data == "synthetic" else "log"]
    values = {**BACKBONE, **by_data, **over.get("backbone", {})}
    return build(BackboneConfig, values, source="bench")


def machine(threads: int) -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": threads,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


# -- data ----------------------------------------------------------------------------------------
@dataclasses.dataclass
class Data:
    """Samples (emission order), the valid events (for sequences) and the world (synthetic);
    the worker settings of the label join, where its window came from and what it did."""

    name: str
    samples: Samples
    values: list[bytes]
    world: Any = None
    worker: WorkerConfig = dataclasses.field(default_factory=WorkerConfig)
    window_from: str = "settings"
    join: dict[str, int] = dataclasses.field(default_factory=dict)


def synthetic(gen_over: dict[str, str]) -> tuple[list[bytes], Any]:
    """The synthetic generator's encoded events and its world (the ground truth)."""
    from streams.generator import ClickStream

    gen = build(GeneratorConfig, {**SYNTHETIC, **gen_over}, source="bench")
    stream = ClickStream(gen)
    return [v for batch in stream.pair_batches() for _, v in batch], stream.world


def worker_cfg(data: str, over: dict[str, dict[str, str]]) -> tuple[WorkerConfig, str]:
    """The label join's settings, as every bench uses them: ``--set worker.NAME=VALUE``
    over the defaults; an event log's recorded window (``<log>.meta.json``, written by
    ``lumstream import``) when ``worker.label_window_s`` is not set."""
    worker = build(WorkerConfig, over.get("worker", {}), source="bench")
    if data == "synthetic" or "label_window_s" in over.get("worker", {}):
        return worker, "--set" if "label_window_s" in over.get("worker", {}) else "settings"
    return window_for_log(worker, data)


def load(data: str, over: dict[str, dict[str, str]]) -> Data:
    worker, window_from = worker_cfg(data, over)
    if data == "synthetic":
        values, world = synthetic(over.get("generator", {}))
    else:
        from streams.contracts.eventlog import iter_event_log

        values = [raw for _, raw in iter_event_log(data)]
        world = None
    blocks, join = to_blocks(values, worker)
    samples = Samples.concat([Samples.from_block(b) for b in blocks])
    return Data(data, samples, values, world, worker, window_from, join)


def to_samples(values: list[bytes], worker: WorkerConfig | None = None) -> Samples:
    """The stream worker's label join over the events (one partition)."""
    return Samples.concat([Samples.from_block(b) for b in to_blocks(values, worker)[0]])


def to_blocks(
    values: list[bytes], worker: WorkerConfig | None = None
) -> tuple[list[SampleBlock], dict[str, int]]:
    """The sample blocks the stream worker emits for the events (one partition), and the
    join's counts of positives it could not match (``late``: after the window closed,
    ``no_impression``: no impression of the item before it within the window)."""
    parts = []
    registry = CollectorRegistry()
    with tempfile.TemporaryDirectory() as d:
        proc = open_processor(
            Path(d),
            0,
            StoreConfig(sync_writes=False),
            worker or WorkerConfig(),
            EventConfig(),
            Metrics(registry),
        )
        step = 20_000
        for i in range(0, len(values), step):
            chunk = values[i : i + step]
            res = proc.process(list(range(i, i + len(chunk))), [None] * len(chunk), chunk)
            if res.samples is not None:
                parts.append(res.samples)
            proc.commit()
        proc.close()
    join = {
        reason: int(
            registry.get_sample_value(
                "lumstream_worker_unmatched_positives_total", {"reason": reason}
            )
            or 0
        )
        for reason in ("late", "no_impression")
    }
    return parts, join


def label_report(data: Data, tr: Samples, ev: Samples) -> dict[str, Any]:
    """The header's label facts: the window and where it came from, the label rate of each
    part and the positives the join could not use (outside the window)."""
    return {
        "window_s": data.worker.label_window_s,
        "window_from": data.window_from,
        "train_label_rate": round(float(tr.rows["label"].mean()), 4) if len(tr) else None,
        "eval_label_rate": round(float(ev.rows["label"].mean()), 4) if len(ev) else None,
        "positives_outside_window": data.join.get("late", 0) + data.join.get("no_impression", 0),
        "positives_late": data.join.get("late", 0),
        "positives_no_impression": data.join.get("no_impression", 0),
    }


def check_split(tr: Samples, ev: Samples, data: Data) -> list[str]:
    """Refuse a split whose metrics cannot be computed (SystemExit naming the cause and the
    fix); the warnings (GAUC on too few users) go to stderr and the result."""
    lab = label_report(data, tr, ev)
    note = (
        f" [label window {lab['window_s']:g} s from {lab['window_from']}; "
        f"{lab['positives_outside_window']:,} positives outside it]"
    )
    warnings = []
    for part, s in (("train", tr), ("eval", ev)):
        try:
            warnings += check_part(s.rows["label"], s.rows["user"], part)
        except MetricError as exc:
            raise SystemExit(f"{data.name}: {exc}{note}") from None
    for w in warnings:
        print(f"WARNING: {w}", file=sys.stderr)
    return warnings


def split(s: Samples, q: float) -> tuple[int, Samples, Samples]:
    t = int(np.quantile(s.rows["ts"], q))
    before = s.rows["ts"] < t
    return t, s.select(before), s.select(~before)


def split_per_user(s: Samples, q: float) -> tuple[dict[int, int], Samples, Samples]:
    """Each user's first ``q`` of samples (by time) for training, the rest for evaluation;
    (user -> the time their eval part starts, train, eval), each part in time order."""
    order = np.lexsort((s.rows["ts"], s.rows["user"]))
    users = s.rows["user"][order]
    starts = np.r_[0, np.flatnonzero(users[1:] != users[:-1]) + 1]
    counts = np.diff(np.r_[starts, len(users)])
    rank = np.arange(len(users)) - np.repeat(starts, counts)
    held = np.zeros(len(s), bool)
    held[order] = rank >= np.ceil(q * np.repeat(counts, counts))
    cut = {
        int(u): int(s.rows["ts"][order][i + int(np.ceil(q * c))])
        for u, i, c in zip(users[starts].tolist(), starts.tolist(), counts.tolist(), strict=True)
        if np.ceil(q * c) < c
    }
    tr, ev = s.select(~held), s.select(held)
    by_time = lambda x: x.select(np.argsort(x.rows["ts"], kind="stable"))  # noqa: E731
    return cut, by_time(tr), by_time(ev)


def sequences_before(
    values: list[bytes], t: int, actions: tuple[str, ...]
) -> dict[int, np.ndarray]:
    cfg = EventConfig()
    events = []
    for raw in values:
        try:
            ev = decode(raw, cfg)
        except EventError:
            continue
        if ev.ts < t and (not actions or ev.action in actions):
            events.append(ev)
    return sequences_from_events(events, cfg)


def train_backbone(
    data: Data, cut: int | dict[int, int], bcfg: BackboneConfig, actions: tuple[str, ...]
) -> tuple[Any, dict[int, np.ndarray], dict[str, Any]]:
    """The backbone trained on the sequences before ``cut`` (one time, or per user); every
    user's full sequence (for later queries, each cut at its query time); what training did."""
    from trainer.backbone.train import train

    seqs = sequences_before(data.values, 2**63 - 1, actions)

    def before(u: int) -> int:
        return cut if isinstance(cut, int) else cut.get(u, 2**63 - 1)

    pairs = [(u, q[q["ts"] < before(u)]) for u, q in sorted(seqs.items())]
    pairs = [(u, q) for u, q in pairs if len(q) >= 2]
    start = time.perf_counter()
    result = train(bcfg, MemorySequences(dict(pairs)))
    info = {
        "seconds": round(time.perf_counter() - start, 1),
        "users": len(pairs),
        "steps": result.steps,
        "last_loss": round(result.losses[-1], 4) if result.losses else None,
    }
    return result.model, seqs, info


class VectorTimeline:
    """LUM step 2 as the refresh job runs it, into an in-memory vector store with the real
    store's point-in-time semantics: the frozen backbone (version 1, data watermark
    ``watermark``) queried at times t_1 <= t_2 <= ... for the users whose sequences grew,
    each sequence cut before t_k. A sample at time t then uses only records valid before t.

    Args:
        model: the frozen backbone.
        seqs: user -> full sequence (sorted by time).
        watermark: the end of the backbone's training data (0: per-user protocol).
    """

    def __init__(self, model: Any, seqs: dict[int, np.ndarray], watermark: int) -> None:
        from trainer.backbone.group_query import item_embeddings, query_condition_ids

        self.model, self.seqs = model, seqs
        q = query_condition_ids(model)
        layout = ConditionLayout(tuple(model.cfg.condition_fields), q, len(q), model.cfg.dim)
        self.store = MemoryVectors(layout, keep=10**6, horizon_ms=0)  # every record: a replay
        items, e = item_embeddings(model)
        self.store.add_version(1, watermark=watermark, items=items, item_vectors=e.numpy())
        self.seen: dict[int, int] = {}
        self.seconds = 0.0
        self.queries = 0
        self.passes = 0

    def at(self, t: int) -> None:
        """A pass at time ``t``: the users with events before ``t`` not yet summarised."""
        from trainer.backbone.group_query import compute_vectors

        start = time.perf_counter()
        changed = []
        for u, q in self.seqs.items():
            n = int(np.searchsorted(q["ts"], t))
            if n and n != self.seen.get(u, 0):
                changed.append((u, q[:n]))
                self.seen[u] = n
        if changed:
            lay = self.store.layout
            users, o = compute_vectors(self.model, changed, lay.conditions, now_ms=t)
            last = {u: int(q["ts"][-1]) for u, q in changed}
            covered = np.array([last[u] for u in users.tolist()], np.int64)
            self.store.add(1, users, covered, o.numpy())
            self.queries += len(changed)
        self.passes += 1
        self.seconds += time.perf_counter() - start


def timelines(
    model: Any,
    seqs: dict[int, np.ndarray],
    watermark: int,
    t_first: int,
    refresh_times: list[int],
) -> dict[str, VectorTimeline]:
    """The two vector stores of lum-gain: ``full_only`` (one full pass at ``t_first``) and
    ``incremental`` (the same, then a pass at every refresh time)."""
    full, inc = VectorTimeline(model, seqs, watermark), VectorTimeline(model, seqs, watermark)
    full.at(t_first)
    inc.at(t_first)
    for t in refresh_times:
        if t > t_first:
            inc.at(t)
    return {"full_only": full, "incremental": inc}


def _batches(n: int, n_train: int, b: int) -> list[tuple[int, int]]:
    return [(i, min(i + b, n_train)) for i in range(0, n_train, b)] + [
        (i, min(i + b, n)) for i in range(n_train, n, b)
    ]


# -- runs ----------------------------------------------------------------------------------------
def progressive(
    rcfg: RankerConfig,
    ecfg: EmbeddingsConfig,
    s: Samples,
    n_train: int,
    vectors: MemoryVectors | None,
) -> tuple[list[Scored], float]:
    """Learn the train part, then score-then-learn the eval part; the eval part's scores.
    Every sample gets its LUM inputs from ``vectors`` as of its own time."""
    lay = vectors.layout if vectors is not None else None
    dim, n = (lay.dim, lay.capacity) if lay is not None else (1, 1)
    eng = RankerEngine(rcfg, ecfg, dim, n)
    start = time.perf_counter()
    scored = []
    for lo, hi in _batches(len(s), n_train, rcfg.batch_size):
        out = eng.step(s.slice(lo, hi), vectors)
        if lo >= n_train:
            scored.append(out)
    return scored, time.perf_counter() - start


def e2e_scores(vec: MemoryVectors, s: Samples) -> np.ndarray:
    """sim(o_q, e_i) for the sample's condition (mean over the layout's conditions when it
    is not one of them), as of the sample's time; 0 when the user or item has no vector."""
    lay = vec.layout
    conds = np.stack([s.rows[f] for f in lay.fields], axis=1)
    got = vec.lookup(s.rows["user"], s.rows["item"], conds, s.rows["ts"])
    n = len(lay)
    sims = np.einsum("bnd,bd->bn", got.user[:, :n], got.item)  # (B, N)
    ci = got.cond_index
    own = np.where(ci >= 0, sims[np.arange(len(s)), np.maximum(ci, 0)], sims.mean(axis=1))
    return np.where(got.user_found & got.item_found, own, 0.0)


def item_mean_scores(tr: Samples, ev: Samples, prior: float = 10.0) -> np.ndarray:
    """The eval part scored by item quality alone: the candidate's mean label over every
    sample before it (the train part, then the eval part progressively), shrunk towards
    the train CTR with ``prior`` pseudo-samples. No personalisation: what a ranker gains
    over it is what it knows about the user."""
    items = np.concatenate([tr.rows["item"], ev.rows["item"]])
    y_all = np.concatenate([tr.rows["label"], ev.rows["label"]]).astype(np.float64)
    _, group = np.unique(items, return_inverse=True)
    order = np.argsort(group, kind="stable")  # by item, in time order within an item
    g, y = group[order], y_all[order]
    before = np.cumsum(y) - y  # labels before each sample, all items
    pos = np.arange(len(y))
    first = np.maximum.accumulate(np.where(np.r_[True, g[1:] != g[:-1]], pos, 0))
    mu = float(tr.rows["label"].mean())
    scores = np.empty(len(y))
    scores[order] = (before - before[first] + prior * mu) / (pos - first + prior)
    return scores[len(tr) :]


def fit_sigmoid(x: np.ndarray, y: np.ndarray, iters: int = 50) -> tuple[float, float]:
    """Logistic regression y ~ sigmoid(a x + b) by Newton's method (the calibration)."""
    a, b = 0.0, float(np.log((y.mean() + 1e-6) / (1 - y.mean() + 1e-6)))
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(a * x + b)))
        g = np.array([((p - y) * x).sum(), (p - y).sum()])
        w = p * (1 - p) + 1e-9
        h = np.array([[(w * x * x).sum(), (w * x).sum()], [(w * x).sum(), w.sum()]])
        step = np.linalg.solve(h + 1e-6 * np.eye(2), g)
        a, b = a - step[0], b - step[1]
    return float(a), float(b)


def oracle_auc(world: Any, s: Samples) -> dict[str, float]:
    from streams.generator import World

    names = {stable_id(World.condition_name(c)): c for c in range(world.n_categories)}
    conds = np.array([names.get(int(c), 0) for c in s.rows["cond"]])
    p = world.click_prob(s.rows["user"], s.rows["item"], conds)
    return summary(p, s.rows["label"], s.rows["user"])


def _config(over: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """The overrides a result was run with (every section given with --set)."""
    return {"ranker": {}, "embeddings": {}, **over}


def _num(x: float, width: int = 8) -> str:
    """A table cell: a NaN shows as n/a (the warnings above the table say why)."""
    return f"{x:>{width}.4f}" if np.isfinite(x) else f"{'n/a':>{width}}"


def _round(d: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 4) for k, v in d.items()}


def parse_seeds(text: str) -> list[int]:
    """``--seeds 5,6,7`` -> [5, 6, 7]; anything else (empty items, repeats) is refused."""
    try:
        seeds = [int(x) for x in text.split(",")]
    except ValueError:
        raise SystemExit(f"--seeds {text!r}: expected distinct integers, e.g. 5,6,7") from None
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"--seeds {text!r}: a seed is repeated")
    return seeds


def lum_gain(args: argparse.Namespace, over: dict[str, dict[str, str]]) -> dict[str, Any]:
    data = load(args.data, over)
    actions = (
        tuple(args.actions.split(","))
        if args.actions
        else (("click", "purchase") if args.data == "synthetic" else ())
    )
    bcfg = backbone_cfg(args.data, over)
    ts_all = data.samples.rows["ts"]
    if args.protocol == "time":
        t, tr, ev = split(data.samples, args.split)
        cut: int | dict[int, int] = (
            int(np.quantile(ts_all, args.backbone_split)) if args.backbone_split else t
        )
        watermark = int(cut)  # the model is trained on data before the cut: valid after it
    else:
        cut, tr, ev = split_per_user(data.samples, args.split)
        if not len(ev):
            check_split(tr, ev, data)
        t, watermark = int(ev.rows["ts"].min()), 0  # users' cuts differ: no global watermark
    warnings = check_split(tr, ev, data)
    stream = Samples.concat([tr, ev])
    model, seqs, bb = train_backbone(data, cut, bcfg, actions)
    bb["cut"] = cut if isinstance(cut, int) else "per user"
    first = int(cut) if isinstance(cut, int) else int(ts_all.min())
    refresh_times = (
        [int(x) for x in np.sort(stream.rows["ts"])[:: args.refresh]] if args.refresh else []
    )
    stores = timelines(model, seqs, watermark, first, refresh_times)
    bb.update(
        query_seconds=round(sum(tl.seconds for tl in stores.values()), 1),
        incremental_passes=stores["incremental"].passes,
        incremental_users=stores["incremental"].queries,
        query_conditions=len(stores["incremental"].store.layout),
    )
    base = build(RankerConfig, over.get("ranker", {}), source="bench")
    ecfg = build(EmbeddingsConfig, over.get("embeddings", {}), source="bench")
    res: dict[str, Any] = {"auc": {}, "gauc": {}, "logloss": {}, "seconds": {}}
    labels, users = ev.rows["label"].astype(np.float64), ev.rows["user"]
    seeds = args.seed_list or [base.seed]
    probs: dict[str, np.ndarray] = {}  # variant -> (seeds, eval samples)
    per_seed: dict[int, dict[str, dict[str, float]]] = {x: {"auc": {}, "gauc": {}} for x in seeds}
    # under --protocol user the users' cuts differ: there is no one full pass to compare with
    variants = VARIANTS if args.protocol == "time" else VARIANTS[:-1]
    for variant in variants:
        lum, which = VARIANT_SETUP[variant]
        vectors = stores[which].store if which else None
        runs, secs = [], 0.0
        got: dict[str, list[float]] = {"auc": [], "gauc": [], "logloss": []}
        for seed in seeds:
            rcfg = dataclasses.replace(base, lum_features=lum, seed=seed)
            scored, took = progressive(rcfg, ecfg, stream, len(tr), vectors)
            runs.append(np.concatenate([x.probs for x in scored]))
            scored_y = np.concatenate([x.labels for x in scored])  # the same rows every run
            scored_u = np.concatenate([x.users for x in scored])
            out = summary(runs[-1], scored_y, scored_u)
            for m, values in got.items():
                values.append(out[m])
            for m in ("auc", "gauc"):
                per_seed[seed][m][variant] = round(out[m], 4)
            secs += took
        probs[variant] = np.stack(runs)
        for m, values in got.items():
            res[m][variant] = round(float(np.mean(values)), 4)
        res["seconds"][variant] = round(secs, 1)
    inc = stores["incremental"].store
    sims = e2e_scores(inc, stream)
    # Under point-in-time vectors the train part (before the backbone cut) has none, so
    # the calibration is fitted on the eval part itself: AUC and GAUC do not depend on it
    # (a monotone map), the logloss is an optimistic bound.
    a, b = fit_sigmoid(sims[len(tr) :], labels)
    e2e = summary(1 / (1 + np.exp(-(a * sims[len(tr) :] + b))), labels, users)
    for k in ("auc", "gauc", "logloss"):
        res[k]["e2e_gr"] = round(e2e[k], 4)
    item_only = summary(item_mean_scores(tr, ev), labels, users)
    for k in ("auc", "gauc", "logloss"):
        res[k]["item_mean"] = round(item_only[k], 4)
    coverage = {}
    for which, tl in stores.items():
        lay = tl.store.layout
        got_ev = tl.store.lookup(
            ev.rows["user"], ev.rows["item"], np.stack([ev.rows[f] for f in lay.fields], 1),
            ev.rows["ts"],
        )  # fmt: skip
        found = got_ev.user_found
        age = (ev.rows["ts"][found] - got_ev.covered[found]) / 1000.0
        coverage[which] = {
            "user": round(float(found.mean()), 4),
            "item": round(float(got_ev.item_found.mean()), 4),
            "condition": round(float((got_ev.cond_index >= 0).mean()), 4),
            "age_p50_s": round(float(np.median(age)), 1) if len(age) else None,
        }
    res.update(
        bench="lum-gain",
        data=args.data,
        split={
            "protocol": args.protocol,
            "quantile": args.split,
            "ts_ms": t,
            "train": len(tr),
            "eval": len(ev),
            "eval_ctr": round(float(labels.mean()), 4),
            "refresh_samples": args.refresh,
        },
        labels=label_report(data, tr, ev),
        warnings=warnings,
        backbone={
            **bb,
            "watermark": watermark,
            "config": {k: getattr(bcfg, k) for k in (*BACKBONE, "dim", "epochs")},
            "actions": list(actions),
        },
        vector_coverage=coverage,
        gain={k: round(res[k]["lum_full"] - res[k]["no_lum"], 4) for k in ("auc", "gauc")},
        incremental_over_full_only={
            k: round(res[k]["lum_full"] - res[k]["lum_full_fullonly"], 4) for k in ("auc", "gauc")
        }
        if "lum_full_fullonly" in res["auc"]
        else None,
        ranker_seeds=seeds,
        per_seed=per_seed,
        gain_bootstrap={
            "reps": args.bootstrap,
            "over": "users",
            **{
                v: {
                    m: {k: round(x, 4) for k, x in d.items()}
                    for m, d in bootstrap_gain(
                        probs["no_lum"], probs[v], scored_y, scored_u, reps=args.bootstrap
                    ).items()
                }
                for v in variants[1:]
                if args.bootstrap
            },
        },
        config=_config(over),
    )
    if data.world is not None:
        res["oracle"] = _round(
            {k: v for k, v in oracle_auc(data.world, ev).items() if k in ("auc", "gauc")}
        )
    return res


def multi_epoch(args: argparse.Namespace, over: dict[str, dict[str, str]]) -> dict[str, Any]:
    data = load(args.data, over)
    t, tr, ev = split(data.samples, args.split)
    warnings = check_split(tr, ev, data)
    rcfg = build(RankerConfig, {**over.get("ranker", {}), "lum_features": "off"}, source="bench")
    ecfg = build(EmbeddingsConfig, over.get("embeddings", {}), source="bench")
    res: dict[str, Any] = {"auc": {}, "gauc": {}, "train_auc": {}, "seconds": {}}
    for mode in ("naive", "sparse_reset", "single"):
        start = time.perf_counter()
        out = train_epochs(RankerEngine(rcfg, ecfg, 1, 1), tr, ev, mode=mode, epochs=args.epochs)
        res["seconds"][mode] = round(time.perf_counter() - start, 1)
        aucs = [round(r.eval["auc"], 4) for r in out]
        gaucs = [round(r.eval["gauc"], 4) for r in out]
        res["auc"][mode] = aucs[0] if mode == "single" else aucs
        res["gauc"][mode] = gaucs[0] if mode == "single" else gaucs
        res["train_auc"][mode] = [round(r.train["auc"], 4) for r in out]
    res.update(
        bench="multi-epoch",
        data=args.data,
        epochs=args.epochs,
        lum_features="off",
        split={"quantile": args.split, "ts_ms": t, "train": len(tr), "eval": len(ev)},
        labels=label_report(data, tr, ev),
        warnings=warnings,
        config=_config(over),
    )
    return res


def throughput(args: argparse.Namespace, over: dict[str, dict[str, str]]) -> dict[str, Any]:
    gen = {**SYNTHETIC, "events": str(args.events), **over.get("generator", {})}
    s = load("synthetic", {**over, "generator": gen}).samples
    rcfg = build(RankerConfig, over.get("ranker", {}), source="bench")
    ecfg = build(EmbeddingsConfig, over.get("embeddings", {}), source="bench")
    rng = np.random.default_rng(0)
    n_q, dim = 16, 64
    users, items = np.unique(s.rows["user"]), np.unique(s.rows["item"])
    conds = np.unique(s.rows["cond"])[:n_q]
    vec = MemoryVectors(ConditionLayout(("cond",), conds, n_q, dim))
    vec.add_version(1, watermark=0, items=items, item_vectors=rng.normal(size=(len(items), dim)))
    vec.add(
        1, users, np.zeros(len(users), np.int64), rng.normal(size=(len(users), len(conds), dim))
    )
    b = rcfg.batch_size
    warm, timed = 3, args.batches
    need = (warm + timed) * b
    if len(s) < need:
        raise SystemExit(f"throughput: {len(s)} samples, need {need}; raise --events")
    runs: dict[str, dict[str, list[float]]] = {
        "lum": {"fused": [], "plain": []},
        "no_lum": {"fused": [], "plain": []},
    }
    for _ in range(args.repeats):
        for lum in ("lum", "no_lum"):
            cfg = dataclasses.replace(rcfg, lum_features="full" if lum == "lum" else "off")
            for kind in ("fused", "plain"):
                eng = RankerEngine(cfg, ecfg, dim, n_q, fused=kind == "fused")
                for i in range(warm):
                    eng.step(s.slice(i * b, (i + 1) * b), vec)
                start = time.perf_counter()
                for i in range(warm, warm + timed):
                    eng.step(s.slice(i * b, (i + 1) * b), vec)
                runs[lum][kind].append(timed * b / (time.perf_counter() - start))
    med = {lum: {k: round(float(np.median(v)), 0) for k, v in r.items()} for lum, r in runs.items()}
    return {
        "bench": "throughput",
        "data": "synthetic",
        "samples_per_s": med["lum"],
        "samples_per_s_no_lum": med["no_lum"],
        "runs": {lum: {k: [round(x) for x in v] for k, v in r.items()} for lum, r in runs.items()},
        "batches_timed": timed,
        "batch_size": b,
        "lum": {"conditions": n_q, "dim": dim},
        "config": {"ranker": over.get("ranker", {}), "embeddings": over.get("embeddings", {})},
    }


def source(args: argparse.Namespace, over: dict[str, dict[str, str]]) -> dict[str, Any]:
    """Drain lum.samples on the embedded broker: the ranker's PositionedConsumer (confluent-kafka)
    against the kafka-python consumer it replaced (assign + poll, the old loop), the same
    topic, alternating, ``--repeats`` times; messages/s and samples/s, median."""
    from kafka import TopicPartition as KafkaPythonTP

    from streams.config import BrokerConfig, KafkaConfig, WorkerConfig
    from streams.kafka.broker import EmbeddedBroker
    from streams.kafka.consumer import PositionedConsumer, end_offsets, make_consumer
    from streams.kafka.producer import make_producer
    from streams.kafka.topics import ensure_topics

    gen = {**SYNTHETIC, "events": str(args.events), **over.get("generator", {})}
    per_message = WorkerConfig().max_samples_per_message
    worker = worker_cfg("synthetic", over)[0]
    blocks = [
        b for big in to_blocks(synthetic(gen)[0], worker)[0] for b in split_blocks(big, per_message)
    ]
    raw = [encode_block(b) for b in blocks]
    n_samples = sum(len(b) for b in blocks)
    runs: dict[str, list[float]] = {"confluent": [], "kafka_python": []}
    with EmbeddedBroker(BrokerConfig(), metrics=Metrics(CollectorRegistry())) as broker:
        kcfg = build(KafkaConfig, {"partitions": "4", **over.get("kafka", {})}, source="bench")
        ensure_topics(kcfg, broker.bootstrap)
        topic = kcfg.topic_samples
        with make_producer(kcfg, broker.bootstrap) as producer:
            for i, value in enumerate(raw):
                producer.send(topic, str(i % 64).encode(), value)
            producer.flush()
        ends = end_offsets(kcfg, broker.bootstrap, topic)
        total = sum(ends.values())

        def confluent() -> int:
            src = PositionedConsumer(kcfg, broker.bootstrap, topic, stop_at=ends)
            got = 0
            while not src.exhausted():
                got += len(src.poll(64, 0.2))
            src.close()
            return got

        def kafka_python() -> int:
            consumer = make_consumer(kcfg, broker.bootstrap)
            tps = [KafkaPythonTP(topic, p) for p in sorted(ends)]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            got = 0
            while any(consumer.position(tp) < ends[tp.partition] for tp in tps):
                got += sum(len(r) for r in consumer.poll(timeout_ms=200, max_records=64).values())
            consumer.close()
            return got

        for _ in range(args.repeats):
            for name, drain in (("confluent", confluent), ("kafka_python", kafka_python)):
                start = time.perf_counter()
                got = drain()
                runs[name].append(got / (time.perf_counter() - start))
                if got != total:
                    raise SystemExit(f"source: {name} read {got} messages, expected {total}")
    med = {k: float(np.median(v)) for k, v in runs.items()}
    return {
        "bench": "source",
        "data": "synthetic",
        "messages": total,
        "samples": n_samples,
        "mb": round(sum(map(len, raw)) / 1e6, 1),
        "messages_per_s": {k: round(v, 1) for k, v in med.items()},
        "samples_per_s": {k: round(v * n_samples / total) for k, v in med.items()},
        "runs": {k: [round(x, 1) for x in v] for k, v in runs.items()},
        "ratio": round(med["confluent"] / med["kafka_python"], 1),
        "config": {"kafka": over.get("kafka", {}), "generator": gen},
    }


# -- output --------------------------------------------------------------------------------------
def print_table(res: dict[str, Any]) -> None:
    print(f"# ranker {res['bench']} on {res['data']}")
    print(f"machine: {res['machine']}")
    print(f"config overrides: {res['config']}")
    if "labels" in res:
        lab = res["labels"]
        print(
            f"label window: {lab['window_s']:g} s (from {lab['window_from']}); label rate "
            f"train {lab['train_label_rate']} / eval {lab['eval_label_rate']}; positives "
            f"outside the window {lab['positives_outside_window']:,} (late "
            f"{lab['positives_late']:,}, no impression {lab['positives_no_impression']:,})"
        )
    for w in res.get("warnings", []):
        print(f"WARNING: {w}")
    if res["bench"] == "lum-gain":
        print(f"split: {res['split']}")
        print(f"backbone: {res['backbone']}")
        print(f"vector coverage on eval: {res['vector_coverage']}")
        if len(res["ranker_seeds"]) > 1:
            print(f"ranker seeds {res['ranker_seeds']}: the ranker rows are their means")
            for k, d in res["per_seed"].items():
                print(f"  seed {k}: AUC {d['auc']}  GAUC {d['gauc']}")
        print(f"{'variant':<18} {'AUC':>8} {'GAUC':>8} {'logloss':>8}")
        for v in res["auc"]:
            print(f"{v:<18} {_num(res['auc'][v])} {_num(res['gauc'][v])} {_num(res['logloss'][v])}")
        if "oracle" in res:
            print(f"{'oracle':<18} {_num(res['oracle']['auc'])} {_num(res['oracle']['gauc'])}")
        print(f"gain lum_full - no_lum: {res['gain']}")
        print(f"incremental over full-only (lum_full): {res['incremental_over_full_only']}")
        boot = res["gain_bootstrap"]
        if boot["reps"]:
            print(f"gain over no_lum, 95% interval ({boot['reps']} user-bootstrap draws):")
            for v in (v for v in VARIANTS[1:] if v in boot):
                print(
                    f"{v:<18} "
                    + "  ".join(
                        f"{m.upper()} {d['gain']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]"
                        for m, d in boot[v].items()
                    )
                )
    elif res["bench"] == "multi-epoch":
        print(f"split: {res['split']}; lum features: {res['lum_features']}")
        print(
            f"{'mode':<14}" + "".join(f"{'epoch ' + str(e + 1):>10}" for e in range(res["epochs"]))
        )
        for mode in ("naive", "sparse_reset"):
            print(f"{mode + ' AUC':<14}" + "".join(_num(a, 10) for a in res["auc"][mode]))
            print(f"{mode + ' GAUC':<14}" + "".join(_num(a, 10) for a in res["gauc"][mode]))
        single = res["auc"]["single"], res["gauc"]["single"]
        print(f"{'single AUC':<14}{_num(single[0], 10)}   GAUC {_num(single[1], 0)}")
    elif res["bench"] == "source":
        print(f"{res['messages']:,} sample blocks ({res['samples']:,} samples, {res['mb']} MB)")
        print(f"{'consumer':<14} {'messages/s':>11} {'samples/s':>11}")
        for k in ("confluent", "kafka_python"):
            print(f"{k:<14} {res['messages_per_s'][k]:>11,.1f} {res['samples_per_s'][k]:>11,}")
        print(f"ratio confluent / kafka-python: {res['ratio']}x")
    else:
        print(f"batch {res['batch_size']}, {res['batches_timed']} timed batches, LUM {res['lum']}")
        print(f"{'':<10} {'fused':>10} {'plain':>10}")
        for key, name in (("samples_per_s", "LUM full"), ("samples_per_s_no_lum", "no LUM")):
            print(f"{name:<10} {res[key]['fused']:>10,.0f} {res[key]['plain']:>10,.0f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bench", choices=("lum-gain", "multi-epoch", "throughput", "source"))
    p.add_argument("--data", default="synthetic", help="synthetic or an event log file")
    p.add_argument("--split", type=float, default=0.8, help="train share of sample time")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument(
        "--actions",
        default="",
        help="lum-gain: actions forming the backbone's "
        "sequences (default: click,purchase on synthetic, all on logs)",
    )
    p.add_argument(
        "--backbone-split",
        type=float,
        default=0.0,
        help="lum-gain: the backbone sees events before this sample-time quantile "
        "(0: the ranker's split)",
    )
    p.add_argument(
        "--refresh",
        type=int,
        default=2000,
        help="lum-gain: samples between incremental vector passes (0: none; then the "
        "incremental variants equal full-only)",
    )
    p.add_argument(
        "--protocol",
        choices=("time", "user"),
        default="time",
        help="lum-gain: a global time split (time) or each user's last samples held out (user)",
    )
    p.add_argument(
        "--seeds",
        default="",
        help="lum-gain: ranker seeds (ranker.seed: the dense initialisation), "
        "comma-separated; every variant is trained once per seed and reported as the mean "
        "(default: the configured ranker.seed)",
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=200,
        help="lum-gain: user-bootstrap draws for the gains' 95%% intervals (0: none)",
    )
    p.add_argument(
        "--events", type=int, default=60_000, help="throughput, source: generator events"
    )
    p.add_argument("--batches", type=int, default=30, help="throughput: timed batches")
    p.add_argument("--repeats", type=int, default=3, help="throughput, source: interleaved repeats")
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: the machine is shared)"
    )
    p.add_argument("--set", action="append", default=[], metavar="SECTION.NAME=VALUE")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args()
    if args.bootstrap < 0:
        p.error("--bootstrap: expected 0 (none) or a number of draws")
    args.seed_list = parse_seeds(args.seeds) if args.seeds else None
    torch.set_num_threads(args.threads)
    over = overrides(args.set)
    run = {
        "lum-gain": lum_gain,
        "multi-epoch": multi_epoch,
        "throughput": throughput,
        "source": source,
    }[args.bench]
    start = time.perf_counter()
    res = run(args, over)
    res["machine"] = machine(args.threads)
    res["total_seconds"] = round(time.perf_counter() - start, 1)
    if args.json:
        print(json.dumps(res))
    else:
        print_table(res)


if __name__ == "__main__":
    main()
