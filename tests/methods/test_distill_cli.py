"""Háberová et al. end to end through the CLI on synthetic cells: segmentation (phase I) -> cell bank
(QuPath GeoJSON weak/expert labels matched to segmented nuclei) -> teacher -> student -> fine-tune ->
classified cells written as QuPath GeoJSON, each step a `pathseg` command as a user would run it."""

import json

import torch
from typer.testing import CliRunner

from pathseg.cli.main import app

runner = CliRunner()


def test_segment_bank_distill_finetune_cells(tmp_path):
    torch.set_num_threads(1)
    data = tmp_path / "cells"
    res = runner.invoke(app, ["synth-cells", str(data), "--n", "2", "--size", "96", "--weak-rate", "0.3",
                              "--expert-fraction", "0.6"])
    assert res.exit_code == 0, res.output
    seg = tmp_path / "seg"
    res = runner.invoke(app, ["train", "-c", "configs/distill/nuclei_synthetic.yaml", "trainer.max_steps=2",
                              "trainer.val_every=2", "trainer.log_every=1", "trainer.progress=false", "trainer.threads=1",
                              "data.options.sources=[{dataset: synthetic, options: {task: nuclei, n_images: 2, size: 64}}]",
                              "data.options.patch=64", "data.batch_size=2", f"trainer.out={seg}"])
    assert res.exit_code == 0, res.output
    row = json.loads((seg / "metrics.json").read_text())[-1]
    assert 0 <= row["Dice"] <= 1
    assert "train/loss/dice" in (seg / "logs" / "metrics.csv").read_text().splitlines()[0]

    bank = tmp_path / "bank.npz"
    res = runner.invoke(app, ["cell-bank", str(data / "images"), "--instances", str(data / "instances"),
                              "--weak", str(data / "weak"), "--expert", str(data / "expert"),
                              "--truth", str(data / "truth"), "--out", str(bank), "--size", "32"])
    assert res.exit_code == 0, res.output
    from pathseg.methods.distill.cells import CellBank

    b = CellBank.load(bank)
    assert len(b) > 0 and b.patches.shape[1:] == (3, 32, 32, 3) and (b.weak >= 0).all() and (b.truth >= 0).all()
    assert (b.weak != b.truth).any()
    # the expert outlined about 60% of the cells: the others are unknown (-1), not background (0)
    known = b.expert >= 0
    assert 0 < known.sum() < len(b) and (b.expert[~known] == -1).all()
    assert (b.expert[known] == b.truth[known]).all() and not (b.expert == 0).any()

    out = tmp_path / "distill"
    args = ["distill", "--bank", str(bank), "--eval-bank", str(bank), "-c", "configs/distill/cells.yaml",
            "--out", str(out), "teacher.epochs=1", "teacher.batch_size=8", "student.epochs=1", "student.batch_size=8",
            "finetune.counts=[2]", "finetune.lr=[1.0e-3]", "finetune.dropout=[0.0, 0.5]", "finetune.epochs=1",
            "finetune.batch_size=4", "threads=1"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("teacher", "student", "student+finetune-2"):
        assert 0 <= metrics[key]["eval"]["F1"] <= 1, key
    assert metrics["student+finetune-2"]["dropout"] in (0.0, 0.5)
    res = runner.invoke(app, args)  # resumes: nothing retrained
    assert res.exit_code == 0 and "student+finetune-2:" not in res.output

    gj = tmp_path / "geojson"
    res = runner.invoke(app, ["cells", str(data / "images"), "--segmenter", str(seg / "model.ckpt"), "--classifier",
                              str(out / "finetune" / "n2.pt"), "--out", str(gj), "--include-background"])
    assert res.exit_code == 0, res.output
    files = sorted(gj.glob("*.geojson"))
    assert len(files) == 2
    feats = json.loads(files[0].read_text())["features"]
    names = {"background", "tumour", "lymphocyte", "fibroblast"}
    assert all(f["properties"]["classification"]["name"] in names for f in feats)
    assert all(f["properties"]["objectType"] == "detection" for f in feats)
