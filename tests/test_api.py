"""The top-level API: every common call resolves from ``import pathseg``, stays lazy (importing pathseg or
pathseg.inference loads no Lightning and no training method, read from ``python -X importtime``), and the example
in each docstring is true (run as doctests in a scratch folder)."""

from __future__ import annotations

import doctest
import subprocess
import sys

import pytest

import pathseg

API = ("load_config", "train", "evaluate", "create_model", "load_model", "predict_slide", "predict_slides")


@pytest.mark.parametrize("name", API)
def test_every_common_call_resolves_with_an_example(name):
    fn = getattr(pathseg, name)
    assert callable(fn) and name in pathseg.__all__
    assert "Example" in (fn.__doc__ or "") and ">>>" in fn.__doc__


def _imported(statement: str) -> list[str]:
    """Every module the statement imports in a fresh interpreter, from ``-X importtime``'s report."""
    run = subprocess.run([sys.executable, "-X", "importtime", "-c", statement], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [line.split("|")[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")]
    assert len(rows) > 1, run.stderr[-2000:]  # the report is there (a header, then one row per module)
    return rows[1:]


@pytest.mark.parametrize("statement", ["import pathseg", "import pathseg.inference",
                                       "import pathseg.inference.batch"])
def test_importing_pathseg_and_inference_loads_no_training_stack(statement):
    mods = _imported(statement)
    assert statement.split()[-1] in mods
    heavy = [m for m in mods if m.split(".")[0] in ("lightning", "pytorch_lightning")
             or m.startswith(("pathseg.methods", "pathseg.engine"))]
    assert heavy == []
    if statement == "import pathseg":
        assert "torch" not in mods  # the API imports its layers only when called


def test_the_importtime_reader_sees_a_heavy_import():  # the check above can fail
    assert "lightning" in _imported("import lightning")


@pytest.mark.slow
def test_the_docstring_examples_are_true(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # every example writes relative paths
    import torch

    torch.set_num_threads(2)
    result = doctest.testmod(pathseg, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted >= 20 and result.failed == 0
