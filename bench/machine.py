"""What a benchmark prints about the machine it ran on (one place for every script)."""

from __future__ import annotations

import os
import platform
from typing import Any


def machine(**more: Any) -> dict[str, Any]:
    """Platform, CPUs, Python and the 1-minute load average now, plus ``more``."""
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        **more,
    }
