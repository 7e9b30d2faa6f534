"""HookNet on whole slides: each tile's context read from the slide, checked against the image-level geometry."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "io"))
from wsi_fixtures import synthetic_slide  # noqa: E402
from wsi_helpers import TWO_CLASSES  # noqa: E402

from pathseg.errors import ConfigError  # noqa: E402
from pathseg.inference.backends import TorchBackend, load_backend  # noqa: E402
from pathseg.inference.predictor import PredictConfig, SlidePredictor, TileDataset  # noqa: E402
from pathseg.io.slides import open_slide  # noqa: E402
from pathseg.io.tiling import TilingConfig, grid_tiles  # noqa: E402

MPP = 0.5


def one_level_slide(path: Path, image: np.ndarray, mpp: float = MPP) -> Path:
    """A tiled BigTIFF with level 0 only, so any coarser read is an area resize of level 0."""
    import tifffile

    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(image, tile=(128, 128), photometric="rgb", compression="zlib",
                 resolution=(1e4 / mpp,) * 2, resolutionunit="CENTIMETER", metadata=None)
    return path


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    from pathseg.data.synth import render_region

    return render_region(0, 0, 512, 512, seed=3, mpp=MPP)["image"]


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory, image) -> Path:
    return one_level_slide(tmp_path_factory.mktemp("hook") / "hook.tiff", image)


def hooknet(ratio: int = 2, tile: int = 128):
    from pathseg.models import create_model

    torch.manual_seed(0)
    return create_model("hooknet", encoder="resnet18", num_classes=2, ratio=ratio, tile=tile).eval()


def info() -> dict:
    from pathseg.models.checkpoint import model_info

    return model_info(hooknet(), TWO_CLASSES, mpp=MPP)


def test_tile_dataset_reads_the_context_centred_on_the_tile(slide_path, image):
    """The context is the r*T region around the tile's centre, averaged over r x r blocks; white off the slide."""
    r, t = 2, 64
    with open_slide(slide_path) as slide:
        tiles = grid_tiles(slide, TilingConfig(tile=t, overlap=0.0, mpp=MPP, min_tissue=0.0))
        by_origin = {(tl.x, tl.y): tl for tl in tiles}
        inner, corner = by_origin[(128, 192)], by_origin[(0, 0)]
        ds = TileDataset(slide, tiles, [inner.index, corner.index], tile=t, mpp=MPP, context_ratio=r)
        got, edge = ds[0], ds[1]
    y0, x0 = 192 + t // 2 - r * t // 2, 128 + t // 2 - r * t // 2  # context corner, in level-0 pixels
    region = image[y0:y0 + r * t, x0:x0 + r * t].astype(np.float64)
    expected = region.reshape(t, r, t, r, 3).mean(axis=(1, 3))
    assert got["ok"] and np.array_equal(got["image"].numpy(), image[192:192 + t, 128:128 + t])
    assert np.abs(got["context"].numpy() - expected).max() <= 1.0  # uint8 rounding only
    # the corner tile: its context's top-left quarter lies off the slide and reads white
    ctx = edge["context"].numpy()
    off = t // 2 - t // (2 * r)  # context pixels before the slide's first row/column
    assert (ctx[:off, :] == 255).all() and (ctx[:, :off] == 255).all()
    inside = image[:r * t - r * off, :r * t - r * off].astype(np.float64)
    want = inside.reshape(t - off, r, t - off, r, 3).mean(axis=(1, 3))
    assert np.abs(ctx[off:, off:] - want).max() <= 1.0


def test_slide_prediction_matches_hooknet_on_the_whole_image(slide_path, image, tmp_path):
    """Tiles whose context lies inside the slide get the probabilities HookNet.segment gives on the image."""
    import zarr

    model = hooknet(ratio=2, tile=128)
    be = TorchBackend(model, info(), device="cpu", threads=1)
    assert be.context_ratio == 2
    cfg = PredictConfig(tile=128, overlap=0.0, min_tissue=0.0, keep_zarr=True, prob_dtype="float32",
                        tissue_method="otsu")
    rec = SlidePredictor(be, cfg).predict(slide_path, tmp_path)
    assert rec["status"] == "done" and rec["context_ratio"] == 2 and rec["tiles"]["grid_with_tissue"] == 16
    probs = np.asarray(zarr.open(str(tmp_path / "hook" / "hook.zarr"), mode="r")["probs"])
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255
    mean, std = (torch.tensor(info()[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    with torch.inference_mode():
        ref = torch.softmax(model((x - mean) / std), 1)[0].numpy()
    # tiles at 128 and 256: their 256 px contexts (64 px around) are inside the 512 px image
    sl = (slice(None), slice(128, 384), slice(128, 384))
    assert np.abs(probs[sl] - ref[sl]).max() < 0.02
    assert (probs[sl].argmax(0) == ref[sl].argmax(0)).mean() > 0.99


def test_a_hooknet_checkpoint_predicts_a_slide_through_the_cli_with_auto_backend(tmp_path):
    from pathseg.cli.main import app
    from pathseg.models.checkpoint import save_model_checkpoint

    slide = synthetic_slide(tmp_path / "s", 1024, seed=1, truth=False)[0]  # pyramidal: `predict` treats it as a slide
    ckpt = save_model_checkpoint(tmp_path / "hook.ckpt", hooknet(ratio=2, tile=128), TWO_CLASSES, mpp=2.0)
    assert load_backend(ckpt, backend="auto", device="cpu").name == "torch"  # not ONNX: two inputs
    with pytest.raises(ConfigError, match="ONNX export is not supported"):
        load_backend(ckpt, backend="onnx")
    out = tmp_path / "pred"
    r = CliRunner().invoke(app, ["predict", str(slide), "--checkpoint", str(ckpt), "--out", str(out), "--tile", "128"])
    assert r.exit_code == 0, r.output
    d = out / slide.stem
    record = json.loads((d / f"{slide.stem}.run.json").read_text())
    assert record["backend"] == "torch" and record["context_ratio"] == 2 and record["output_size"] == [256, 256]
    assert (d / f"{slide.stem}.labels.tif").is_file() and (d / f"{slide.stem}.geojson").is_file()


def test_tile_size_must_suit_the_hook(tmp_path):
    be = TorchBackend(hooknet(), info(), device="cpu", threads=1)
    with pytest.raises(ConfigError, match="multiple of 64"):
        SlidePredictor(be, PredictConfig(tile=96))
    with pytest.raises(ConfigError, match="needs each tile's context"):
        be(np.zeros((1, 64, 64, 3), np.uint8))
