"""Benchmarks of the LUM backbone: retrieval quality, scaling, packing, group query.

Usage::

    python bench/backbone.py quality --data /tmp/ml.jsonl          # MovieLens event log
    python bench/backbone.py quality --data synthetic --json
    python bench/backbone.py scaling --data /tmp/ml.jsonl --plot scaling.png
    python bench/backbone.py packing --data synthetic
    python bench/backbone.py group-query --data /tmp/ml.jsonl --n 4,16,64

``--data`` is ``synthetic`` (the built-in generator, click sequences) or an event log written
by ``lumstream import`` (e.g. ``lumstream import movielens ml-latest-small --out ml.jsonl``;
every rating is an impression, so impressions form the sequences). ``--set NAME=VALUE``
overrides a backbone setting (``--set dim=32``). Each run prints a table with its
configuration and machine, or with ``--json`` one JSON object.

What each measures:

- quality: leave-last-out, full ranking, history excluded: HR@10, NDCG@10, MRR of a
  SASRec reference (item ids + positions, full softmax, dot product: the same training
  code with ``side_features=false``), the next-item baseline and the next-condition-item
  LUM (same code and settings), and popularity. LUM is scored queried with the held-out
  event's condition (``lum``), the same with the ranking restricted to the items seen with
  that condition (``lum+filter``; ``sasrec+filter`` is the reference given the same
  filter), with the learned 'any' condition (``lum any``), with the user's most frequent
  condition (``lum most-frequent``) and with the most frequent one that is not the
  target's (``lum other``). ``--models`` picks the models trained;
- scaling: HR@10 (= R@10) over >= 4 model sizes and a sequence-length sweep, with the fit
  R@10 = a * ln(P) + b (and a * ln(L) + b), plotted to a PNG;
- packing: training tokens/s packed vs padded on the same batches; the bound is
  padded tokens / real tokens;
- group-query: vectors/s one condition at a time (one packed pass per condition) vs grouped
  (one pass for all N) at each N; the grouped vectors are checked against the padded
  one-at-a-time reference.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.settings import build
from streams.config import EventConfig, GeneratorConfig
from trainer.backbone.config import BackboneConfig
from trainer.backbone.data import (
    EventLogSequences,
    MemorySequences,
    Pairs,
    action_indices,
    prepare,
    sequences_from_events,
)
from trainer.backbone.encoder import LumBackbone
from trainer.backbone.eval import HeldOut, evaluate, leave_last_out, popularity
from trainer.backbone.group_query import (
    compute_vectors,
    compute_vectors_one_at_a_time,
)
from trainer.backbone.packing import collate_packed, collate_padded
from trainer.backbone.tokens import UserTokens, Vocabs
from trainer.backbone.train import (
    build_model,
    global_batches,
    make_sampler,
    step_candidates,
    step_loss,
    train,
)

QUALITY_DEFAULTS = {
    "epochs": "40",
    "max_len": "100",
    "batch_users": "16",
    "lr": "0.002",
    "dropout": "0.2",
    "patience": "3",
}


# -- data and machine --------------------------------------------------------------------------
def load_pairs(data: str, actions: str, users: int, events: int) -> tuple[Pairs, str]:
    """(user, sequence) pairs of ``data`` filtered to ``actions``; and the actions used."""
    cfg = EventConfig()
    if data == "synthetic":
        from streams.contracts.events import Event
        from streams.generator import ClickStream

        acts = actions or "click"
        gen = GeneratorConfig(users=users, items=4 * users, events=events, base_ctr=0.1)
        stream = ClickStream(gen)
        seqs = sequences_from_events((e for e in stream.events() if isinstance(e, Event)), cfg)
        source: Any = MemorySequences(seqs)
    else:
        acts = actions or "impression"
        source = EventLogSequences(data, cfg)
    pairs, _ = prepare(source, action_indices(tuple(acts.split(",")), cfg))
    return pairs, acts


def machine(threads: int) -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": threads,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def backbone_cfg(
    overrides: list[str], defaults: dict[str, str] | None = None, **fixed: Any
) -> BackboneConfig:
    values = dict(defaults or {})
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected NAME=VALUE")
        values[key.strip()] = value
    values.update({k: str(v) for k, v in fixed.items()})
    return build(BackboneConfig, values, source="--set")


def lengths_summary(pairs: Pairs) -> dict[str, float]:
    lens = np.array([len(s) for _, s in pairs])
    return {
        "users": len(lens),
        "events": int(lens.sum()),
        "median_len": float(np.median(lens)),
        "p90_len": float(np.percentile(lens, 90)),
        "max_len": int(lens.max()),
    }


# -- quality -----------------------------------------------------------------------------------
SASREC: dict[str, Any] = {
    "objective": "next_item",
    "side_features": False,
    "loss": "full",
    "similarity": "dot",
}
MODELS = ("sasrec", "next_item", "lum")
ANY = np.iinfo(np.int64).min  # a condition id no vocab holds: the learned 'any' (OOV) row


def run_quality(args: argparse.Namespace) -> dict[str, Any]:
    pairs, acts = load_pairs(args.data, args.actions, args.users, args.events)
    base = backbone_cfg(args.set, QUALITY_DEFAULTS)
    train_pairs, held = leave_last_out(pairs, base.condition_fields)
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise SystemExit(f"--models: {unknown[0]!r} is not one of {', '.join(MODELS)}")
    allowed = condition_items(train_pairs, held, base)
    out: dict[str, Any] = {
        "bench": "quality",
        "data": args.data,
        "actions": acts,
        "dataset": lengths_summary(pairs),
        "machine": machine(args.threads),
        "config": _cfg_dict(base),
        "models": models,
        "rows": {},
    }
    rows = out["rows"]
    for name in models:
        if name == "sasrec":  # the reference: ids + positions, full softmax, dot product
            cfg = dataclasses.replace(base, **SASREC)
        else:
            cfg = dataclasses.replace(base, objective=name)
        res = train(cfg, train_pairs)
        info = {
            "params": res.model.param_count(),
            "steps": res.steps,
            "epochs": res.epochs,
            "best_epoch": res.best_epoch,
            "train_s": round(res.seconds, 1),
            "tokens_per_s": round(res.tokens_per_s),
            "final_loss": round(float(np.mean(res.losses[-10:])), 4),
            "validation_ndcg@10": [round(v["ndcg@10"], 4) for v in res.validation],
        }
        print(f"  {name}: {info}", file=sys.stderr)
        if name == "lum":
            rows["lum"] = {**evaluate(res.model, held), **info}
            rows["lum+filter"] = evaluate(res.model, held, allowed=allowed)
            rows["lum any"] = evaluate(res.model, with_conditions(held, ANY))
            rows["lum most-frequent"] = evaluate(res.model, frequent_condition(held, cfg))
            rows["lum other"] = evaluate(res.model, frequent_condition(held, cfg, other=True))
        else:
            rows[name] = {**evaluate(res.model, held), **info}
            if name == "sasrec":
                rows["sasrec+filter"] = evaluate(res.model, held, allowed=allowed)
    rows["popularity"] = popularity(train_pairs, held)
    return out


def condition_items(train_pairs: Pairs, held: HeldOut, cfg: BackboneConfig) -> list[np.ndarray]:
    """Per held-out user, the item ids seen in training with the held-out event's condition
    (the 'filter' rows: the condition used as a hard candidate filter)."""
    by_cond: dict[tuple[int, ...], set[int]] = {}
    for _, s in train_pairs:
        combo = np.stack([s[f] for f in cfg.condition_fields], axis=-1)
        for key, item in zip(map(tuple, combo.tolist()), s["item"].tolist(), strict=True):
            by_cond.setdefault(key, set()).add(item)
    return [np.fromiter(by_cond.get(tuple(c), ()), np.int64) for c in held.conds.tolist()]


def with_conditions(held: HeldOut, cond: int) -> HeldOut:
    """Every held-out user queried with the same condition id."""
    return dataclasses.replace(held, conds=np.full_like(held.conds, cond))


def frequent_condition(held: HeldOut, cfg: BackboneConfig, other: bool = False) -> HeldOut:
    """The held-out users queried with their own most frequent history condition instead
    of the held-out event's (LUM without any hint about the target); ``other``: the most
    frequent one that is NOT the held-out event's (a condition known to be wrong)."""
    conds = []
    for (_, hist), target in zip(held.histories, held.conds, strict=True):
        combo = np.stack([hist[f] for f in cfg.condition_fields], axis=-1)
        uniq, counts = np.unique(combo, axis=0, return_counts=True)
        if other:
            wrong = ~(uniq == target).all(axis=1)
            uniq, counts = (uniq[wrong], counts[wrong]) if wrong.any() else (uniq, counts)
        conds.append(uniq[np.argmax(counts)])
    return dataclasses.replace(held, conds=np.array(conds, np.int64))


