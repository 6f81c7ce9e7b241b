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
from monitoring.config import MetricsConfig
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
    MetricsConfig,
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
    metrics: MetricsConfig
    source: str = "defaults"

    def broker_run_file(self) -> Path:
        """Where a running ``lumstream broker`` records its address for other commands."""
        return self.paths.data_dir / "broker.json"

    def store_root(self) -> Path:
        """Where the partition stores live."""
        return Path(self.store.path) if self.store.path else self.paths.data_dir / "store"

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
