"""Synthetic H&E: tiling invariance, Beer–Lambert, centres, the dataset, and the slide writer."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from pathseg.data.base import DATASETS
from pathseg.data.synth import (
    CLASS_NAMES,
    NUCLEI_MAX_MPP,
    NUCLEUS_TYPES,
    SyntheticHE,
    centre_stains,
    render_mask,
    render_region,
    write_synthetic_images,
    write_synthetic_slide,
)
from pathseg.errors import ConfigError

KEYS = ("image", "mask", "instances", "nuclei_type")


@pytest.mark.parametrize("mpp", [0.37, NUCLEI_MAX_MPP * 1.5])
def test_tiles_concatenate_to_the_whole_window(mpp):
    x0, y0, w, h = -123, 4567, 190, 150
    kw = dict(seed=3, centre=2, mpp=mpp)
    whole = render_region(x0, y0, w, h, **kw)
    xs, ys = (0, 77, w), (0, 61, h)  # uneven 2x2 split
    tiles = [[render_region(x0 + xs[i], y0 + ys[j], xs[i + 1] - xs[i], ys[j + 1] - ys[j], **kw) for i in range(2)]
             for j in range(2)]
    for key in KEYS:
        joined = np.concatenate([np.concatenate([t[key] for t in row], axis=1) for row in tiles], axis=0)
        np.testing.assert_array_equal(joined, whole[key], err_msg=key)
    assert whole["image"].dtype == np.uint8 and whole["mask"].dtype == np.int64
    assert whole["instances"].dtype == np.int32 and whole["image"].shape == (h, w, 3)
    np.testing.assert_array_equal(render_mask(x0, y0, w, h, seed=3, mpp=mpp), whole["mask"])


def test_beer_lambert():
    m0, s0 = centre_stains(0)
    raw = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
    np.testing.assert_allclose(m0, raw / np.linalg.norm(raw, axis=1, keepdims=True))
    assert s0.tolist() == [1.0, 1.0, 1.0]
    for centre in (0, 2):
        r = render_region(900, 2800, 96, 80, seed=0, centre=centre, return_concentrations=True)
        c = r["concentrations"].astype(np.float64)
        m = centre_stains(centre)[0]
        # one pixel by hand, channel by channel
        cy, cx = np.unravel_index(np.argmax(c[..., 0]), c.shape[:2])  # a dark nuclear pixel
        ch, ce, cr = c[cy, cx]
        for k in range(3):
            od = ch * m[0, k] + ce * m[1, k] + cr * m[2, k]
            assert abs(int(r["image"][cy, cx, k]) - 255 * np.exp(-od)) <= 0.5 + 1e-3
        want = 255 * np.exp(-(c @ m))
        assert np.abs(r["image"] - want).max() <= 0.5 + 1e-3
        assert r["nuclei_type"][cy, cx] > 0 and r["instances"][cy, cx] > 0


def test_centres_differ_on_the_same_tissue():
    imgs = [render_region(2000, 3000, 96, 96, seed=0, centre=c) for c in range(4)]
    for c in range(1, 4):
        np.testing.assert_array_equal(imgs[c]["mask"], imgs[0]["mask"])
        np.testing.assert_array_equal(imgs[c]["instances"], imgs[0]["instances"])
        assert np.abs(imgs[c]["image"].astype(int) - imgs[0]["image"]).mean() > 4
        assert not np.allclose(centre_stains(c)[0], centre_stains(0)[0])


def test_features_are_sized_in_micrometres():
    """Halving mpp doubles the pixel size of the same tissue: the class maps agree after 2x subsampling."""
    coarse = render_mask(1000, 1000, 128, 128, seed=4, mpp=0.5)
    fine = render_mask(2000, 2000, 256, 256, seed=4, mpp=0.25)
    assert (fine[::2, ::2] == coarse).mean() > 0.97
    # nuclei: tumour nuclei are larger than lymphocytes, fibroblasts elongated
    r = render_region(2000, 3000, 384, 384, seed=0, mpp=0.5)
    areas = {t: [] for t in range(1, len(NUCLEUS_TYPES))}
    for i in np.unique(r["instances"])[1:]:
        sel = r["instances"] == i
        areas[int(np.bincount(r["nuclei_type"][sel]).argmax())].append(sel.sum())
    tum, lym = np.median(areas[1]), np.median(areas[2])
    assert tum > 2 * lym, (tum, lym)
    assert 20 < lym * 0.25 < 45  # µm²: lymphocyte radius ~2.6-3.3 µm
    r2 = render_region(4000, 6000, 128, 128, seed=0, mpp=0.25)  # same µm window, finer pixels
    n_fine = np.unique(r2["instances"]).size
    n_coarse = np.unique(render_region(2000, 3000, 64, 64, seed=0, mpp=0.5)["instances"]).size
    assert abs(n_fine - n_coarse) <= 3


def test_default_dataset():
    ds = SyntheticHE()
    assert DATASETS.get("synthetic") is SyntheticHE
    assert len(ds) == 24 and ds.num_classes == 5 and ds.class_names == CLASS_NAMES
    seen = np.zeros(5, bool)
    for i in range(len(ds)):
        s = ds[i]
        present = np.isin(np.arange(5), np.unique(s["mask"]))
        np.testing.assert_array_equal(s["labels"], present.astype(np.float32))
        seen |= present
        assert s["image"].shape == (256, 256, 3) and s["meta"]["source"] == f"centre-{i % 3}"
        assert s["meta"]["mpp"] == 0.5 and ds.sources[i] == s["meta"]["source"]
        np.testing.assert_array_equal(ds.labels(i), s["labels"])
    assert seen.all(), seen
    np.testing.assert_array_equal(ds[3]["image"], SyntheticHE()[3]["image"])  # deterministic
    val = SyntheticHE(split="val", n_images=6)
    train_imgs = {ds[i]["image"].tobytes() for i in range(6)}
    assert not any(val[i]["image"].tobytes() in train_imgs for i in range(6))
    with pytest.raises(ConfigError, match="task"):
        SyntheticHE(task="glands")


def test_nuclei_task():
    ds = SyntheticHE(task="nuclei", n_images=3, size=96, n_centres=2)
    assert ds.class_names == ["background", "nucleus"]
    for i in range(3):
        s = ds[i]
        inst = s["instances"]
        np.testing.assert_array_equal(s["mask"], (inst > 0).astype(np.int64))
        ids = np.unique(inst)
        np.testing.assert_array_equal(ids, np.arange(ids.size))  # compact 0..N
        assert s["labels"].shape == (len(NUCLEUS_TYPES) - 1,)


def test_write_synthetic_images(tmp_path):
    from pathseg.io.files import read_image

    out = write_synthetic_images(tmp_path / "syn", 3, 64, 1, "tissue")
    rows = list(csv.reader(open(out / "labels.csv")))
    assert rows[0][: 1 + len(CLASS_NAMES)] == ["id", *CLASS_NAMES] and len(rows) == 4
    ds = SyntheticHE(n_images=3, size=64, seed=1)
    for i, row in enumerate(rows[1:]):
        s = ds[i]
        assert row[0] == s["meta"]["id"]
        np.testing.assert_array_equal(read_image(out / "images" / f"{row[0]}.png"), s["image"])
        np.testing.assert_array_equal(read_image(out / "masks" / f"{row[0]}.png", mode=None), s["mask"])
        inst = read_image(out / "instances" / f"{row[0]}.png", mode=None)
        np.testing.assert_array_equal(inst, s["instances"])
        assert [int(v) for v in row[1:6]] == s["labels"].astype(int).tolist()
    assert not list(out.rglob("*.tmp*"))  # atomic writes left nothing behind


def test_slide_writer(tmp_path):
    import openslide
    import tifffile

    path = write_synthetic_slide(tmp_path / "s.tiff", (1100, 700), mpp=0.5, seed=2, tile=256,
                                 truth_path=tmp_path / "s.truth.npy")
    with openslide.OpenSlide(str(path)) as s:
        assert s.level_count == 2 and s.level_dimensions == ((1100, 700), (550, 350))
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.5)
        assert float(s.properties["openslide.mpp-y"]) == pytest.approx(0.5)
        got = np.asarray(s.read_region((300, 250), 0, (200, 150)))[..., :3]
    np.testing.assert_array_equal(got, render_region(300, 250, 200, 150, seed=2, mpp=0.5)["image"])
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff and tif.pages[0].is_tiled
        levels = tif.series[0].levels
        assert [lv.shape for lv in levels] == [(700, 1100, 3), (350, 550, 3)]
        lv0 = levels[0].asarray()
        lv1 = levels[1].asarray()
        x_res = tif.pages[0].tags["XResolution"].value
        assert x_res[0] / x_res[1] == pytest.approx(1e4 / 0.5)  # pixels per cm
        assert "MPP = 0.5" in tif.pages[0].description
    np.testing.assert_array_equal(lv0, render_region(0, 0, 1100, 700, seed=2, mpp=0.5)["image"])
    np.testing.assert_array_equal(lv1, render_region(0, 0, 550, 350, seed=2, mpp=1.0)["image"])
    truth = np.load(tmp_path / "s.truth.npy")
    np.testing.assert_array_equal(truth, render_region(0, 0, 1100, 700, seed=2)["mask"])
    # a TIFF truth pyramid, and an explicit level count
    write_synthetic_slide(tmp_path / "t.tiff", 600, mpp=1.0, seed=2, tile=256, levels=3,
                          truth_path=tmp_path / "t.truth.tif")
    with tifffile.TiffFile(tmp_path / "t.truth.tif") as tif:
        assert [p.shape for p in tif.pages] == [(600, 600), (300, 300), (150, 150)]
        np.testing.assert_array_equal(tif.pages[0].asarray(), render_mask(0, 0, 600, 600, seed=2, mpp=1.0))
        np.testing.assert_array_equal(tif.pages[2].asarray(), render_mask(0, 0, 150, 150, seed=2, mpp=4.0))
    with pytest.raises(ConfigError, match="tile"):
        write_synthetic_slide(tmp_path / "bad.tiff", 256, tile=100)
