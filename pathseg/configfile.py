"""YAML files read into checked dataclasses: the machinery every pathseg configuration shares.

A configuration is a tree of dataclasses. :func:`load_dataclass` reads a YAML file (a top-level
``include: other.yaml`` is merged underneath), applies ``key=value`` overrides on dotted paths with YAML
values (``optim.lr=0.001``, ``teacher.epochs=5``), and builds the dataclass: a section whose default is a
dataclass is built recursively, every value is checked against its field's type, and an unknown key is
reported with a "did you mean" and the valid keys. :mod:`pathseg.engine.config` (training runs) and
:mod:`pathseg.methods.distill.config` (the distillation pipeline) are both built on it.

Example:
    >>> from dataclasses import dataclass, field
    >>> @dataclass
    ... class Stage:
    ...     epochs: int = 10
    ...     lr: float = 1e-3
    >>> @dataclass
    ... class Run:
    ...     stage: Stage = field(default_factory=Stage)
    ...     seed: int = 0
    >>> load_dataclass(Run, None, ["stage.epochs=3", "seed=1"])
    Run(stage=Stage(epochs=3, lr=0.001), seed=1)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pathseg.errors import ConfigError
from pathseg.registry import did_you_mean

T = TypeVar("T")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a config file; a top-level ``include: other.yaml`` (relative path) is merged underneath."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    inc = raw.pop("include", None)
    if inc:
        raw = _merge(read_yaml(path.parent / inc), raw)
    return raw


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str] | None, *, example: str = "optim.lr=0.001"
                    ) -> dict[str, Any]:
    """Set each ``key=value`` of ``overrides`` in ``raw`` (dotted keys, YAML values; unparsable: the string).

    ``example`` is the override the error message shows for an item without ``=``.
    """
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. {example}")
        key, value = item.split("=", 1)
        try:
            parsed = yaml.safe_load(value) if value != "" else None
        except yaml.YAMLError:
            parsed = value
        _set_dotted(raw, key.strip(), parsed)
    return raw


def load_dataclass(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] | None = None, *,
                   example: str = "optim.lr=0.001") -> T:
    """``cls`` from a YAML file (or its defaults when ``path`` is None) and ``key=value`` overrides.

    Raises :class:`ConfigError` naming the file (or "config") for an unknown key or a mistyped value.
    """
    raw = read_yaml(path) if path else {}
    apply_overrides(raw, overrides, example=example)
    try:
        return _build(cls, raw, "")
    except ConfigError as e:
        raise ConfigError(f"{path or 'config'}: {e}") from None


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {type(values).__name__} {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, val in values.items():
        if key not in fields:
            raise ConfigError(
                f"{where + ': ' if where else ''}unknown key {key!r}.{did_you_mean(key, list(fields))} Valid keys: {', '.join(fields)}"
            )
        sub = fields[key].default_factory if fields[key].default_factory is not dataclasses.MISSING else None
        if sub is not None and dataclasses.is_dataclass(sub):
            kwargs[key] = _build(sub, val or {}, f"{where}.{key}" if where else key)
        else:
            kwargs[key] = _check_type(val, fields[key], f"{where}.{key}" if where else key)
    return cls(**kwargs)


def _check_type(val: Any, f: dataclasses.Field, where: str) -> Any:
    t = str(f.type)
    if val is None:
        if "None" in t:
            return None
        raise ConfigError(f"{where}: a value is required ({t})")
    if t.startswith("int") and not (isinstance(val, int) and not isinstance(val, bool)):
        if not ("str" in t and isinstance(val, str)):
            raise ConfigError(f"{where}: expected an integer, got {val!r}")
    if t.startswith("float") and not isinstance(val, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {val!r}")
    if t == "bool" and not isinstance(val, bool):
        raise ConfigError(f"{where}: expected true or false, got {val!r}")
    if t.startswith("str") and not t.startswith("str |") and not isinstance(val, str):
        raise ConfigError(f"{where}: expected a string, got {val!r}")
    if t.startswith("float"):
        val = float(val)
    return val


def _set_dotted(d: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    cur = d
    for k in keys[:-1]:
        cur = cur.setdefault(k, {})
        if not isinstance(cur, dict):
            raise ConfigError(f"override {dotted}: {k!r} is not a section")
    cur[keys[-1]] = value


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


__all__ = ["apply_overrides", "load_dataclass", "read_yaml"]
