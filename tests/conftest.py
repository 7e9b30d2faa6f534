"""Shared fixtures. Real data lives in ../shared/data (see shared/README.md).

Tests that need it take ``shared_data`` (the data root) or call ``shared_dataset("monuseg2018")``.
When the data is missing they skip with a message saying what is missing, except when the
environment sets ``PATHSEG_REQUIRE_DATA=1`` (CI), where a missing dataset is a failure.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from pathseg.data.base import shared_data_root


def _missing(what: str) -> None:
    msg = f"{what} not found (set PATHSEG_DATA or place ../shared/data beside the checkout; see shared/README.md)"
    if os.environ.get("PATHSEG_REQUIRE_DATA") == "1":
        pytest.fail(f"PATHSEG_REQUIRE_DATA=1 but {msg}")
    pytest.skip(msg)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to the shared real-data root (``shared_data_root()``); skip, or fail in CI, when absent."""
    root = shared_data_root()
    if not root.is_dir():
        _missing(f"shared data root {root}")
    return root


@pytest.fixture(scope="session")
def shared_dataset(shared_data: Path) -> Callable[[str], Path]:
    """``shared_dataset("glas")`` → ``shared_data / "glas"``; skip, or fail in CI, when that folder is absent."""

    def get(subdir: str) -> Path:
        path = shared_data / subdir
        if not path.is_dir():
            _missing(f"dataset folder {path}")
        return path

    return get
