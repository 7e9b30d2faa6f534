"""The tissue-mask, tile and export-onnx commands, and `pathseg predict` on a slide through the main app."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "io"))
from wsi_fixtures import blank_slide, synthetic_slide  # noqa: E402
from wsi_helpers import tiny_checkpoint  # noqa: E402

from pathseg.cli.slides import register  # noqa: E402


@pytest.fixture(scope="module")
def app():
    a = typer.Typer()
    register(a)
    a.command("noop", hidden=True)(lambda: None)  # typer needs 2+ commands to keep subcommand names
    return a


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return synthetic_slide(tmp_path_factory.mktemp("cmd"), 1024, seed=1, truth=False)[0]


def test_tissue_mask_command(app, slide, tmp_path):
    from PIL import Image

    blank = blank_slide(tmp_path / "blank.tiff")
    r = CliRunner().invoke(app, ["tissue-mask", str(slide), str(blank), "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    mask = np.asarray(Image.open(tmp_path / "m" / f"{slide.stem}.tissue.png"))
    assert 0.3 < (mask > 0).mean() < 0.9
    assert (np.asarray(Image.open(tmp_path / "m" / "blank.tissue.png")) == 0).all()


def test_tile_command(app, slide, tmp_path):
    r = CliRunner().invoke(app, ["tile", str(slide), "--out", str(tmp_path), "--mpp", "1.0", "--tile", "128",
                                 "--min-tissue", "0.5", "--limit", "3"])
    assert r.exit_code == 0, r.output
    files = sorted((tmp_path / slide.stem).glob("*.png"))
    assert len(files) == 3 and (tmp_path / slide.stem / "tiles.csv").read_text().count("\n") == 4


def test_bad_slide_fails_alone_in_a_command(app, slide, tmp_path):
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"\0" * 100)
    r = CliRunner().invoke(app, ["tissue-mask", str(bad), str(slide), "--out", str(tmp_path)])
    assert r.exit_code == 1 and (tmp_path / f"{slide.stem}.tissue.png").is_file()


def test_predict_through_main_app(slide, tmp_path):
    from pathseg.cli.main import app as main_app

    ckpt = tiny_checkpoint(tmp_path / "m.ckpt", mpp=4.0)
    r = CliRunner().invoke(main_app, ["predict", str(slide), "--checkpoint", str(ckpt), "--out", str(tmp_path / "pred"),
                                      "--tile", "128", "--backend", "torch"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "pred" / slide.stem / f"{slide.stem}.labels.tif").is_file()
