"""A tiny train -> evaluate -> predict run on synthetic data, through the CLI, as a user would run it."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pathseg.cli.main import app

runner = CliRunner()

TINY = [
    "data.dataset=synthetic",
    "data.options={task: tissue, n_images: 6, size: 96}",
    "data.train_transforms=[{name: random_crop, size: 64}, {name: flip}]",
    "data.batch_size=4",
    "model.name=unet",
    "model.encoder=resnet18",
    "optim.name=adam",
    "optim.lr=0.001",
    "trainer.max_steps=4",
    "trainer.val_every=2",
    "trainer.progress=false",
    "trainer.threads=2",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    res = runner.invoke(app, ["train", *TINY, f"trainer.out={out}"])
    assert res.exit_code == 0, res.output
    return out


def test_train_writes_checkpoint_metrics_and_config(trained):
    assert (trained / "model.ckpt").is_file()
    assert (trained / "checkpoints" / "last.ckpt").is_file()
    rows = json.loads((trained / "metrics.json").read_text())
    assert [r["step"] for r in rows] == [2, 4]  # one row per validation
    assert 0.0 <= rows[-1]["mIoU"] <= 1.0
    header = (trained / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"step", "mIoU", "Dice", "accuracy", "FwIoU"} <= set(header)
    assert "max_steps: 4" in (trained / "config.yaml").read_text()


def test_resume_continues_from_last_checkpoint(trained):
    # asking for 6 steps with the same output folder resumes at step 4 and runs 2 more
    res = runner.invoke(app, ["train", *TINY, f"trainer.out={trained}", "trainer.max_steps=6"])
    assert res.exit_code == 0, res.output
    rows = json.loads((trained / "metrics.json").read_text())
    assert rows[-1]["step"] == 6


def test_evaluate_and_predict(trained, tmp_path):
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(trained / "model.ckpt"), "--out",
                              str(tmp_path / "m.json"), *TINY])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "m.json").read_text())
    assert 0.0 <= m["mIoU"] <= 1.0 and m["pixels"] > 0

    from pathseg.data.synth import write_synthetic_images

    write_synthetic_images(tmp_path / "imgs", 2, 80, 5, "tissue")
    res = runner.invoke(app, ["predict", str(tmp_path / "imgs" / "images"), "--checkpoint",
                              str(trained / "model.ckpt"), "--out", str(tmp_path / "pred")])
    assert res.exit_code == 0, res.output
    written = sorted(p.name for p in (tmp_path / "pred").iterdir())
    stems = sorted(p.stem for p in (tmp_path / "imgs" / "images").iterdir())
    assert written == sorted([f"{s}.png" for s in stems] + [f"{s}_overlay.png" for s in stems])
    lab = np.asarray(Image.open(tmp_path / "pred" / f"{stems[0]}.png"))
    assert lab.shape == (80, 80) and lab.max() < 5  # class indices of the 5 tissue classes


def test_bad_inputs_get_messages_not_tracebacks(trained, tmp_path):
    res = runner.invoke(app, ["train", "optim.lrr=0.1"])
    assert res.exit_code == 2 and "Did you mean 'lr'" in res.output
    res = runner.invoke(app, ["train", "model.name=unte", *TINY[:3], f"trainer.out={tmp_path}"])
    assert res.exit_code == 2 and "Did you mean 'unet'" in res.output
    res = runner.invoke(app, ["train", "method.name=supervisd", f"trainer.out={tmp_path}"])
    assert res.exit_code == 2 and "supervised" in res.output
    res = runner.invoke(app, ["train", "data.dataset=monusge", f"trainer.out={tmp_path}"])
    assert res.exit_code == 2 and "monuseg" in res.output
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(tmp_path / "nope.ckpt"), *TINY])
    assert res.exit_code == 2 and "nope.ckpt" in res.output
    (tmp_path / "bad.png").write_bytes(b"\x89PNG truncated")
    res = runner.invoke(app, ["predict", str(tmp_path / "bad.png"), "--checkpoint", str(trained / "model.ckpt"),
                              "--out", str(tmp_path / "p")])
    assert res.exit_code == 1 and "bad.png" in res.output
    assert "Traceback" not in res.output
