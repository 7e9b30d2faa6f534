"""The wheel ships every experiment config: built from a copy of the checkout, its pathseg/configs/ holds exactly
the YAML files of configs/ (and the package), and the shipped-config lookup finds them by the docs' names."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_wheel_carries_every_config(tmp_path):
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pathseg", "configs"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                          str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("pathseg-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"pathseg/configs/{p.relative_to(ROOT / 'configs').as_posix()}" for p in (ROOT / "configs").rglob("*.yaml")}
    assert expected and expected <= names
    assert {"pathseg/__init__.py", "pathseg/engine/train.py", "pathseg/models/vit/__init__.py"} <= names


def test_configs_are_found_by_the_names_the_docs_use(tmp_path, monkeypatch):
    from pathseg.engine.packaged import config_file, packaged_configs

    monkeypatch.chdir(tmp_path)  # not the checkout: the relative name alone does not exist here
    on_disk = sorted(p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("*.yaml"))
    assert packaged_configs() == on_disk
    assert config_file("configs/semi/cct.yaml") == ROOT / "configs/semi/cct.yaml"
    assert config_file("semi/cct.yaml") == ROOT / "configs/semi/cct.yaml"
    assert config_file("configs/semi/nope.yaml") == Path("configs/semi/nope.yaml")  # the caller reports it missing
    import pathseg

    assert pathseg.load_config("configs/semi/cct.yaml").method.name == "cct"  # includes resolve beside the file
