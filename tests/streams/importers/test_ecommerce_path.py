"""The docs/importers.md worked example, small: an e-commerce log (view/cart/buy, sorted by
user, purchases minutes to hours after the view; ``bench/shoplog.py``) from import to
``lum-gain``."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

from bench.ranker import load, lum_gain, split
from bench.shoplog import write_log
from lumstream.cli import main
from streams.contracts.eventlog import read_meta

MAP = ["--map", "user_id=user,item_id=item,ts=ts,action=behavior,category=category"]
ACTIONS = ["--action-map", "pv=impression,cart=click,fav=click,buy=click", "--ts-unit", "s"]
OVER = {
    "ranker": {"batch_size": "128", "history_len": "20", "mlp": "16", "attention_hidden": "8"},
    "embeddings": {"dim": "8", "user_rows": "512", "item_rows": "1024", "admit_count": "1"},
    "backbone": {"epochs": "1", "dim": "16"},
}


def bench_args(data: Path) -> argparse.Namespace:
    return argparse.Namespace(
        data=str(data),
        actions="",
        split=0.8,
        backbone_split=0.0,
        refresh=500,
        protocol="time",
        seed_list=[5],
        bootstrap=20,
    )


@pytest.mark.slow
def test_ecommerce_log_from_import_to_lum_gain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "shop.csv"
    assert write_log(log) > 100
    out = tmp_path / "shop.jsonl"
    assert main(["import", "generic", str(log), *MAP, *ACTIONS, "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "recommended worker.label_window_s" in text
    assert "came after a later one" in text
    meta = read_meta(out)
    assert meta is not None
    window = meta["recommended_label_window_s"]
    assert isinstance(window, float)
    assert 3600 < window <= 6 * 3600 + 600

    data = load(str(out), OVER)  # the recorded window, not the 60 s default
    assert data.worker.label_window_s == window
    assert data.window_from.endswith(".meta.json")
    _, tr, ev = split(data.samples, 0.8)
    assert tr.rows["label"].sum() > 0
    assert ev.rows["label"].sum() > 0
    res = lum_gain(bench_args(out), OVER)
    assert res["labels"]["window_s"] == window
    assert res["labels"]["train_label_rate"] > 0
    assert res["labels"]["eval_label_rate"] > 0
    for metric in ("auc", "gauc", "logloss"):
        for variant, value in res[metric].items():
            assert math.isfinite(value), (metric, variant, value)
    json.dumps(res)  # the --json form holds no nan either
    assert "nan" not in json.dumps(res).lower()


def test_user_sorted_log_with_a_short_window_is_refused_not_nan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "shop.csv"
    write_log(log, users=40)
    out = tmp_path / "shop.jsonl"
    args = ["import", "generic", str(log), *MAP, *ACTIONS, "--out", str(out), "--quiet"]
    assert main([*args, "--presorted"]) == 0  # replayed in user order, as before sorting
    capsys.readouterr()
    with pytest.raises(SystemExit, match=r"part: .* no positive .* Fix: .*a label window") as exc:
        lum_gain(bench_args(out), {**OVER, "worker": {"label_window_s": "60"}})
    assert "label window 60 s from --set" in str(exc.value)
