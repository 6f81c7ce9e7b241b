"""Where Prometheus, promtool and Alertmanager are: the binaries of Debian's ``prometheus``
and ``prometheus-alertmanager`` packages that ``scripts/install.sh`` unpacks (without root)
into ``<venv>/opt/prometheus``.

Looked for, in order: ``$LUMSTREAM_PROMETHEUS_HOME/usr/bin`` (a directory the packages were
unpacked into), ``<venv>/opt/prometheus/usr/bin``, then ``PATH``. A missing tool is a
:class:`ToolError` that says how to get it, never a skip.

Example:
    >>> find_tool("promtool")  # doctest: +SKIP
    PosixPath('/repo/.venv/opt/prometheus/usr/bin/promtool')
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

HOME_ENV = "LUMSTREAM_PROMETHEUS_HOME"
# the tool -> the names it goes by (Debian's first, then upstream's)
NAMES: dict[str, tuple[str, ...]] = {
    "prometheus": ("prometheus",),
    "promtool": ("promtool",),
    "alertmanager": ("prometheus-alertmanager", "alertmanager"),
    "amtool": ("amtool",),
}
HOW_TO_GET = (
    "run scripts/install.sh (it fetches Debian's prometheus and prometheus-alertmanager "
    "packages with `apt-get download` and unpacks them with `dpkg -x` into "
    f"<venv>/opt/prometheus, no root needed), or set {HOME_ENV} to a directory they were unpacked "
    "into"
)


class ToolError(RuntimeError):
    """A monitoring tool that cannot be found; the message says how to get it."""


def venv_home() -> Path:
    """Where scripts/install.sh unpacks the packages: ``<venv>/opt/prometheus``."""
    return Path(sys.prefix) / "opt" / "prometheus"


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_tool(tool: str, env: Mapping[str, str] | None = None) -> Path:
    """The executable of ``tool`` (``prometheus``, ``promtool``, ``alertmanager``,
    ``amtool``).

    Raises:
        ToolError: not found; an explicit ``$LUMSTREAM_PROMETHEUS_HOME`` without it is an
            error too (never silently another one).
    """
    env = os.environ if env is None else env
    names = NAMES.get(tool)
    if names is None:
        raise ValueError(f"unknown tool {tool!r}; known: {', '.join(NAMES)}")
    explicit = env.get(HOME_ENV)
    if explicit:
        for name in names:
            path = Path(explicit) / "usr" / "bin" / name
            if _executable(path):
                return path
        raise ToolError(
            f"{tool}: not in ${HOME_ENV}={explicit!r} (usr/bin/{names[0]}); {HOW_TO_GET}"
        )
    for name in names:
        path = venv_home() / "usr" / "bin" / name
        if _executable(path):
            return path
    for name in names:
        found = shutil.which(name, path=env.get("PATH"))
        if found:
            return Path(found)
    raise ToolError(f"{tool}: not found in {venv_home() / 'usr' / 'bin'} nor on PATH; {HOW_TO_GET}")
