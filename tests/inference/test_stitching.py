"""Whole-slide correctness on a synthetic pyramid with known truth and a fixed translation-equivariant model:
no seams (stitched == whole-image inference), labels right where the model is right, GeoJSON and CSV
consistent with the label map, and an interrupted slide resumes to the same result."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "io"))
from wsi_fixtures import level_array, synthetic_slide  # noqa: E402
from wsi_helpers import colour_backend, whole_image_probs  # noqa: E402

from pathseg.inference import PredictConfig, SlidePredictor, Stitcher  # noqa: E402
from pathseg.inference.writers import rasterize_features  # noqa: E402
from pathseg.io.pyramid import read_level0  # noqa: E402
from pathseg.io.tiling import TilingConfig, grid_tiles  # noqa: E402

BORDER = 8  # px excluded at the slide's edge (zero padding of whole-image inference vs white padding)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    path, truth = synthetic_slide(tmp_path_factory.mktemp("wsi"), 1024, seed=1)
    backend = colour_backend()
    whole = whole_image_probs(backend, level_array(path, 0))
    return path, np.load(truth), backend, whole


@pytest.fixture(scope="module")
def half(synth, tmp_path_factory):
    """The reference run: 50% overlap, mean blending."""
    path, _, backend, _ = synth
    return run(backend, path, tmp_path_factory.mktemp("half"))


def run(backend, path, out, **kw):
    cfg = PredictConfig(**{"tile": 256, "overlap": 0.5, "min_tissue": 0.0, "keep_zarr": True, "prob_dtype": "float32",
                           "batch_size": 8, **kw})
    return SlidePredictor(backend, cfg).predict(path, out)


@pytest.mark.parametrize("overlap,blend", [(0.5, "mean"), (0.25, "gaussian"), (0.0, "mean")])  # 49, 25, 16 tiles
def test_no_seams_and_right_where_the_model_is_right(synth, half, tmp_path, overlap, blend):
    path, truth, backend, whole = synth
    rec = half if (overlap, blend) == (0.5, "mean") else run(backend, path, tmp_path, overlap=overlap, blend=blend)
    assert rec["status"] == "done" and rec["tiles"]["failed"] == 0
    z = zarr.open_group(rec["outputs"]["zarr"], mode="r")
    probs, labels = z["probs"][:], z["labels"][:]
    b = BORDER
    diff = np.abs(probs - whole)[:, b:-b, b:-b].max()
    if overlap > 0:
        assert diff < 1e-4, diff
    else:  # no overlap, no trim: pixels next to a tile edge see white padding instead of their neighbours
        assert diff > 1e-3
    tif = read_level0(rec["outputs"]["labels"])
    np.testing.assert_array_equal(tif, labels)
    right = whole.argmax(0) == (truth > 0)
    assert right.mean() > 0.95  # the colour model knows glass from tissue on this slide
    agree = (labels == (truth > 0))[right]
    assert agree.mean() > (0.9999 if overlap > 0 else 0.99)


def test_geojson_and_composition_match_the_label_map(synth, half):
    path, _, backend, _ = synth
    rec = half
    labels = read_level0(rec["outputs"]["labels"])
    gj = json.loads(Path(rec["outputs"]["geojson"]).read_text())
    assert gj["type"] == "FeatureCollection" and gj["features"]
    f0 = gj["features"][0]
    assert f0["geometry"]["type"] == "Polygon"
    assert f0["properties"]["classification"] == {"name": "tissue", "color": [220, 40, 60]}
    # the map is at the slide's own MPP: 1 level-0 px per map px
    back = rasterize_features(gj["features"], ["background", "tissue"], labels.shape, scale=1.0)
    iou = ((back == 1) & (labels == 1)).sum() / ((back == 1) | (labels == 1)).sum()
    assert iou >= 0.99, iou
    with open(rec["outputs"]["composition"]) as f:
        rows = list(csv.DictReader(f))
    counts = np.bincount(labels.ravel(), minlength=2)
    for r in rows:
        k = int(r["class_id"])
        assert int(r["pixels"]) == counts[k]
        assert float(r["area_mm2"]) == pytest.approx(counts[k] * 0.5**2 / 1e6, rel=1e-5)
    assert sum(float(r["fraction"]) for r in rows) == pytest.approx(1.0, abs=1e-5)
    record = json.loads(Path(rec["outputs"]["labels"]).with_name(f"{path.stem}.run.json").read_text())
    for key in ("model", "output_mpp", "config", "versions", "timings", "tiles"):
        assert key in record
    assert record["config"]["tile"] == 256 and record["config"]["overlap"] == 0.5 and record["output_mpp"] == 0.5
    from PIL import Image

    assert max(Image.open(rec["outputs"]["overlay"]).size) <= 2048


def test_interrupted_slide_resumes_to_the_same_maps_and_finished_slides_are_skipped(synth, half, tmp_path):
    path, _, backend, _ = synth
    full = half
    z_full = zarr.open_group(full["outputs"]["zarr"], mode="r")
    pred = SlidePredictor(backend, PredictConfig(tile=256, overlap=0.5, min_tissue=0.0, keep_zarr=True,
                                                 prob_dtype="float32", batch_size=4, checkpoint_every=4))
    part = pred.predict(path, tmp_path / "part", stop_after=22)
    assert part["status"] == "interrupted" and 0 < part["tiles_done"] < part["tiles_total"]
    rest = pred.predict(path, tmp_path / "part")
    assert rest["status"] == "done" and rest["tiles"]["resumed"] and rest["tiles"]["run"] < part["tiles_total"]
    z = zarr.open_group(rest["outputs"]["zarr"], mode="r")
    np.testing.assert_array_equal(z["labels"][:], z_full["labels"][:])
    np.testing.assert_allclose(z["probs"][:], z_full["probs"][:], atol=1e-6)
    again = pred.predict(path, tmp_path / "part")
    assert again["status"] == "skipped"


def _random_probs(K: int, T: int):
    """Tile i's probabilities: seeded by i, normalised over the K classes."""
    def probs(i):
        p = np.random.default_rng(i).random((K, T, T)).astype(np.float32)
        return p / p.sum(0)

    return probs


