"""The lumstream topics: names and settings from KafkaConfig, created idempotently.

Example:
    >>> ensure_topics(KafkaConfig(), "127.0.0.1:9092")  # doctest: +SKIP
    {'lum.events': 'created', 'lum.samples': 'created', ...}
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from streams.config import KafkaConfig

log = logging.getLogger(__name__)

TOPIC_ALREADY_EXISTS = 36  # Kafka protocol error code


class TopicStatus(StrEnum):
    CREATED = "created"
    EXISTS = "exists"
    MISMATCH = "exists, settings differ"  # another partition count (logged)


@dataclass(frozen=True)
class TopicSpec:
    """One topic lumstream needs.

    Args:
        name: the topic name.
        partitions: partition count when created.
        replication_factor: replicas when created.
    """

    name: str
    partitions: int
    replication_factor: int


def topic_specs(cfg: KafkaConfig, *extra: str | None) -> list[TopicSpec]:
    """The four lumstream topics with the configured names and partition counts, plus the
    topics named in ``extra`` that are not among them (e.g. a ``--topic``; None skipped),
    with the same partition count."""
    names: tuple[str, ...] = (
        cfg.topic_events,
        cfg.topic_samples,
        cfg.topic_deadletter,
        cfg.topic_model_updates,
    )
    names += tuple(n for n in dict.fromkeys(extra) if n and n not in names)
    return [TopicSpec(n, cfg.partitions, cfg.replication_factor) for n in names]


def admin_client(cfg: KafkaConfig, bootstrap: str) -> Any:
    """A kafka-python admin client (caller closes it)."""
    from kafka import KafkaAdminClient

    return KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id=f"{cfg.client_id}-admin",
        request_timeout_ms=cfg.request_timeout_ms,
    )


def ensure_topics(
    cfg: KafkaConfig, bootstrap: str, specs: list[TopicSpec] | None = None
) -> dict[str, str]:
    """Create the missing topics; existing ones are left as they are.

    Returns:
        ``{topic: TopicStatus}``: created, exists, or exists with different settings
        (a warning names the difference: Kafka cannot shrink partitions, and growing them
        would move keys to other partitions, so lumstream never changes an existing topic).
    """
    specs = topic_specs(cfg) if specs is None else specs
    with admin_client(cfg, bootstrap) as admin:
        existing = _partition_counts(admin, [s.name for s in specs])
        missing = [s for s in specs if s.name not in existing]
        status: dict[str, str] = {}
        if missing:
            request = {
                s.name: {
                    "num_partitions": s.partitions,
                    "replication_factor": s.replication_factor,
                }
                for s in missing
            }
            response = admin.create_topics(
                request, timeout_ms=cfg.request_timeout_ms, raise_errors=False
            )
            for result in response["topics"]:
                code = result["error_code"]
                if code == 0:
                    status[result["name"]] = TopicStatus.CREATED
                elif code != TOPIC_ALREADY_EXISTS:  # created by someone else meanwhile: fine
                    from kafka.errors import for_code

                    raise for_code(code)(
                        f"creating topic {result['name']!r}: "
                        f"{result.get('error_message') or 'failed'}"
                    )
            existing.update(
                _partition_counts(admin, [s.name for s in missing if s.name not in status])
            )
        for spec in specs:
            if spec.name in status:
                continue
            status[spec.name] = TopicStatus.EXISTS
            have = existing.get(spec.name)
            if have is not None and have != spec.partitions:
                log.warning(
                    "topic %s exists with %d partitions, configured %d: left as it is",
                    spec.name,
                    have,
                    spec.partitions,
                )
                status[spec.name] = TopicStatus.MISMATCH
    return {s.name: status[s.name] for s in specs}


def list_topics(cfg: KafkaConfig, bootstrap: str) -> dict[str, int]:
    """``{topic: partition count}`` of every topic in the cluster, sorted by name."""
    with admin_client(cfg, bootstrap) as admin:
        return dict(sorted(_partition_counts(admin, None).items()))


def _partition_counts(admin: Any, names: list[str] | None) -> dict[str, int]:
    """Partition counts of the named topics that exist (all topics when ``names`` is None)."""
    if names == []:
        return {}
    out: dict[str, int] = {}
    for topic in admin.describe_topics(names):
        if topic["error_code"] == 0 and not topic.get("is_internal"):
            out[topic["name"]] = len(topic["partitions"])
    return out


def with_topics(cfg: KafkaConfig, suffix: str) -> KafkaConfig:
    """``cfg`` with every topic name suffixed (tests and side-by-side runs)."""
    return dataclasses.replace(
        cfg,
        topic_events=f"{cfg.topic_events}{suffix}",
        topic_samples=f"{cfg.topic_samples}{suffix}",
        topic_deadletter=f"{cfg.topic_deadletter}{suffix}",
        topic_model_updates=f"{cfg.topic_model_updates}{suffix}",
    )
