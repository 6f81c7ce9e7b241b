"""Where lumstream keeps its local state: one root, and every path under it named once.

Components receive resolved paths; :class:`lumstream.config.Config` resolves them from
this section and the per-component overrides (``store.path``, ``ranker.checkpoint_dir``,
...) in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from core.settings import setting


@dataclass(frozen=True)
class PathsConfig:
    """Where lumstream keeps its local state."""

    section: ClassVar[str] = "paths"
    data_dir: Path = setting(Path("data"), "root of local state (RocksDB, versions, checkpoints)")
