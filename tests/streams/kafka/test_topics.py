"""Topic creation: the four lumstream topics, idempotent, existing ones left as they are."""

from __future__ import annotations

import dataclasses
import logging
import re
import uuid

import pytest

from streams.config import KafkaConfig
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.topics import (
    TopicStatus,
    ensure_topics,
    list_topics,
    topic_specs,
    with_topics,
)


def _fresh(broker: EmbeddedBroker, partitions: int = 3) -> KafkaConfig:
    cfg = KafkaConfig(bootstrap_servers=broker.bootstrap, partitions=partitions)
    return with_topics(cfg, f".topics-{uuid.uuid4().hex[:8]}")


def test_specs_follow_the_config() -> None:
    cfg = KafkaConfig(partitions=6, topic_samples="my.samples")
    specs = {s.name: s for s in topic_specs(cfg)}
    assert set(specs) == {"lum.events", "my.samples", "lum.deadletter", "lum.model-updates"}
    assert {s.partitions for s in specs.values()} == {6}
    extra = topic_specs(cfg, "replayed", None, "lum.events", "replayed")
    assert [s.name for s in extra][4:] == ["replayed"]  # once; None and known names skipped
    assert extra[4].partitions == 6


@pytest.mark.integration
def test_ensure_topics_twice_creates_once(broker: EmbeddedBroker) -> None:
    cfg = _fresh(broker)
    names = [s.name for s in topic_specs(cfg)]
    assert ensure_topics(cfg, broker.bootstrap) == dict.fromkeys(names, TopicStatus.CREATED)
    assert ensure_topics(cfg, broker.bootstrap) == dict.fromkeys(names, TopicStatus.EXISTS)
    listed = list_topics(cfg, broker.bootstrap)
    assert {n: listed[n] for n in names} == dict.fromkeys(names, 3)
    assert list(listed) == sorted(listed)


@pytest.mark.integration
def test_partition_mismatch_is_reported_not_changed(
    broker: EmbeddedBroker, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _fresh(broker, partitions=2)
    ensure_topics(cfg, broker.bootstrap)
    wider = dataclasses.replace(cfg, partitions=5)
    with caplog.at_level(logging.WARNING, logger="streams.kafka.topics"):
        status = ensure_topics(wider, broker.bootstrap)
    assert set(status.values()) == {TopicStatus.MISMATCH}
    assert f"topic {cfg.topic_events} exists with 2 partitions, configured 5" in caplog.text
    assert list_topics(cfg, broker.bootstrap)[cfg.topic_events] == 2


@pytest.mark.integration
def test_topics_command_against_a_bootstrap(
    broker: EmbeddedBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    from lumstream.cli import main

    suffix = f".cli-{uuid.uuid4().hex[:8]}"
    sets = ["--set", "kafka.partitions=2"]
    for name in ("events", "samples", "deadletter", "model_updates"):
        sets += ["--set", f"kafka.topic_{name}=lum.{name}{suffix}"]
    assert main([*sets, "topics", "--bootstrap", broker.bootstrap, "create"]) == 0
    assert f"lum.events{suffix}" in capsys.readouterr().out
    assert main([*sets, "topics", "--bootstrap", broker.bootstrap, "list"]) == 0
    assert re.search(
        rf"^lum\.events{re.escape(suffix)} +2 partitions$", capsys.readouterr().out, re.MULTILINE
    )


def test_topics_command_without_a_cluster(
    tmp_path: object, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from lumstream.cli import main

    monkeypatch.delenv("LUMSTREAM_KAFKA_BOOTSTRAP_SERVERS", raising=False)
    assert main(["--set", f"paths.data_dir={tmp_path}", "topics", "list"]) == 2
    assert "start `lumstream broker` first" in capsys.readouterr().err
