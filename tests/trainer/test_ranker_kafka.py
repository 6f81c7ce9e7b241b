"""The ranker on a real broker: sample blocks on lum.samples (with a re-sent one) are each
learned once, and a published version is announced on lum.model-updates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from ranker_util import CFG, EMB, blocks, truth_vectors

from monitoring.metrics import Metrics
from streams.config import KafkaConfig
from streams.kafka import end_offsets, make_consumer, make_producer, read_topic
from streams.samples import encode_block
from trainer.ranker.checkpoint import Checkpointer, announce
from trainer.ranker.engine import RankerEngine
from trainer.ranker.loop import StreamingTrainer
from trainer.ranker.source import KafkaSource

torch.set_num_threads(1)


@pytest.mark.integration
def test_train_from_lum_samples_and_announce(
    kafka_cfg: KafkaConfig, metrics: Metrics, tmp_path: Path
) -> None:
    bl = list(blocks()[:12])
    bootstrap = kafka_cfg.bootstrap_servers
    with make_producer(kafka_cfg, bootstrap) as producer:
        for b in [*bl, bl[3]]:  # block 3 re-sent after a worker crash
            producer.send(kafka_cfg.topic_samples, b"p0", encode_block(b))
        producer.flush()
    v = truth_vectors()
    ends = end_offsets(kafka_cfg, bootstrap, kafka_cfg.topic_samples)
    source = KafkaSource(make_consumer(kafka_cfg, bootstrap), kafka_cfg.topic_samples, stop_at=ends)
    with make_producer(kafka_cfg, bootstrap) as producer:

        def send(key: bytes, value: bytes) -> None:
            producer.send(kafka_cfg.topic_model_updates, key, value)
            producer.flush()

        loop = StreamingTrainer(
            CFG,
            RankerEngine(CFG, EMB, v.dim, v.n_conditions, metrics=metrics),
            source,
            vectors=v,
            checkpointer=Checkpointer(tmp_path / "ck", metrics=metrics),
            versions_dir=tmp_path / "versions",
            announce=lambda path, extra: announce(send, path, extra),
            metrics=metrics,
        )
        stats = loop.run()
    source.close()
    assert stats.samples == sum(len(b) for b in bl)
    assert metrics.ranker_samples_skipped.labels(reason="duplicate")._value.get() == len(bl[3])
    (msg,) = read_topic(kafka_cfg, bootstrap, kafka_cfg.topic_model_updates)
    info = json.loads(msg.value)
    assert msg.key == b"ranker"
    assert info["name"] == "r1"
    assert info["backbone"] == "v1"
    assert Path(info["path"]).is_dir()
