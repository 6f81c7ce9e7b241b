"""The effective configuration of one lumstream process: every component's config.

Entry points call :func:`load`; components receive their own section object.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.paths import PathsConfig
from core.settings import ConfigError, layered, read_toml
from embeddings.config import EmbeddingsConfig
from monitoring.config import DriftConfig, MetricsConfig, MonitorConfig
from serving.config import ServingConfig
from serving.loop_config import EventsApiConfig, ExploreConfig, ServedLogConfig
from streams.config import (
    BrokerConfig,
    EventConfig,
    GeneratorConfig,
    KafkaConfig,
    ReplayConfig,
    StoreConfig,
    WorkerConfig,
)
from trainer.backbone.config import BackboneConfig, RefreshConfig
from trainer.ranker.config import RankerConfig

CONFIG_ENV = "LUMSTREAM_CONFIG"


SECTIONS: tuple[type[Any], ...] = (
    PathsConfig,
    KafkaConfig,
    BrokerConfig,
    EventConfig,
    GeneratorConfig,
    StoreConfig,
    WorkerConfig,
    ReplayConfig,
    BackboneConfig,
    RefreshConfig,
    EmbeddingsConfig,
    RankerConfig,
    ServingConfig,
    ServedLogConfig,
    EventsApiConfig,
    ExploreConfig,
    MetricsConfig,
    DriftConfig,
    MonitorConfig,
)


@dataclass(frozen=True)
class Layout:
    """Where everything lives on local disk (see :attr:`Config.layout`).

    Args:
        data_dir: the root (``paths.data_dir``).
        broker_run_file: a running ``lumstream broker`` records its address here.
        logs: broker logs.
        metrics_discovery: one discovery file per process serving /metrics.
        store: the partition stores (``store.path``).
        store_snapshots: their durable snapshots (``store.snapshot_dir``).
        backfill_store: the stores a backfill writes (``replay.store``).
        replay_checkpoints: resume points of ``replay produce``.
        backbone_versions: backbone versions vN (``refresh.versions_dir``).
        vector_store: the condition-query vector store (``refresh.vector_store_dir``): the
            refresh writes it, the ranker and the service read it.
        ranker_checkpoints / ranker_versions: the trainer's (``ranker.checkpoint_dir``,
            ``ranker.versions_dir``).
        monitor: ``lumstream monitor``'s Prometheus and Alertmanager (configs, data, logs).
        monitor_run_file: a running ``lumstream monitor`` records its URLs here.
        demo: everything ``lumstream demo`` writes.
    """

    data_dir: Path
    broker_run_file: Path
    logs: Path
    metrics_discovery: Path
    store: Path
    store_snapshots: Path
    backfill_store: Path
    replay_checkpoints: Path
    backbone_versions: Path
    vector_store: Path
    ranker_checkpoints: Path
    ranker_versions: Path
    monitor: Path
    monitor_run_file: Path
    demo: Path

    @classmethod
    def of(cls, cfg: Config) -> Layout:
        data = cfg.paths.data_dir

        def pick(setting: str, default: Path) -> Path:
            return Path(setting) if setting else default

        versions = pick(cfg.refresh.versions_dir, data / "backbone")
        return cls(
            data_dir=data,
            broker_run_file=data / "broker.json",
            logs=data / "logs",
            metrics_discovery=data / "run" / "metrics",
            store=pick(cfg.store.path, data / "store"),
            store_snapshots=pick(cfg.store.snapshot_dir, data / "store-snapshots"),
            backfill_store=pick(cfg.replay.store, data / "backfill" / "store"),
            replay_checkpoints=data / "replay",
            backbone_versions=versions,
            vector_store=pick(cfg.refresh.vector_store_dir, data / "vectors"),
            ranker_checkpoints=pick(cfg.ranker.checkpoint_dir, data / "ranker" / "ckpt"),
            ranker_versions=pick(cfg.ranker.versions_dir, data / "ranker" / "versions"),
            monitor=data / "monitor",
            monitor_run_file=data / "run" / "monitor.json",
            demo=data / "demo",
        )


@dataclass(frozen=True)
class Config:
    """All sections; attribute names are the section names."""

    paths: PathsConfig
    kafka: KafkaConfig
    broker: BrokerConfig
    events: EventConfig
    generator: GeneratorConfig
    store: StoreConfig
    worker: WorkerConfig
    replay: ReplayConfig
    backbone: BackboneConfig
    refresh: RefreshConfig
    embeddings: EmbeddingsConfig
    ranker: RankerConfig
    serving: ServingConfig
    served_log: ServedLogConfig
    events_api: EventsApiConfig
    explore: ExploreConfig
    metrics: MetricsConfig
    drift: DriftConfig
    monitor: MonitorConfig
    source: str = "defaults"

    @property
    def layout(self) -> Layout:
        """Every local path, resolved from ``paths.data_dir`` and the per-component
        overrides: the one place path defaults are decided."""
        return Layout.of(self)

    def sections(self) -> dict[str, Any]:
        return {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "source"
        }


def load(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Build the effective config: defaults < TOML file < LUMSTREAM_* env < overrides.

    Args:
        path: a TOML file; ``None`` uses ``$LUMSTREAM_CONFIG`` when set.
        env: the environment (default ``os.environ``).
        overrides: ``{section: {name: value}}`` from the command line.
    Raises:
        ConfigError: one line naming the bad setting and where it came from.
    """
    env = os.environ if env is None else env
    if path is None and env.get(CONFIG_ENV):
        path = env[CONFIG_ENV]
    toml: dict[str, Any] = read_toml(Path(path)) if path else {}
    known = {c.section for c in SECTIONS}
    unknown = sorted(set(toml) - known)
    if unknown:
        raise ConfigError(
            f"[{unknown[0]}]: unknown config section in {path}; known: {', '.join(sorted(known))}"
        )
    overrides = overrides or {}
    built: dict[str, Any] = {
        cls.section: layered(
            cls,
            toml,
            env,
            overrides.get(cls.section),
            toml_source=str(path) if path else "toml",
        )
        for cls in SECTIONS
    }
    return Config(**built, source=str(path) if path else "defaults")


def to_toml(cfg: Config) -> str:
    """The effective config as TOML (what ``lumstream config show`` prints)."""
    lines: list[str] = [f"# effective lumstream config (file: {cfg.source})"]
    for name, section in cfg.sections().items():
        lines.append(f"\n[{name}]")
        for f in dataclasses.fields(section):
            lines.append(
                f"{f.name} = {_toml_value(getattr(section, f.name))}  # {f.metadata.get('doc', '')}"
            )
    return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, tuple | list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'