def _cfg_dict(cfg: BackboneConfig) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


# -- scaling -----------------------------------------------------------------------------------
def fit_log(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares y = a * ln(x) + b."""
    a, b = np.polyfit(np.log(np.asarray(xs, np.float64)), np.asarray(ys, np.float64), 1)
    return float(a), float(b)


def run_scaling(args: argparse.Namespace) -> dict[str, Any]:
    pairs, acts = load_pairs(args.data, args.actions, args.users, args.events)
    base = backbone_cfg(args.set, {**QUALITY_DEFAULTS, "epochs": str(args.epochs)})
    train_pairs, held = leave_last_out(pairs, base.condition_fields)
    points = []
    for size in args.sizes.split(","):
        dim, layers = (int(x) for x in size.split("x"))
        cfg = dataclasses.replace(
            base, dim=dim, layers=layers, heads=max(1, dim // 32), max_len=args.size_len
        )
        points.append(_scale_point(cfg, train_pairs, held, "size"))
    lengths = []
    dim, layers = (int(x) for x in args.length_size.split("x"))
    for n in (int(x) for x in args.lengths.split(",")):
        cfg = dataclasses.replace(base, dim=dim, layers=layers, heads=max(1, dim // 32), max_len=n)
        lengths.append(_scale_point(cfg, train_pairs, held, "length"))
    a, b = fit_log([p["params"] for p in points], [p["hr@10"] for p in points])
    al, bl = fit_log([p["max_len"] for p in lengths], [p["hr@10"] for p in lengths])
    out = {
        "bench": "scaling",
        "data": args.data,
        "actions": acts,
        "dataset": lengths_summary(pairs),
        "machine": machine(args.threads),
        "config": _cfg_dict(base),
        "a": a,
        "b": b,
        "points": points,
        "length_fit": {"a": al, "b": bl},
        "length_points": lengths,
    }
    if args.plot:
        _plot(out, args.plot)
        out["plot"] = args.plot
    return out


def _scale_point(cfg: BackboneConfig, train_pairs: Pairs, held: Any, axis: str) -> dict[str, Any]:
    res = train(cfg, train_pairs)
    m = evaluate(res.model, held)
    point = {
        "axis": axis,
        "dim": cfg.dim,
        "layers": cfg.layers,
        "heads": cfg.heads,
        "max_len": cfg.max_len,
        "params": res.model.param_count(),
        "hr@10": m["hr@10"],
        "ndcg@10": m["ndcg@10"],
        "mrr": m["mrr"],
        "train_s": round(res.seconds, 1),
    }
    print(
        f"  {axis}: dim={cfg.dim} layers={cfg.layers} len={cfg.max_len} "
        f"P={point['params']:,} hr@10={m['hr@10']:.4f} ({res.seconds:.0f}s)",
        file=sys.stderr,
    )
    return point


def _plot(out: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, pts, key, fit, label in (
        (ax1, out["points"], "params", (out["a"], out["b"]), "parameters P"),
        (
            ax2,
            out["length_points"],
            "max_len",
            (out["length_fit"]["a"], out["length_fit"]["b"]),
            "sequence length L",
        ),
    ):
        xs = np.array([p[key] for p in pts], np.float64)
        ys = np.array([p["hr@10"] for p in pts])
        ax.scatter(xs, ys)
        grid = np.geomspace(xs.min(), xs.max(), 50)
        ax.plot(
            grid, fit[0] * np.log(grid) + fit[1], label=f"R@10 = {fit[0]:.4f}·ln(x) {fit[1]:+.4f}"
        )
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(xs, [f"{x:,.0f}" for x in xs], rotation=30)
        ax.set_xlabel(label)
        ax.set_ylabel("R@10 (HR@10)")
        ax.legend()
    fig.suptitle(f"LUM scaling on {Path(out['data']).name}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# -- packing -----------------------------------------------------------------------------------
def run_packing(args: argparse.Namespace) -> dict[str, Any]:
    pairs, acts = load_pairs(args.data, args.actions, args.users, args.events)
    cfg = backbone_cfg(args.set, {"max_len": "200"})
    model = build_model(cfg, pairs, None)
    tokens = [model.tokenizer.encode(s) for _, s in pairs]
    batches = global_batches(len(tokens), cfg.batch_users, 0, cfg.seed)[: args.steps]
    real = sum(len(tokens[i]) for b in batches for i in b)
    padded = sum(max(len(tokens[i]) for i in b) * len(b) for b in batches)
    layouts = _time_layouts(cfg, pairs, tokens, batches, args.repeats)
    speedup = layouts["packed"]["tokens_per_s"] / layouts["padded"]["tokens_per_s"]
    bound = padded / real
    return {
        "bench": "packing",
        "data": args.data,
        "actions": acts,
        "dataset": lengths_summary(pairs),
        "machine": machine(args.threads),
        "config": _cfg_dict(cfg),
        "steps": len(batches),
        "real_tokens": real,
        "padded_tokens": padded,
        "speedup": speedup,
        "bound": bound,
        "share_of_bound": speedup / bound,
        **layouts,
    }


def _time_layouts(
    cfg: BackboneConfig,
    pairs: Pairs,
    tokens: list[UserTokens],
    batches: list[np.ndarray],
    repeats: int,
) -> dict[str, dict[str, float]]:
    """Training steps (forward, backward, optimiser) of the padded and the packed layout,
    interleaved step by step so that load from other processes hits both alike; each
    step's best time over ``repeats`` passes is kept and the steps' times summed."""
    runs: dict[str, Any] = {}
    for name, collate in (("padded", collate_padded), ("packed", collate_packed)):
        model = build_model(cfg, pairs, None).train()
        prepared = []
        for users in batches:
            targets = torch.from_numpy(np.concatenate([tokens[i].target for i in users]))
            b = collate([tokens[i] for i in users])
            cand = step_candidates(cfg, len(model.vocabs.items), targets, make_sampler(cfg, model))
            prepared.append((b, cand, float((targets > 0).sum())))
        step_loss(model, *prepared[0][:2], cfg, prepared[0][2]).backward()  # warm-up
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
        runs[name] = (model, opt, prepared)
    best = {name: [float("inf")] * len(batches) for name in runs}
    for _ in range(repeats):
        for i in range(len(batches)):
            for name, (model, opt, prepared) in runs.items():
                b, cand, n = prepared[i]
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                step_loss(model, b, cand, cfg, n).backward()
                opt.step()
                best[name][i] = min(best[name][i], time.perf_counter() - t0)
    out = {}
    for name, (_, _, prepared) in runs.items():
        real = sum(b.real_tokens for b, _, _ in prepared)
        out[name] = {
            "tokens_per_s": real / sum(best[name]),
            "seconds": sum(best[name]),
            "rows": sum(b.kind.shape[0] for b, _, _ in prepared),
            "fill": real / sum(b.kind.numel() for b, _, _ in prepared),
        }
    return out


# -- group query -------------------------------------------------------------------------------
def run_group_query(args: argparse.Namespace) -> dict[str, Any]:
    pairs, acts = load_pairs(args.data, args.actions, args.users, args.events)
    cfg = backbone_cfg(args.set, {"max_len": "200"})
    torch.manual_seed(cfg.seed)
    model = LumBackbone(cfg, Vocabs.build([s for _, s in pairs], cfg)).eval()
    rng = np.random.default_rng(cfg.seed)
    sample = [
        pairs[i]
        for i in sorted(rng.choice(len(pairs), min(args.query_users, len(pairs)), replace=False))
    ]
    known = model.vocabs.conds[0].ids
    ns = [int(x) for x in args.n.split(",")]
    conds = known[np.arange(max(ns)) % len(known)][:, None]  # (N, 1) cycled known conditions
    k = min(args.single_conditions, max(ns))
    _, single = compute_vectors_one_at_a_time(model, sample, conds[:k], batch_users=32)
    compute_vectors(model, sample, conds[:1], batch_users=32)  # warm-up
    out: dict[str, Any] = {
        "bench": "group-query",
        "data": args.data,
        "actions": acts,
        "dataset": lengths_summary(pairs),
        "machine": machine(args.threads),
        "config": _cfg_dict(cfg),
        "users": len(sample),
        "speedup": {},
        "grouped": {},
    }
    for n in ns:
        t_one, t_group = float("inf"), float("inf")
        for r in range(args.repeats):  # interleaved: load from other processes hits both
            t0 = time.perf_counter()  # one condition, one packed pass (the per-query cost)
            compute_vectors(model, sample, conds[r % k : r % k + 1], batch_users=32)
            t_one = min(t_one, time.perf_counter() - t0)
            t0 = time.perf_counter()
            _, grouped = compute_vectors(model, sample, conds[:n], batch_users=32)
            t_group = min(t_group, time.perf_counter() - t0)
        m = min(n, k)
        out["grouped"][str(n)] = {
            "vectors_per_s": len(sample) * n / t_group,
            "one_at_a_time_vectors_per_s": len(sample) / t_one,
            "max_abs_diff_vs_reference": float((grouped[:, :m] - single[:, :m]).abs().max()),
        }
        out["speedup"][str(n)] = n * t_one / t_group
    return out


# -- output ------------------------------------------------------------------------------------
def print_table(res: dict[str, Any]) -> None:
    print(f"# backbone {res['bench']} on {res['data']} (actions: {res['actions']})")
    print(f"machine: {res['machine']}")
    print(f"dataset: {res['dataset']}")
    cfg = res["config"]
    print(
        "config: "
        + ", ".join(
            f"{k}={cfg[k]}"
            for k in (
                "dim",
                "layers",
                "heads",
                "attention",
                "max_len",
                "batch_users",
                "epochs",
                "lr",
                "temperature",
                "dropout",
            )
        )
    )
    if res["bench"] == "quality":
        print(
            "config: "
            + ", ".join(
                f"{k}={cfg[k]}"
                for k in (
                    "loss",
                    "similarity",
                    "sampled_negatives",
                    "logq_correction",
                    "all_positions",
                    "validation",
                    "patience",
                    "any_condition_rate",
                    "item_target_weight",
                    "side_features",
                )
            )
        )
        print("sasrec = the reference: item ids + positions, full softmax, dot product")
        print(
            f"{'model':<18} {'hr@10':>7} {'ndcg@10':>8} {'mrr':>7} {'params':>9} "
            f"{'epochs':>7} {'train_s':>8} {'tok/s':>7}"
        )
        for name, r in res["rows"].items():
            ep = f"{r['best_epoch']}/{r['epochs']}" if "epochs" in r else ""
            print(
                f"{name:<18} {r['hr@10']:>7.4f} {r['ndcg@10']:>8.4f} {r['mrr']:>7.4f} "
                f"{r.get('params', 0):>9,} {ep:>7} {r.get('train_s', 0):>8} "
                f"{r.get('tokens_per_s', 0):>7}"
            )
    elif res["bench"] == "scaling":
        print(
            f"{'axis':<7} {'dim':>4} {'layers':>6} {'len':>5} {'params':>10} {'hr@10':>7} "
            f"{'ndcg@10':>8}"
        )
        for p in res["points"] + res["length_points"]:
            print(
                f"{p['axis']:<7} {p['dim']:>4} {p['layers']:>6} {p['max_len']:>5} "
                f"{p['params']:>10,} {p['hr@10']:>7.4f} {p['ndcg@10']:>8.4f}"
            )
        print(
            f"fit: R@10 = {res['a']:.5f} * ln(P) + {res['b']:.4f};  "
            f"R@10 = {res['length_fit']['a']:.5f} * ln(L) + {res['length_fit']['b']:.4f}"
        )
    elif res["bench"] == "packing":
        print(f"{'layout':<7} {'tokens/s':>9} {'rows':>6} {'fill':>6}")
        for name in ("padded", "packed"):
            r = res[name]
            print(f"{name:<7} {r['tokens_per_s']:>9.0f} {r['rows']:>6} {r['fill']:>6.3f}")
        print(
            f"speedup {res['speedup']:.2f}x, bound {res['bound']:.2f}x "
            f"({100 * res['share_of_bound']:.0f}% of the bound)"
        )
    else:
        print(
            f"{'N':>4} {'one-at-a-time/s':>16} {'grouped/s':>10} {'speedup':>8} {'max|diff|':>10}"
        )
        for n in sorted(res["grouped"], key=int):
            r = res["grouped"][n]
            print(
                f"{n:>4} {r['one_at_a_time_vectors_per_s']:>16.1f} {r['vectors_per_s']:>10.1f} "
                f"{res['speedup'][n]:>7.1f}x {r['max_abs_diff_vs_reference']:>10.2e}"
            )
        print(f"({res['users']} users; max|diff| = grouped vs the padded one-at-a-time reference)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bench", choices=("quality", "scaling", "packing", "group-query"))
    p.add_argument("--data", default="synthetic", help="'synthetic' or an event log path")
    p.add_argument(
        "--actions",
        default="",
        help="actions forming the sequence (comma "
        "separated); default: click for synthetic, impression for event logs",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a backbone setting (repeatable)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--users", type=int, default=600, help="synthetic: users")
    p.add_argument("--events", type=int, default=300_000, help="synthetic: events generated")
    p.add_argument(
        "--models",
        default=",".join(MODELS),
        help="quality: models trained, comma separated (sasrec, next_item, lum)",
    )
    g = p.add_argument_group("scaling")
    g.add_argument("--sizes", default="16x1,32x1,64x2,128x2", help="DIMxLAYERS list")
    g.add_argument("--size-len", type=int, default=100, help="max_len of the size sweep")
    g.add_argument("--lengths", default="25,50,100,200", help="max_len list")
    g.add_argument("--length-size", default="32x1", help="DIMxLAYERS of the length sweep")
    g.add_argument("--epochs", type=int, default=8, help="epochs per scaling point")
    g.add_argument("--plot", default="", help="write the scaling plot to this PNG")
    g = p.add_argument_group("packing")
    g.add_argument("--steps", type=int, default=6, help="training steps timed per layout")
    g.add_argument(
        "--repeats", type=int, default=3, help="timed passes, best kept (packing, group-query)"
    )
    g = p.add_argument_group("group-query")
    g.add_argument("--n", default="4,16,64", help="numbers of query conditions")
    g.add_argument("--query-users", type=int, default=128, help="users queried")
    g.add_argument(
        "--single-conditions",
        type=int,
        default=4,
        help="conditions checked against the padded one-at-a-time reference",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log each epoch to stderr")
    args = p.parse_args(argv)
    if args.verbose:
        import logging

        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    torch.set_num_threads(args.threads)
    run = {
        "quality": run_quality,
        "scaling": run_scaling,
        "packing": run_packing,
        "group-query": run_group_query,
    }[args.bench]
    res = run(args)
    if args.json:
        print(json.dumps(res, sort_keys=True))
    else:
        print_table(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
