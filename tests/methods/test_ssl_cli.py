"""Pretrain -> fine-tune end to end through the CLI on a synthetic slide (tiny: a few steps of each)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from pathseg.cli.main import app
from pathseg.data.synth import write_synthetic_slide


@pytest.mark.filterwarnings("ignore:.*fewer than 8 samples")  # 2 pairs a step, on purpose
def test_cli_pretrain_dsf_then_train_with_the_exported_encoder(tmp_path):
    slide = write_synthetic_slide(tmp_path / "slide.tif", 512, mpp=0.5, seed=0)
    out = tmp_path / "dsf"
    args = ["pretrain", "method.name=dsf", f"data.options={{sources: [{slide}], pair: {{context_size: 32, "
            "context_mpp: 1.0, target_size: 32, target_mpp: 0.5, per_side: 2, min_tissue: 0.0}}", "data.batch_size=2",
            "data.workers=0", "model.encoder=resnet18", "optim.name=adam", "optim.lr=0.001", "trainer.max_steps=2",
            "trainer.val_every=2", "trainer.threads=1", "trainer.progress=false", f"trainer.out={out}"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    rec = json.loads((out / "encoder.json").read_text())
    assert rec["method"] == "dsf" and rec["encoder"] == "resnet18" and rec["steps"] == 2
    assert rec["trained_on"]["files"][0]["path"] == str(slide) and rec["labels_used"] is False
    assert rec["trained_on"]["pair"]["per_side"] == 2 and rec["params"] == {}
    assert (out / "context_encoder.safetensors").is_file()
    assert (out / "checkpoints" / "step_000002" / "encoder.safetensors").is_file() and "snapshots every 2" in res.output

    run = tmp_path / "ft"
    res = CliRunner().invoke(app, [
        "train", "data.dataset=synthetic", "data.options={n_images: 2, size: 64, task: nuclei}",
        "data.train_transforms=[{name: flip}]", "data.batch_size=2", "model.name=unet", "model.encoder=resnet18",
        f"model.weights={out / 'encoder.safetensors'}", "trainer.max_steps=1", "trainer.val_every=1",
        "trainer.threads=1", "trainer.progress=false", f"trainer.out={run}"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    from safetensors.torch import load_file

    ckpt = torch.load(run / "model.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["pathseg"]["encoder"] == "resnet18"
    pre = load_file(str(out / "encoder.safetensors"))
    # one SGD step moves the weights only a little from the pretrained start (not a fresh init)
    w0, w1 = pre["layer4.1.conv2.weight"], ckpt["state_dict"]["encoder.layer4.1.conv2.weight"]
    assert (w1 - w0).abs().max() < 0.05 * w0.abs().max()
