"""Prediction applies the stain normalisation a checkpoint was trained with (images, slide tiles, ONNX)."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "inference"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "io"))
from wsi_fixtures import synthetic_slide  # noqa: E402
from wsi_helpers import ColourModel, colour_info  # noqa: E402

from pathseg.cli.main import app  # noqa: E402
from pathseg.data.synth import render_region  # noqa: E402
from pathseg.models.checkpoint import load_model, save_model_checkpoint  # noqa: E402
from pathseg.inference.images import predict_images  # noqa: E402
from pathseg.errors import DataError  # noqa: E402
from pathseg.inference.backends import TorchBackend  # noqa: E402
from pathseg.io.files import read_image, write_image  # noqa: E402
from pathseg.models.predict import predict_logits  # noqa: E402
from pathseg.models.predict import to_model_input as normalise  # noqa: E402
from pathseg.models import create_model  # noqa: E402
from pathseg.transforms.stain import MacenkoNormalizer  # noqa: E402

NAMES = ["background", "tissue"]


def read_labels(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def norm() -> MacenkoNormalizer:
    target = render_region(20000, 500, 128, 128, seed=0, centre=2)["image"]
    return MacenkoNormalizer(fallback="identity").fit(target, reference="centre-2 tile")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, norm):
    """A random tiny U-Net saved with and without the stain state, and one image of another centre."""
    d = tmp_path_factory.mktemp("stain")
    torch.manual_seed(0)
    model = create_model("unet", encoder="resnet18", num_classes=2).eval()
    img = render_region(2000, 3000, 64, 64, seed=0, centre=0)["image"]
    head = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():  # shift class 1's bias so the random model splits this image about in half
        logits = predict_logits(model, normalise(img, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]))
        head.bias[1] += (logits[0, 0] - logits[0, 1]).median()
    with_stain = save_model_checkpoint(d / "stain.ckpt", model, NAMES, mpp=0.5, stain=norm.state())
    without = save_model_checkpoint(d / "plain.ckpt", model, NAMES, mpp=0.5)
    return d, with_stain, without, write_image(d / "img.png", img)


@functools.cache
def loaded(ckpt: Path):
    model, info = load_model(ckpt)
    return model.to(memory_format=torch.channels_last), info


def reference_labels(ckpt: Path, image: np.ndarray) -> np.ma.MaskedArray:
    """What predict_images should write, computed directly; pixels whose two logits are within 1e-4 are
    masked (float rounding of an equivalent normalisation may flip them)."""
    model, info = loaded(ckpt)
    with torch.inference_mode():
        logits = predict_logits(model, normalise(image, info["mean"], info["std"]))[0].numpy()
    top2 = np.sort(logits, axis=0)[-2:]
    return np.ma.masked_array(logits.argmax(0).astype(np.uint8), mask=(top2[1] - top2[0]) < 1e-4)


def assert_labels(got: np.ndarray, want: np.ma.MaskedArray) -> None:
    assert want.mask.mean() < 0.01
    np.testing.assert_array_equal(got[~want.mask], want.data[~want.mask])


def test_predict_images_applies_the_checkpoint_stain(setup, norm):
    d, ckpt, _, image_path = setup
    img = read_image(image_path)
    notes: list[str] = []
    predict_images([image_path], ckpt, d / "on", log=notes.append)
    predict_images([image_path], ckpt, d / "off", stain_norm=False, log=notes.append)
    on, off = read_labels(d / "on" / "img.png"), read_labels(d / "off" / "img.png")
    assert_labels(on, reference_labels(ckpt, norm.transform(img)))
    assert_labels(off, reference_labels(ckpt, img))
    assert not np.array_equal(on, off)
    assert len(notes) == 1 and "macenko" in notes[0] and "centre-2 tile" in notes[0] and "--no-stain-norm" in notes[0]


def test_checkpoint_without_stain_predicts_as_before(setup):
    d, _, plain, image_path = setup
    assert load_model(plain)[1]["stain"] is None
    old = torch.load(plain, weights_only=False)  # a checkpoint from before "stain" existed
    del old["pathseg"]["stain"]
    torch.save(old, d / "old.ckpt")
    notes: list[str] = []
    for ckpt in (plain, d / "old.ckpt"):
        predict_images([image_path], ckpt, d / ckpt.stem, log=notes.append)
        got = read_labels(d / ckpt.stem / "img.png")
        assert_labels(got, reference_labels(plain, read_image(image_path)))
    assert notes == []


def test_unknown_stain_method_names_the_checkpoint_and_the_way_out(setup, norm):
    d, _, _, image_path = setup
    ckpt = torch.load(setup[1], weights_only=False)
    ckpt["pathseg"]["stain"] = dict(norm.state(), method="vahadane")
    torch.save(ckpt, d / "future.ckpt")
    with pytest.raises(DataError, match=r"future\.ckpt: .*'vahadane'.*it can: macenko.*--no-stain-norm"):
        predict_images([image_path], d / "future.ckpt", d / "x")
    r = CliRunner().invoke(app, ["predict", str(image_path), "--checkpoint", str(d / "future.ckpt"), "--out",
                                 str(d / "cli")])
    assert r.exit_code == 2 and "future.ckpt" in r.output and "--no-stain-norm" in r.output
    r = CliRunner().invoke(app, ["predict", str(image_path), "--checkpoint", str(d / "future.ckpt"), "--out",
                                 str(d / "cli"), "--no-stain-norm"])
    assert r.exit_code == 0, r.output
    assert "stain normalisation" not in r.output and (d / "cli" / "img.png").is_file()


def test_cli_predict_says_once_that_it_normalises(setup):
    d, ckpt, _, image_path = setup
    r = CliRunner().invoke(app, ["predict", str(image_path), str(image_path), "--checkpoint", str(ckpt),
                                 "--out", str(d / "cli-on")])
    assert r.exit_code == 0, r.output
    assert r.output.count("stain normalisation: macenko") == 1


def test_slide_backends_normalise_each_tile_and_leave_blank_tiles(tmp_path, norm):
    info = dict(colour_info(), stain=norm.state())
    on = TorchBackend(ColourModel(), info, device="cpu", threads=1)
    off = TorchBackend(ColourModel(), info, device="cpu", threads=1, stain_norm=False)
    plain = TorchBackend(ColourModel(), colour_info(), device="cpu", threads=1)
    assert on.stain is not None and off.stain is None and plain.stain is None
    tissue = render_region(2000, 3000, 64, 64, seed=0, centre=0)["image"]
    blank = np.full((64, 64, 3), 255, np.uint8)
    batch = np.stack([tissue, blank])
    want = plain(np.stack([norm.transform(tissue), blank]))
    np.testing.assert_array_equal(on(batch), want)
    np.testing.assert_array_equal(off(batch), plain(batch))
    assert not np.array_equal(on(batch)[0], off(batch)[0])
    from pathseg.inference.predictor import SlidePredictor

    assert SlidePredictor(on).model_id != SlidePredictor(off).model_id  # a run without it is not reused

    from pathseg.inference.backends import OnnxBackend
    from pathseg.inference.onnx import export_model_onnx, read_onnx_info

    path = export_model_onnx(ColourModel(), info, tmp_path / "colour.onnx", tile=64)
    assert read_onnx_info(path)["stain"] == norm.state()
    np.testing.assert_allclose(OnnxBackend(path, threads=1)(batch), want, atol=1e-5)
    np.testing.assert_allclose(OnnxBackend(path, threads=1, stain_norm=False)(batch), plain(batch), atol=1e-5)


def test_nuclei_patches_hand_their_normaliser_to_the_checkpoint(tmp_path):
    from pathseg.engine.train import _dataset_stain
    from pathseg.methods.distill.nuclei import NucleiPatches

    target = write_image(tmp_path / "target.png", render_region(20000, 500, 96, 96, seed=0, centre=2)["image"])
    sources = [{"dataset": "synthetic", "options": {"task": "nuclei", "n_images": 1, "size": 64}}]
    ds = NucleiPatches(sources=sources, patch=64, macenko=str(target))
    state = _dataset_stain(ds)
    assert state == ds.stain_normalizer.state() and state["reference"] == str(target)
    assert _dataset_stain(NucleiPatches(sources=sources, patch=64)) is None


def test_slide_prediction_records_the_stain_and_reruns_without_it(setup, tmp_path):
    import json

    _, ckpt, _, _ = setup
    slide, _ = synthetic_slide(tmp_path, 1024, seed=1, truth=False)
    records = []
    for flags in ([], ["--no-stain-norm"]):
        r = CliRunner().invoke(app, ["predict", str(slide), "--checkpoint", str(ckpt), "--out", str(tmp_path / "pred"),
                                     "--tile", "128", "--backend", "torch", "--mpp", "4", *flags])
        assert r.exit_code == 0, r.output
        assert r.output.count("stain normalisation: macenko") == (0 if flags else 1)
        records.append(json.loads((tmp_path / "pred" / slide.stem / f"{slide.stem}.run.json").read_text()))
    assert records[0]["stain_normalisation"] == "macenko" and records[0]["status"] == "done"
    assert records[1]["stain_normalisation"] is None and records[1]["status"] == "done"  # not "skipped"
