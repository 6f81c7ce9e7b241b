"""Declare each setting once: type, default, environment variable and one line of doc.

A component config is a frozen dataclass whose fields are made with :func:`setting`; the
class carries a ``section`` name. The environment variable of a field is
``LUMSTREAM_<SECTION>_<FIELD>`` (upper case). Values are layered, later wins:

    dataclass defaults  <  TOML file ([section] tables)  <  environment  <  explicit overrides

Only entry points (the CLI, benchmarks) call :func:`load`; library code receives the
config objects whole.

Example:
    >>> from dataclasses import dataclass
    >>> from typing import ClassVar
    >>> @dataclass(frozen=True)
    ... class FooConfig:
    ...     section: ClassVar[str] = "foo"
    ...     size: int = setting(8, "number of things")
    >>> build(FooConfig, {"size": "16"}, source="test").size
    16
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

ENV_PREFIX = "LUMSTREAM_"


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the setting."""


class SectionConfig(Protocol):
    section: ClassVar[str]
    __dataclass_fields__: ClassVar[dict[str, Any]]


C = TypeVar("C")


def setting(
    default: Any,
    doc: str,
    *,
    choices: tuple[Any, ...] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
) -> Any:
    """A config field with its one line of documentation and optional bounds.

    Args:
        default: the default value (tuples for list-valued settings).
        doc: one line shown by ``lumstream config show --doc`` and in the README.
        choices: allowed values, checked on load.
        minimum / maximum: inclusive numeric bounds, checked on load.
    """
    meta = {"doc": doc, "choices": choices, "minimum": minimum, "maximum": maximum}
    return dataclasses.field(default=default, metadata=meta)


def env_name(section: str, field: str) -> str:
    return f"{ENV_PREFIX}{section}_{field}".upper().replace(".", "_").replace("-", "_")


def _field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _coerce(value: Any, typ: Any, where: str) -> Any:
    """Convert a TOML/env value to the declared type, or raise ConfigError naming ``where``."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
            return None
        return _coerce(value, args[0], where)
    if origin is tuple:
        (inner, *_rest) = typing.get_args(typ)
        if isinstance(value, str):
            items: list[Any] = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, list | tuple):
            items = list(value)
        else:
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, inner, where) for v in items)
    if typ is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            return int(str(value).strip().replace("_", ""))
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if not math.isfinite(out):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return out
    if typ is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if typ is Path:
        return Path(str(value)).expanduser()
    raise ConfigError(f"{where}: unsupported setting type {typ!r}")


def _check(value: Any, f: dataclasses.Field[Any], where: str) -> None:
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
    lo, hi = f.metadata.get("minimum"), f.metadata.get("maximum")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if lo is not None and value < lo:
            raise ConfigError(f"{where}: {value!r} is below the minimum {lo}")
        if hi is not None and value > hi:
            raise ConfigError(f"{where}: {value!r} is above the maximum {hi}")


def build(
    cls: type[C], values: Mapping[str, Any], *, source: str = "override", base: C | None = None
) -> C:
    """Make ``cls`` from ``values`` (strings or TOML values), validating every field.

    Unknown keys are an error: a misspelt setting must not be silently ignored.
    """
    section = getattr(cls, "section", cls.__name__)
    names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(
            f"{section}.{unknown[0]}: unknown setting (from {source}); "
            f"known: {', '.join(sorted(names))}"
        )
    current = dataclasses.asdict(base) if base is not None else {}  # type: ignore[call-overload]
    kwargs: dict[str, Any] = {}
    for name, f in names.items():
        if name in values:
            where = f"{section}.{name} (from {source})"
            val = _coerce(values[name], _field_type(cls, name), where)
            _check(val, f, where)
            kwargs[name] = val
        elif name in current:
            kwargs[name] = current[name]
    return cls(**kwargs)


def from_env(cls: type[C], env: Mapping[str, str], base: C) -> C:
    section = getattr(cls, "section", cls.__name__)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        key = env_name(section, f.name)
        if key in env:
            values[f.name] = env[key]
    if not values:
        return base
    return build(cls, values, source="environment", base=base)


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: invalid TOML: {exc}") from None


def layered(
    cls: type[C],
    toml: Mapping[str, Any],
    env: Mapping[str, str],
    overrides: Mapping[str, Any] | None = None,
    *,
    toml_source: str = "toml",
) -> C:
    """defaults < TOML section < environment < overrides, for one component config."""
    section = getattr(cls, "section", cls.__name__)
    cfg: C = cls()
    table = toml.get(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{section}: expected a [{section}] table in {toml_source}")
    if table:
        cfg = build(cls, table, source=toml_source, base=cfg)
    cfg = from_env(cls, env, cfg)
    if overrides:
        cfg = build(cls, overrides, source="command line", base=cfg)
    return cfg


def describe(cls: type) -> list[tuple[str, str, str, str]]:
    """(name, type, default, doc) rows for docs and ``config show --doc``."""
    section = getattr(cls, "section", cls.__name__)
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        tname = getattr(typ, "__name__", str(typ).replace("typing.", ""))
        rows.append((env_name(section, f.name), tname, repr(f.default), f.metadata.get("doc", "")))
    return rows


def environ() -> Mapping[str, str]:
    return os.environ
