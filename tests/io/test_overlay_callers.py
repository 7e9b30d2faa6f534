"""One overlay renderer: slide prediction, image prediction and the demo draw the same pixels for the same
image and labels (those of :func:`pathseg.inference.writers.overlay_image`), and that renderer blends as a
hand computation says."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "inference"))
from wsi_helpers import colour_backend, tiny_checkpoint  # noqa: E402

from pathseg.cli.demo import demo_row  # noqa: E402
from pathseg.inference import PredictConfig, SlidePredictor  # noqa: E402
from pathseg.inference.images import predict_images  # noqa: E402
from pathseg.inference.writers import colorize, overlay_image  # noqa: E402
from pathseg.io.files import read_image, write_image  # noqa: E402
from pathseg.io.pyramid import read_level0  # noqa: E402
from pathseg.io.slides import open_slide  # noqa: E402

COLORS = [[230, 230, 230], [220, 40, 60], [40, 200, 90]]


def by_hand(rgb: np.ndarray, labels: np.ndarray, colors, alpha: float = 0.45) -> np.ndarray:
    """round(rgb (1 - a) + colour a), a = 0 on class 0: float64, per pixel, no numpy broadcasting tricks."""
    out = rgb.copy()
    for y in range(rgb.shape[0]):
        for x in range(rgb.shape[1]):
            k = int(labels[y, x])
            if k:
                out[y, x] = [int(np.floor(c * (1 - alpha) + q * alpha + 0.5)) for c, q in zip(rgb[y, x], colors[k])]
    return out


def test_the_renderer_blends_as_computed_by_hand():
    rgb = np.array([[[200, 100, 60], [10, 20, 30]], [[0, 0, 0], [255, 255, 255]]], np.uint8)
    labels = np.array([[1, 0], [2, 1]])
    got = overlay_image(rgb, labels, COLORS)
    # 200*.55 + 220*.45 = 209, 100*.55 + 40*.45 = 73, 60*.55 + 60*.45 = 60; class 0 untouched
    assert got[0, 0].tolist() == [209, 73, 60] and got[0, 1].tolist() == [10, 20, 30]
    assert got[1, 0].tolist() == [18, 90, 41]  # 0*.55 + (40, 200, 90)*.45 = 18, 90, 40.5 -> 41
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, (16, 16))
    assert np.abs(overlay_image(rgb, labels, COLORS).astype(int) - by_hand(rgb, labels, COLORS)).max() <= 1


def test_slide_image_and_demo_overlays_draw_the_same_pixels(tmp_path):
    from pathseg.data.synth import render_region, write_synthetic_slide
    from pathseg.models.checkpoint import default_colors

    # slide prediction: the overlay is drawn on the slide's thumbnail (the whole slide here) with its labels

    slide = write_synthetic_slide(tmp_path / "s.tif", (320, 256), mpp=0.5, seed=2, tile=128)
    rec = SlidePredictor(colour_backend(0.5), PredictConfig(tile=128, overlap=0.0, min_tissue=0.0)).predict(
        slide, tmp_path / "slide")
    labels = read_level0(rec["outputs"]["labels"])
    with open_slide(slide) as s:
        thumb, thumb_mpp = s.thumbnail(2048)
    assert thumb.shape[:2] == labels.shape == (256, 320) and thumb_mpp == 0.5
    drawn = read_image(rec["outputs"]["overlay"])
    slide_view = drawn[:256, :320]
    np.testing.assert_array_equal(slide_view, overlay_image(thumb, labels, [[230, 230, 230], [220, 40, 60]]))

    # image prediction of a tile: its overlay PNG over the labels PNG it wrote
    img = render_region(0, 0, 96, 64, seed=4, centre=1)["image"]
    write_image(tmp_path / "tile.png", img)
    ckpt = tiny_checkpoint(tmp_path / "m.ckpt", mpp=None, num_classes=3)
    [r] = predict_images([tmp_path / "tile.png"], ckpt, tmp_path / "images", stain_norm=False)
    lab, ov = read_image(r["labels"], mode=None), read_image(r["overlay"])
    colors = default_colors(3)
    np.testing.assert_array_equal(ov[:64, :96], overlay_image(img, lab, colors))
    assert np.abs(ov[:64, :96].astype(int) - by_hand(img, lab, colors)).max() <= 1

    # the demo's prediction column: the same renderer with the same blend
    truth = np.zeros(lab.shape, np.int64)
    row = demo_row(img, truth, lab, colors)
    np.testing.assert_array_equal(row[:, 192:], ov[:64, :96])
    np.testing.assert_array_equal(row[:, 96:192], colorize(truth, colors))
    np.testing.assert_array_equal(row[:, :96], img)
