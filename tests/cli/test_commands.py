"""`pathseg synth` and `pathseg splits` through the CLI."""

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from pathseg.cli.main import app

runner = CliRunner()


def test_synth_writes_images_masks_and_labels(tmp_path):
    res = runner.invoke(app, ["synth", str(tmp_path / "s"), "--n", "3", "--size", "64", "--seed", "1"])
    assert res.exit_code == 0, res.output
    images = sorted((tmp_path / "s" / "images").iterdir())
    masks = sorted((tmp_path / "s" / "masks").iterdir())
    assert len(images) == len(masks) == 3
    img, mask = np.asarray(Image.open(images[0])), np.asarray(Image.open(masks[0]))
    assert img.shape == (64, 64, 3) and mask.shape == (64, 64) and mask.max() < 5
    # the synthetic set written to disk reads back through the generic folder adapter
    from pathseg.data.folder import FolderDataset
    from pathseg.data.synth import CLASS_NAMES

    ds = FolderDataset(tmp_path / "s", class_names=list(CLASS_NAMES))
    np.testing.assert_array_equal(ds[0]["mask"], mask)


def test_splits_command_is_deterministic(tmp_path, shared_dataset):
    root = shared_dataset("monuseg2018")
    args = ["splits", "monuseg", "--root", str(root), "--fractions", "1/8", "--seeds", "0"]
    a = runner.invoke(app, [*args, "--out", str(tmp_path / "a")])
    b = runner.invoke(app, [*args, "--out", str(tmp_path / "b")])
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    fa = sorted((tmp_path / "a").rglob("*.json"))
    fb = sorted((tmp_path / "b").rglob("*.json"))
    assert len(fa) == 1 and fa[0].read_text() == fb[0].read_text()
    split = json.loads(fa[0].read_text())
    assert len(split["labeled"]) == round(30 / 8) and len(split["test"]) == 14
    res = runner.invoke(app, ["splits", "monuseg", "--fractions", "one-eighth"])
    assert res.exit_code == 2 and "expected e.g. 1, 1/8" in res.output
