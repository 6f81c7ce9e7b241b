"""The closed-loop demo's report: one PNG (served CTR per arm over time, the trainers'
progressive AUC, latency percentiles, freshness) and the alerts that fired."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lumstream.pipeline.simulated_users import LoopResult


@dataclass
class Series:
    """A named time series (wall-clock seconds, values)."""

    name: str
    times: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 99, 99.9)) -> list[float]:
    if not values:
        return [float("nan")] * len(qs)
    return [float(x) for x in np.percentile(np.asarray(values, dtype=np.float64), qs)]


def write_report(
    path: Path,
    loop: LoopResult,
    auc: Mapping[str, Series],
    version_lag_s: Mapping[str, float],
    alerts: Sequence[str],
    bucket_s: float,
) -> Path:
    """Draw the report into ``path`` (PNG); returns it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    t0 = loop.started
    ax = axes[0][0]
    for name, stats in loop.arms.items():
        keys = sorted(stats.buckets)
        xs = [(k + 0.5) * bucket_s for k in keys]
        ys = [stats.buckets[k][1] / max(stats.buckets[k][0], 1) for k in keys]
        ax.plot(xs, ys, marker="o", label=f"{name} (overall {stats.ctr:.2%})")
    if loop.drift_at is not None:
        ax.axvline(loop.drift_at - t0, color="grey", ls="--", label="users' tastes shift")
    ax.set_title("served CTR per arm")
    ax.set_xlabel("seconds into the live loop")
    ax.set_ylabel("clicks / impressions")
    ax.legend(fontsize=8)

    ax = axes[0][1]
    for name, s in auc.items():
        if s.times:
            ax.plot([t - t0 for t in s.times], s.values, label=name)
    if loop.drift_at is not None:
        ax.axvline(loop.drift_at - t0, color="grey", ls="--")
    ax.set_title("trainers' progressive AUC (score, then learn)")
    ax.set_xlabel("seconds into the live loop")
    ax.legend(fontsize=8)

    ax = axes[1][0]
    names = [n for n, s in loop.arms.items() if s.latencies_ms]
    ps = np.array([percentiles(loop.arms[n].latencies_ms) for n in names]).reshape(-1, 3)
    x = np.arange(len(names))
    for j, label in enumerate(("p50", "p99", "p99.9")):
        ax.bar(x + (j - 1) * 0.25, ps[:, j] if len(names) else [], width=0.25, label=label)
    ax.set_xticks(x, names)
    ax.set_yscale("log")
    ax.set_title("request latency from the scheduled send (ms, open loop)")
    ax.legend(fontsize=8)

    ax = axes[1][1]
    if loop.freshness_s:
        ax.hist(
            np.asarray(loop.freshness_s) * 1000.0,
            bins=30,
            alpha=0.7,
            label="click → served history (ms)",
        )
    ax.set_title("freshness")
    text = []
    if version_lag_s:
        means = ", ".join(f"{a} {v:.0f} s" for a, v in version_lag_s.items())
        text.append(f"sample → published version (mean): {means}")
    if loop.freshness_s:
        p50, p99 = percentiles(loop.freshness_s, (50, 99))
        text.append(f"click → served history: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
    text.append("alerts fired:" if alerts else "alerts fired: none")
    text += [f"  {a[:68]}" for a in alerts[:12]]
    ax.text(
        0.02,
        0.98,
        "\n".join(text),
        transform=ax.transAxes,
        va="top",
        fontsize=8,
        family="monospace",
    )
    ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("lumstream closed-loop demo")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