def _mean_accumulation(tiles, probs, K: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The float64 mean of the tiles' kept regions, and how many tiles cover each pixel."""
    W, H = size
    acc, wsum = np.zeros((K, H, W)), np.zeros((H, W))
    for t in tiles:
        kx0, ky0, kx1, ky1 = t.keep
        x0, y0, x1, y1 = t.out_box
        acc[:, y0:y1, x0:x1] += probs(t.index)[:, ky0:ky1, kx0:kx1]
        wsum[y0:y1, x0:x1] += 1
    return acc / wsum, wsum


def test_stitcher_recovers_from_a_crash_between_checkpoints(tmp_path):
    """Tiles added after the last checkpoint are in the accumulator but not in the record:
    resume must not count them twice."""
    W, H, K, T = 700, 500, 3, 128
    cfg = TilingConfig(tile=T, overlap=0.5, mpp=1.0, min_tissue=0)
    tiles = grid_tiles(None, cfg, slide_mpp=1.0, dimensions=(W, H))

    probs = _random_probs(K, T)
    want, wsum = _mean_accumulation(tiles, probs, K, (W, H))  # reference: plain numpy accumulation

    store = tmp_path / "s.zarr"
    st = Stitcher(store, tiles, (W, H), K, tile=T, chunk=64, probabilities=True, prob_dtype="float32", key="k")
    for i in st.plan(st.load_progress()):
        st.add(i, probs(i))
        if i == 39:
            st.checkpoint(40)
        if i == 47:
            break  # crash: tiles 40..47 are in the accumulator, the record says 40
    st2 = Stitcher(store, tiles, (W, H), K, tile=T, chunk=64, probabilities=True, prob_dtype="float32", key="k")
    assert st2.load_progress() == 40
    order = st2.plan(40)
    assert order == list(range(30, len(tiles)))  # the last done row (tiles 30..39) is redone, then the rest
    for i in order:
        st2.add(i, probs(i))
    assert st2.finished
    np.testing.assert_allclose(st2.probs[:], want, atol=1e-6)
    np.testing.assert_array_equal(st2.labels[:], want.argmax(0))
    assert st2.class_counts().sum() == W * H


def test_coarser_output_probability_maps_and_level0_polygons(synth, tmp_path):
    """Output at 1 µm/px on a 0.5 µm/px slide: GeoJSON is in level-0 px (2 per map px); probability pyramids."""
    from pathseg.io.slides import open_slide

    path, _, backend, _ = synth
    rec = run(backend, path, tmp_path, mpp=1.0, overlap=0.0, probabilities=True, keep_zarr=False)
    labels = read_level0(rec["outputs"]["labels"])
    assert labels.shape == (512, 512) and rec["output_mpp"] == 1.0
    gj = json.loads(Path(rec["outputs"]["geojson"]).read_text())
    xs = [x for f in gj["features"] for x, _ in f["geometry"]["coordinates"][0]]
    assert max(xs) > 1000  # level-0 coordinates, not map pixels
    back = rasterize_features(gj["features"], ["background", "tissue"], labels.shape, scale=2.0)
    iou = ((back == 1) & (labels == 1)).sum() / ((back == 1) | (labels == 1)).sum()
    assert iou >= 0.99, iou
    p_bg, p_t = (read_level0(rec["outputs"][f"prob-{n}"]).astype(int) for n in ("background", "tissue"))
    assert np.abs(p_bg + p_t - 255).max() <= 1
    clear = p_t != p_bg  # argmax of the stored (rounded) probabilities, ties aside
    np.testing.assert_array_equal((labels == 1)[clear], (p_t > p_bg)[clear])
    with open_slide(rec["outputs"]["prob-tissue"]) as s:
        assert s.mpp == pytest.approx(1.0)


@pytest.mark.parametrize("k", [1, 2, 3, 6])
def test_first_argmax_is_numpys_argmax_with_ties(k):
    from pathseg.inference.stitch import first_argmax

    rng = np.random.default_rng(k)
    p = np.round(rng.random((k, 37, 53)).astype(np.float32) * 3) / 3  # few distinct values: many ties
    got = first_argmax(p)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, p.argmax(0))


