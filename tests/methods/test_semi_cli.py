"""A tiny semi-supervised run end to end: `pathseg train` on synthetic nuclei with a label-fraction split."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from pathseg.cli.main import app
from pathseg.data.splits import make_split, write_split
from pathseg.data.synth import SyntheticHE


@pytest.fixture(scope="module")
def split_file(tmp_path_factory):
    train = SyntheticHE(n_images=6, size=64, task="nuclei", split="train")
    test = SyntheticHE(n_images=2, size=64, task="nuclei", split="test")
    split = {"dataset": "synthetic", **make_split(train.ids, "1/3", seed=0), "test": test.ids}
    path = tmp_path_factory.mktemp("splits") / "1-3_seed0.json"
    write_split(path, split)
    return path


@pytest.mark.parametrize("method,expect", [("crcfp", ("cont", "cross", "ent"))])
def test_cli_semi_supervised_run(tmp_path, split_file, method, expect):
    out = tmp_path / "run"
    args = [
        "train",
        "data.dataset=synthetic",
        "data.options={n_images: 6, size: 64, task: nuclei}",
        f"data.split_file={split_file}",
        "data.train_transforms=[{name: flip}]",
        "data.batch_size=2",
        "data.unlabeled_batch_size=2",
        "model.name=deeplabv3plus",
        "model.encoder=resnet18",
        f"method.name={method}",
        "method.params={warmup_steps: 1}",
        "trainer.max_steps=3",
        "trainer.val_every=3",
        "trainer.log_every=1",
        "trainer.threads=1",
        "trainer.progress=false",
        f"trainer.out={out}",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert (out / "model.ckpt").is_file()
    rows = json.loads((out / "metrics.json").read_text())
    assert rows[-1]["step"] == 3 and 0.0 <= rows[-1]["mIoU"] <= 1.0
    log = (out / "logs" / "metrics.csv").read_text()
    header = log.splitlines()[0]
    for term in expect:  # every term was logged by the loop
        assert f"train/loss/{term}" in header
    # warm-up: the first step logs zero unsupervised terms, later steps do not
    import csv
    import io

    recs = [r for r in csv.DictReader(io.StringIO(log)) if r.get("train/loss/ent")]
    assert float(recs[0]["train/loss/ent"]) == 0.0 and float(recs[-1]["train/loss/ent"]) > 0.0


def test_cli_reports_missing_unlabeled_split(tmp_path):
    res = CliRunner().invoke(app, ["train", "data.dataset=synthetic", "data.options={n_images: 2, size: 64}",
                                   "method.name=cac", "trainer.max_steps=1", f"trainer.out={tmp_path}"])
    assert res.exit_code == 2 and "unlabelled" in res.output


CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "semi").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_semi_config_builds_and_steps(path):
    """Each configs/semi/*.yaml names valid method parameters and its step runs every term it switches on."""
    from pathseg.engine.config import load_config
    from pathseg.engine.train import build_method

    cfg = load_config(path, ["model.encoder=resnet18"])
    torch.manual_seed(0)
    m = build_method(cfg, ["background", "nucleus"], None)
    m._trainer = SimpleNamespace(global_step=getattr(m, "warmup_steps", 0))  # the first step after the warm-up
    g = torch.Generator().manual_seed(0)
    lab = {"image": torch.rand(2, 3, 64, 64, generator=g), "mask": torch.randint(0, 2, (2, 64, 64), generator=g)}
    unlab = {"image": torch.rand(2, 3, 64, 64, generator=g)}
    batch = {"labeled": lab, "unlabeled": unlab} if m.needs_unlabeled else lab
    out = m.training_losses(batch)
    assert all(torch.isfinite(v) for v in out.values())
    for term in ("cont", "cross", "ent"):
        assert (f"loss/{term}" in out) == (getattr(m, f"weight_{term}", 0) > 0)


def test_cli_trains_from_the_crcfp_config(tmp_path, split_file):
    """`pathseg train --config configs/semi/crcfp.yaml` on synthetic data, scaled down by overrides."""
    out = tmp_path / "run"
    config = Path(__file__).resolve().parents[2] / "configs" / "semi" / "crcfp.yaml"
    args = [
        "train", "--config", str(config),
        "data.dataset=synthetic",
        "data.options={n_images: 6, size: 64, task: nuclei}",
        f"data.split_file={split_file}",
        "data.train_transforms=[{name: flip}]",
        "data.unlabeled_transforms=[{name: flip}]",
        "data.batch_size=2",
        "data.unlabeled_batch_size=2",
        "model.encoder=resnet18",
        "method.params.warmup_steps=0",
        "trainer.max_steps=2",
        "trainer.val_every=2",
        "trainer.log_every=1",
        "trainer.threads=1",
        "trainer.progress=false",
        f"trainer.out={out}",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    header = (out / "logs" / "metrics.csv").read_text().splitlines()[0]
    assert all(f"train/loss/{t}" in header for t in ("cont", "cross", "ent"))
