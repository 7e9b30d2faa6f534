"""A tiny end-to-end S+C run (segmentation + classification patches) on synthetic data, through the CLI."""

import csv
import json

import torch
from typer.testing import CliRunner

from pathseg.cli.main import app

runner = CliRunner()

TINY = [
    "data.dataset=segcls_patches",
    "data.options={base: synthetic, base_options: {task: tissue, n_images: 6, size: 64}, patch_size: 32, "
    "regime: S+C, seg_fraction: 0.25, holdout: 2, min_foreground: 0.5}",
    "data.train_transforms=[{name: flip}, {name: rotate90}]",
    "data.val_split=test",
    "data.batch_size=8",
    "model.name=segcls",
    "method.name=segcls",
    "optim.name=adam",
    "optim.lr=0.001",
    "optim.poly_power=0",
    "trainer.max_steps=2",
    "trainer.val_every=2",
    "trainer.log_every=1",
    "trainer.progress=false",
    "trainer.threads=1",
]


def test_s_plus_c_trains_through_the_cli(tmp_path):
    res = runner.invoke(app, ["train", *TINY, f"trainer.out={tmp_path}"])
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["step"] for r in rows] == [2] and 0.0 <= rows[-1]["mIoU"] <= 1.0
    with open(tmp_path / "logs" / "metrics.csv") as f:
        logged = list(csv.DictReader(f))
    cols = set(logged[0])
    assert {"train/loss", "train/loss/seg", "train/loss/cls", "train/batch/cls_share"} <= cols
    shares = [float(r["train/batch/cls_share"]) for r in logged if r.get("train/batch/cls_share")]
    assert shares and max(shares) > 0  # classification patches were in the batches

    from pathseg.models.checkpoint import load_model
    from pathseg.models.segcls import segcls_forward

    model, info = load_model(tmp_path / "model.ckpt")
    assert info["model"] == "segcls" and info["num_classes"] == 5
    # both checkpoints carry the Macenko normaliser the images were normalised with, for prediction
    assert info["stain"]["method"] == "macenko" and info["stain"]["reference"].startswith("synthetic:")
    assert load_model(tmp_path / "checkpoints" / "last.ckpt")[1]["stain"] == info["stain"]
    seg, cls = segcls_forward(model, torch.zeros(1, 3, 32, 32))
    assert seg.shape == (1, 5, 32, 32) and cls.shape == (1, 5)


def test_segcls_patches_command_counts_and_writes_patches(tmp_path):
    res = runner.invoke(app, ["segcls-patches", "--write", str(tmp_path / "p"), *TINY[:2]])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["regime"] == "S+C" and summary["seg_images"] == 1 and summary["cls_images"] == 3
    with open(tmp_path / "p" / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == summary["seg_patches"] + summary["cls_patches"]
    assert {r["kind"] for r in rows} == {"seg", "cls"} and all(r["class"] for r in rows if r["kind"] == "cls")
    assert len(list((tmp_path / "p" / "images").iterdir())) == len(rows)
    res = runner.invoke(app, ["segcls-patches", "data.dataset=synthetic"])
    assert res.exit_code == 2 and "segcls_patches" in res.output