@pytest.mark.parametrize("chunk", [128, 64])  # chunk = tile: a tile alone in its chunk is written as it is
def test_overlap_zero_stitching_is_the_tiles_themselves(tmp_path, chunk, monkeypatch):
    """At overlap 0 with mean blending a pixel that one tile covers is that tile's probability, bit for bit,
    whether its chunk is written straight from the tile or accumulated; where the grid's last tile is pulled
    inside the slide (700 = 5 x 128 + 60) two tiles meet and are averaged."""
    W, H, K, T = 700, 500, 3, 128
    tiles = grid_tiles(None, TilingConfig(tile=T, overlap=0.0, mpp=1.0, min_tissue=0), slide_mpp=1.0,
                       dimensions=(W, H))

    probs = _random_probs(K, T)
    want, wsum = _mean_accumulation(tiles, probs, K, (W, H))
    alone = []  # tiles that are exactly one chunk and the only tile on it
    for t in tiles:
        x0, y0, x1, y1 = t.out_box
        if x0 % chunk == 0 and y0 % chunk == 0 and x1 - x0 == min(chunk, W - x0) == chunk and \
                y1 - y0 == min(chunk, H - y0) == chunk and (wsum[y0:y1, x0:x1] == 1).all():
            alone.append(t.index)
    # hand count: columns x0 = 0, 128, 256, 384 stand alone (512 meets the pulled-in 572), rows y0 = 0, 128
    # (256 meets 372): 4 x 2 tiles when chunk = tile, none when a tile spans several chunks
    assert len(alone) == (8 if chunk == T else 0)

    st = Stitcher(tmp_path / "s.zarr", tiles, (W, H), K, tile=T, chunk=chunk, probabilities=True,
                  prob_dtype="float32", key="k")
    added = []
    monkeypatch.setattr(st, "_add_in_memory", lambda *a: (added.append(a[0]), Stitcher._add_in_memory(st, *a)))
    for i in st.plan(0):
        st.add(i, probs(i))
    assert st.finished
    assert sorted(set(range(len(tiles))) - set(added)) == (alone if chunk == T else [])
    got = st.probs[:]
    one = wsum == 1
    np.testing.assert_array_equal(got[:, one], want[:, one].astype(np.float32))
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_array_equal(st.labels[:], want.argmax(0))
    np.testing.assert_array_equal(st.class_counts(), np.bincount(want.argmax(0).ravel(), minlength=K))
