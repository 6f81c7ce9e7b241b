"""The ranker on a real broker: sample blocks on lum.samples (with a re-sent one) are each
learned once, and a published version is announced on lum.model-updates."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from support.metrics import sample
from support.ranker import CFG, EMB, blocks, set_args, truth_store, truth_vectors

from monitoring.metrics import Metrics
from streams.config import KafkaConfig
from streams.contracts.samples import encode_block
from streams.kafka.consumer import ConsumerError, PositionedConsumer, end_offsets, read_topic
from streams.kafka.producer import make_producer
from trainer.ranker.checkpoint import Checkpointer, announce, load_ranker
from trainer.ranker.engine import RankerEngine
from trainer.ranker.loop import StreamingTrainer
from trainer.ranker.source import Assembler, Message

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
    source = PositionedConsumer(kafka_cfg, bootstrap, kafka_cfg.topic_samples, stop_at=ends)
    with make_producer(kafka_cfg, bootstrap) as producer:

        def send(key: bytes, value: bytes) -> None:
            producer.send(kafka_cfg.topic_model_updates, key, value)
            producer.flush()

        loop = StreamingTrainer(
            CFG,
            RankerEngine(CFG, EMB, v.layout.dim, v.layout.capacity, metrics=metrics),
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
    assert sample(metrics, "lumstream_ranker_samples_skipped_total", reason="duplicate") == len(
        bl[3]
    )
    (msg,) = read_topic(kafka_cfg, bootstrap, kafka_cfg.topic_model_updates)
    info = json.loads(msg.value)
    assert msg.key == b"ranker"
    assert info["name"] == "r1"
    assert info["backbone"] == "v1"
    assert Path(info["path"]).is_dir()


def _produce(kafka_cfg: KafkaConfig, values: list[tuple[bytes, bytes]]) -> None:
    with make_producer(kafka_cfg, kafka_cfg.bootstrap_servers) as producer:
        for key, value in values:
            producer.send(kafka_cfg.topic_samples, key, value)
        producer.flush()


def _drain(source: PositionedConsumer) -> list[Message]:
    out: list[Message] = []
    while not source.exhausted():
        out += source.poll(7, 0.2)
    return out


@pytest.mark.integration
def test_source_reads_every_partition_in_offset_order_seeks_and_stops_at_the_end(
    kafka_cfg: KafkaConfig,
) -> None:
    bootstrap = kafka_cfg.bootstrap_servers
    values = [(f"u{i % 5}".encode(), f"m{i}".encode()) for i in range(60)]
    _produce(kafka_cfg, values)
    ends = end_offsets(kafka_cfg, bootstrap, kafka_cfg.topic_samples)
    source = PositionedConsumer(kafka_cfg, bootstrap, kafka_cfg.topic_samples, stop_at=ends)
    try:
        got = _drain(source)
        assert sorted(m.value for m in got) == sorted(v for _, v in values)
        by_part: dict[int, list[int]] = {}
        for m in got:
            assert m.next_offset == m.offset + 1
            by_part.setdefault(m.partition, []).append(m.offset)
        assert {p: len(o) for p, o in by_part.items()} == {p: e for p, e in ends.items() if e}
        assert all(o == list(range(len(o))) for o in by_part.values())
        assert source.lag() == dict.fromkeys(source.partitions, 0)  # caught up, empty ones too
        part = max(by_part, key=lambda p: len(by_part[p]))
        source.seek({part: 2})  # a checkpoint's resume position: re-read from offset 2 there
        again = _drain(source)
        assert [m.offset for m in again] == by_part[part][2:]
        assert {m.partition for m in again} == {part}
    finally:
        source.close()


@pytest.mark.integration
def test_source_latest_start_null_values_and_a_missing_topic(
    kafka_cfg: KafkaConfig, metrics: Metrics
) -> None:
    from kafka import KafkaProducer

    bootstrap = kafka_cfg.bootstrap_servers
    _produce(kafka_cfg, [(b"u1", b"old")])
    source = PositionedConsumer(kafka_cfg, bootstrap, kafka_cfg.topic_samples, start="latest")
    try:
        block = encode_block(blocks()[0])
        raw = KafkaProducer(bootstrap_servers=bootstrap)
        raw.send(kafka_cfg.topic_samples, key=b"u1", value=None)  # a tombstone
        raw.send(kafka_cfg.topic_samples, key=b"u1", value=block)
        raw.flush()
        raw.close()
        source.finish_at(end_offsets(kafka_cfg, bootstrap, kafka_cfg.topic_samples))
        got = _drain(source)
        assert [m.value for m in got] == [b"", block]  # "old" came before the start
        assembler = Assembler(metrics=metrics)
        assembler.add(got)
        assert assembler.available() == len(blocks()[0])
        assert (
            sample(metrics, "lumstream_ranker_samples_skipped_total", reason="corrupt_block") == 1
        )
    finally:
        source.close()
    with pytest.raises(ConsumerError, match="no such topic"):
        PositionedConsumer(kafka_cfg, bootstrap, "lum.samples.absent", timeout_s=5.0)


@pytest.mark.integration
def test_train_command_replays_lum_samples_from_the_cluster(
    kafka_cfg: KafkaConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``lumstream train --replay`` (no --from/--to: the whole topic) on a real cluster:
    every partition read to its end, the re-sent block skipped, every sample learned once,
    one version published.

    Blocks of three source partitions, keyed ``p<partition>`` as the worker keys them (so
    each source partition's blocks stay in order in one topic partition)."""
    from lumstream.cli import main

    bl = [dataclasses.replace(b, partition=i % 3) for i, b in enumerate(blocks()[:10])]
    _produce(kafka_cfg, [(f"p{b.partition}".encode(), encode_block(b)) for b in bl])
    _produce(kafka_cfg, [(b"p1", encode_block(bl[4]))])  # re-sent after a worker crash
    ends = end_offsets(kafka_cfg, kafka_cfg.bootstrap_servers, kafka_cfg.topic_samples)
    assert sum(1 for e in ends.values() if e) >= 2  # several topic partitions to read
    truth_store(tmp_path / "vectors")
    ranker = dataclasses.replace(CFG, checkpoint_every_s=0, checkpoint_every_batches=0)
    argv = [
        *set_args("kafka", kafka_cfg),
        *set_args("ranker", ranker),
        *set_args("embeddings", EMB),
        "--set",
        "backbone.dim=8",
        "--set",
        "backbone.heads=2",
        "--set",
        "refresh.condition_capacity=4",
    ]
    argv += ["--set", f"paths.data_dir={tmp_path}", "--set", "metrics.enabled=false"]
    assert main([*argv, "train", "--replay"]) == 0
    err = capsys.readouterr().err
    assert "epoch 1: progressive auc" in err, err
    (version,) = sorted((tmp_path / "ranker" / "versions").glob("r*"))
    assert load_ranker(version).manifest["samples_learned"] == sum(len(b) for b in bl)
    (msg,) = read_topic(kafka_cfg, kafka_cfg.bootstrap_servers, kafka_cfg.topic_model_updates)
    assert json.loads(msg.value)["name"] == version.name
