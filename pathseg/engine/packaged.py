"""The experiment configs that ship with pathseg (``configs/`` of the checkout, packaged as ``pathseg.configs``).

In a checkout the YAML files stay where the README and the benchmarks name them (``configs/semi/cct.yaml``); the
wheel carries the same files as package data of ``pathseg.configs`` (see ``setup.py``). :func:`config_file` finds a
config by the name the docs use wherever pathseg is installed (``pathseg.load_config("configs/semi/cct.yaml")``
works from a checkout and from a wheel), and ``include:`` paths inside a config resolve beside it.

Example:
    >>> config_file("configs/semi/cct.yaml").name
    'cct.yaml'
    >>> "semi/cct.yaml" in packaged_configs()
    True
"""

from __future__ import annotations

import os
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[2] / "configs"


def configs_root() -> Path | None:
    """The folder of the shipped configs: the installed ``pathseg.configs`` package data, else the checkout's
    ``configs/``; None when neither exists."""
    try:
        from importlib.resources import files

        root = Path(str(files("pathseg.configs")))
        if root.is_dir():
            return root
    except (ModuleNotFoundError, TypeError):  # not installed from a wheel (editable or a plain checkout)
        pass
    return _CHECKOUT if _CHECKOUT.is_dir() else None


def packaged_configs() -> list[str]:
    """Every shipped config, as a path relative to the configs folder (``"semi/cct.yaml"``)."""
    root = configs_root()
    return [] if root is None else sorted(p.relative_to(root).as_posix() for p in root.rglob("*.yaml"))


def config_file(path: str | os.PathLike) -> Path:
    """``path`` itself when it is a file; else the shipped config of that name (``configs/semi/cct.yaml`` or
    ``semi/cct.yaml``); else ``path`` unchanged (the caller says it is missing)."""
    path = Path(path)
    if path.is_file() or path.is_absolute():
        return path
    root = configs_root()
    if root is None:
        return path
    parts = path.parts[1:] if path.parts and path.parts[0] == "configs" else path.parts
    shipped = root.joinpath(*parts) if parts else root
    return shipped if shipped.is_file() else path
