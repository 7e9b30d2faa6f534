"""MLPS end to end through the CLI on synthetic tissue: phase 1 -> pseudo masks -> phase 2 -> gate ->
evaluate, each step a `pathseg` command as a user would run it."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pathseg.cli.main import app

runner = CliRunner()

DATA = ("data.options={dataset: synthetic, options: {n_images: 3, size: 48}, patch: 32, stride: 16, "
        "holdout: 0.34, min_fraction: 0.05}")
COMMON = [
    "data.dataset=patch_labels", DATA, "data.train_transforms=[{name: flip}]", "data.batch_size=2",
    "model.encoder=resnet18", "optim.name=adam", "optim.lr=0.001", "trainer.max_steps=2", "trainer.val_every=2",
    "trainer.progress=false", "trainer.threads=1", "trainer.log_every=1",
]


def test_phase1_pseudo_masks_phase2_gate_evaluate(tmp_path):
    p1 = tmp_path / "phase1"
    res = runner.invoke(app, ["train", *COMMON, "model.name=cam", "method.name=mlps_classifier",
                              "method.params={attention: pda, warmup_epochs: 0, epoch_steps: 1}",
                              "data.options.train_masks=false", f"trainer.out={p1}",
                              "trainer.best_metric=val/cls_accuracy"])  # a metric of this method's own
    assert res.exit_code == 0, res.output
    row = json.loads((p1 / "metrics.json").read_text())[-1]
    assert 0 <= row["mIoU"] <= 1 and 0 <= row["cls_accuracy"] <= 1
    from pathseg.models.checkpoint import load_model

    sel = load_model(p1 / "model.ckpt")[1]["selection"]
    assert (sel["metric"], sel["step"]) == ("val/cls_accuracy", 2)
    assert sel["value"] == pytest.approx(row["cls_accuracy"])

    pm = tmp_path / "pseudo"
    res = runner.invoke(app, ["pseudo-masks", "--checkpoint", str(p1 / "model.ckpt"), "--out", str(pm), *COMMON])
    assert res.exit_code == 0, res.output
    ids = sorted(p.stem for p in (pm / "final").glob("*.png"))
    assert len(ids) == 8 and sorted(p.stem for p in (pm / "mid").glob("*.png")) == ids
    # every pseudo-mask pixel is one of the patch's labelled classes
    from pathseg.data.patch_labels import PatchLabelDataset

    ds = PatchLabelDataset(split="train", dataset="synthetic", options={"n_images": 3, "size": 48}, patch=32,
                           stride=16, holdout=0.34, min_fraction=0.05)
    for i, sid in enumerate(ds.ids):
        m = np.asarray(Image.open(pm / "late" / f"{sid}.png"))
        assert m.shape == (32, 32) and set(np.unique(m)) <= set(np.flatnonzero(ds.labels(i)))
    res = runner.invoke(app, ["pseudo-masks", "--checkpoint", str(p1 / "model.ckpt"), "--out", str(pm), *COMMON])
    assert res.exit_code == 0 and "0 written, 8 kept" in res.output  # resumes

    p2 = tmp_path / "phase2"
    data2 = ("data.options={dataset: patch_labels, masks: " + str(pm) + ", options: "
             + DATA.split("=", 1)[1] + "}")
    res = runner.invoke(app, ["train", *COMMON, "data.dataset=pseudo_masks", data2, "model.name=deeplabv3plus",
                              "method.name=mlps", f"trainer.out={p2}"])
    assert res.exit_code == 0, res.output
    logged = (p2 / "logs" / "metrics.csv").read_text().splitlines()[0]
    assert all(f"train/loss/{k}" in logged for k in ("mid", "late", "final"))

    res = runner.invoke(app, ["gate", "--segmenter", str(p2 / "model.ckpt"), "--classifier", str(p1 / "model.ckpt"),
                              "--out", str(tmp_path / "gated.ckpt")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(tmp_path / "gated.ckpt"), "--out",
                              str(tmp_path / "m.json"), *COMMON])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "m.json").read_text())
    assert 0 <= m["mIoU"] <= 1 and m["pixels"] == 4 * 32 * 32  # the held-out image's 4 patches
    # patches are scored in one batch; one by one gives the same confusion matrix (per-pixel metrics, eval-mode BN)
    from pathseg.data import patch_labels
    from pathseg.engine.config import load_config
    from pathseg.engine.train import evaluate

    cfg = load_config(None, [*COMMON, f"trainer.out={tmp_path / 'eval'}"])
    assert PatchLabelDataset(split="test", **cfg.data.options).eval_batch_size == patch_labels.EVAL_BATCH
    batched = evaluate(tmp_path / "gated.ckpt", cfg, "test", metrics=lambda cm, names: cm)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(patch_labels, "EVAL_BATCH", 1)
        single = evaluate(tmp_path / "gated.ckpt", cfg, "test", metrics=lambda cm, names: cm)
    batched, single = np.asarray(batched), np.asarray(single)
    # equal up to float rounding of batched convolutions (a near-tie pixel may flip; a mix-up of patches would not)
    assert single.sum() == batched.sum() == 4 * 32 * 32 and np.abs(batched - single).sum() / 2 <= 4

    res = runner.invoke(app, ["gate", "--segmenter", str(p1 / "model.ckpt"), "--classifier", str(p1 / "model.ckpt"),
                              "--out", str(tmp_path / "bad.ckpt")])
    assert res.exit_code == 2 and "phase-2 segmenter" in res.output
