"""One feature path: the service's score for a request equals the trainer's score for the
same sample and version (history from the store, ids, vectors, dense features)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
from support.metrics import sample
from support.ranker import samples
from support.serving import Clock, name_of, one_per_user, service, trained, write_histories

from monitoring.metrics import Metrics
from serving.api import Candidate, RankRequest, openapi
from serving.client import RankClient
from serving.config import ServingConfig


def test_service_scores_like_the_trainer(tmp_path: Path, metrics: Metrics) -> None:
    with trained(tmp_path) as t:
        version = t.publish()
        chosen = one_per_user(samples().slice(640, 3000), 40)
        assert len(chosen) >= 30
        assert (chosen.hist_lengths > 0).sum() >= 20  # most have history, some may not
        want = t.engine.score(chosen, t.vectors).probs
        writer = write_histories(t.paths.store, chosen)  # the writer keeps the store open
        clock = Clock()
        try:
            with (
                service(t.paths, ServingConfig(), metrics, clock=clock) as (_, srv),
                RankClient(srv.url) as client,
            ):
                got = []
                for i, row in enumerate(chosen.rows):
                    clock.now_ms = int(row["ts"])
                    req = RankRequest(
                        user_id=str(int(row["user"])),
                        condition=name_of(int(row["cond"])),
                        candidates=[Candidate(str(int(row["item"])), name_of(int(row["cat"])))],
                        request_id=f"q{i}",
                    )
                    resp = client.rank(req)
                    assert resp.request_id == f"q{i}"
                    assert resp.ranker_version == version.name
                    assert resp.history == min(int(chosen.hist_lengths[i]), 20)
                    got.append(resp.items[0].score)
        finally:
            writer.close()
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert sample(metrics, "lumstream_serving_model_version") == 1
    assert sample(
        metrics, "lumstream_serving_request_seconds_count", endpoint="rank", status="ok"
    ) == len(chosen)


def test_many_candidates_sorted_with_flags(tmp_path: Path, metrics: Metrics) -> None:
    with trained(tmp_path, steps=256) as t:
        t.publish()
        chosen = one_per_user(samples().slice(640, 3000), 5)
        writer = write_histories(t.paths.store, chosen)
        try:
            with service(t.paths, ServingConfig(), metrics) as (_, srv), RankClient(srv.url) as c:
                row = chosen.rows[0]
                cands = [Candidate(str(i), "cat1") for i in range(50)]
                cands.append(Candidate("never-seen-item"))
                resp = c.rank(RankRequest(str(int(row["user"])), cands, condition="cat1", k=20))
                flags = [resp.new_user]
                scores = [it.score for it in resp.items]
                assert len(scores) == 20
                assert scores == sorted(scores, reverse=True)
                assert all(0.0 < s < 1.0 for s in scores)
                cold = c.rank(RankRequest("new-user-x", cands[:3], condition="cat1"))
                assert cold.new_user
                assert cold.history == 0
                new_item = c.rank(RankRequest("1", [Candidate("never-seen-item")]))
                assert new_item.items[0].new_item
                flags += [cold.new_user, new_item.new_user]
                status, body = c.raw("GET", "/openapi.json")
                assert status == 200
                spec = msgspec.json.decode(body)
                assert spec == msgspec.json.decode(msgspec.json.encode(openapi()))
                assert "RankRequest" in spec["components"]["schemas"]
        finally:
            writer.close()
    assert sample(metrics, "lumstream_serving_cold_start_total", kind="user") == sum(flags)
    assert (sample(metrics, "lumstream_serving_cold_start_total", kind="item") or 0) >= 2
    assert sample(metrics, "lumstream_serving_candidates_count") == 3
