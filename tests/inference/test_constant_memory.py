"""Slide writers in memory that does not grow with the slide (issue 18), with the outputs of the whole-map
writers: the GeoJSON polygonised strip by strip has the polygons GDAL traces on the whole map, the label
pyramid built level from level is the same file, the overlay blended in bands is the same image."""

from __future__ import annotations

import json
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "io"))
from wsi_fixtures import synthetic_slide  # noqa: E402
from wsi_helpers import colour_backend  # noqa: E402

import pathseg.inference.writers as writers  # noqa: E402
from pathseg.inference import PredictConfig, SlidePredictor  # noqa: E402
from pathseg.inference.writers import (  # noqa: E402
    LabelLevels,
    label_polygons,
    map_strips,
    overlay_image,
    rasterize_features,
    write_geojson,
    write_label_geojson,
)
from pathseg.io.pyramid import read_level0, write_label_pyramid  # noqa: E402

NAMES = ["background", "a", "b", "c"]
COLORS = [[230, 230, 230], [220, 40, 60], [60, 160, 60], [40, 60, 220]]


def region_map(seed: int = 0, h: int = 96, w: int = 80) -> np.ndarray:
    """Regions that cross any strip border: a ring with a hole, a U, a spiral arm, a frame touching itself at a
    corner (pinch), blocks of every size and single-pixel noise."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 4, (h // 6 + 1, w // 6 + 1)).astype(np.uint8)
    lab = np.kron(blocks, np.ones((6, 6), np.uint8))[:h, :w].copy()
    lab[5:60, 5:40] = 1
    lab[15:50, 15:30] = 2  # a hole in class 1 that spans many strips
    lab[30:35, 20:25] = 1  # an island in the hole
    lab[62:90, 4:30] = 3
    lab[62:84, 10:24] = 0  # a U of class 3, open at the top
    for i in range(10, 70):  # a staircase: a region that enters and leaves every strip
        lab[i, 45 + (i - 10) // 3:50 + (i - 10) // 3] = 2
    lab[70:80, 60:70] = 1
    lab[72:78, 62:68] = 0
    lab[78, 68], lab[79, 69] = 0, 1  # diagonal pixels of one region (a pinch at a corner)
    noise = rng.random((h, w)) < 0.04
    lab[noise] = rng.integers(0, 4, int(noise.sum()))
    return lab


def features(path: Path) -> list[dict]:
    return json.loads(path.read_text())["features"]


def by_polygon(feats: list[dict]) -> list[str]:
    """Each polygon as (class, exact coordinates), sorted: the polygons, without the features' order (nor the order
    of a MultiPolygon's members)."""
    out = []
    for f in feats:
        g = f["geometry"]
        for coords in g["coordinates"] if g["type"] == "MultiPolygon" else [g["coordinates"]]:
            out.append(json.dumps([f["properties"]["classification"]["name"], coords]))
    return sorted(out)


@pytest.mark.parametrize("kw", [{}, {"scale": 2.0, "min_area": 12.0}, {"scale": 0.7, "min_area": 3.0},
                                {"multipolygon": True}, {"simplify": 1.5, "scale": 1.3},
                                {"include_background": True}])
@pytest.mark.parametrize("rows", [1, 7, 32])
def test_geojson_in_strips_has_the_polygons_of_the_whole_map(tmp_path, kw, rows):
    lab = region_map()
    ref = write_geojson(tmp_path / "whole.geojson", label_polygons(lab, NAMES, COLORS, id_prefix="s", **kw),
                        properties={"pathseg_run_id": "r"})
    got = write_label_geojson(tmp_path / "strips.geojson", map_strips(lab, pixels=rows * lab.shape[1]), NAMES,
                              COLORS, id_prefix="s", properties={"pathseg_run_id": "r"}, **kw)
    want, have = features(ref), features(got)
    assert len(want) >= (3 if kw.get("multipolygon") else 40)
    assert by_polygon(have) == by_polygon(want)  # same polygons, same vertices, rings in GDAL's order
    assert [f["id"] for f in have] == [f["id"] for f in want]  # ids by position, class by class
    assert [f["properties"] for f in have] == [f["properties"] for f in want]
    one = write_label_geojson(tmp_path / "one.geojson", [lab], NAMES, COLORS, id_prefix="s",
                              properties={"pathseg_run_id": "r"}, **kw)
    assert one.read_bytes() == ref.read_bytes()  # a map in one strip: the very file of the whole-map writer


def test_geojson_in_strips_rasterises_back_to_the_map(tmp_path):
    lab = region_map(seed=3, h=120)
    path = write_label_geojson(tmp_path / "g.geojson", map_strips(lab, pixels=5 * 80), NAMES, COLORS)
    back = rasterize_features(features(path), NAMES, lab.shape)
    np.testing.assert_array_equal(back, lab)  # background is 0 in both


def test_geojson_of_a_subsampled_store_matches_the_subsampled_map(tmp_path):
    import zarr

    lab = np.kron(region_map(seed=5), np.ones((3, 3), np.uint8))
    z = zarr.open_array(str(tmp_path / "l.zarr"), mode="w", shape=lab.shape, chunks=(64, 64), dtype="u1")
    z[:] = lab
    small = lab[::3, ::3]
    ref = write_geojson(tmp_path / "w.geojson", label_polygons(small, NAMES, COLORS, scale=3.0))
    got = write_label_geojson(tmp_path / "s.geojson", map_strips(z, 3, pixels=9 * small.shape[1]), NAMES, COLORS,
                              scale=3.0)
    assert by_polygon(features(got)) == by_polygon(features(ref))


def _strips(n: int, rows: int = 32, width: int = 256):
    """n strips of a blocky random map, made one at a time (the map itself is never whole in memory)."""
    for i in range(n):
        rng = np.random.default_rng(i)
        blocks = rng.integers(0, 4, (rows // 4, width // 4)).astype(np.uint8)
        yield np.kron(blocks, np.ones((4, 4), np.uint8))


def test_geojson_memory_does_not_grow_with_the_map(tmp_path):
    def peak(write) -> int:
        tracemalloc.start()
        try:
            write()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    write_label_geojson(tmp_path / "warm.geojson", _strips(2), NAMES, COLORS)  # imports are not the writer's memory
    label_polygons(np.zeros((4, 4), np.uint8), NAMES, COLORS)
    small = peak(lambda: write_label_geojson(tmp_path / "m4.geojson", _strips(4), NAMES, COLORS))
    big = peak(lambda: write_label_geojson(tmp_path / "m16.geojson", _strips(16), NAMES, COLORS))
    whole = peak(lambda: write_geojson(tmp_path / "w16.geojson",  # the whole-map writer on the same 16 strips
                                       label_polygons(np.concatenate(list(_strips(16))), NAMES, COLORS)))
    assert big < 1.5 * small, (small, big)  # 4x the map; what grows is library caches (~100 kB)
    assert big < whole / 8, (big, whole)
    assert (tmp_path / "m16.geojson").read_text().count('"Feature"') == \
        (tmp_path / "w16.geojson").read_text().count('"Feature"')


def test_label_pyramid_from_levels_is_the_same_file(tmp_path):
    import tifffile
    import zarr

    rng = np.random.default_rng(0)
    lab = np.kron(rng.integers(0, 4, (70, 90)), np.ones((9, 9), np.int64))[:600, :777].astype(np.uint8)
    z = zarr.open_array(str(tmp_path / "l.zarr"), mode="w", shape=lab.shape, chunks=(128, 128), dtype="u1")
    z[:] = lab
    plain = write_label_pyramid(tmp_path / "plain.tif", z, mpp=0.5, colors=COLORS, class_names=NAMES, tile=128)
    levels = LabelLevels(z, tmp_path, memory_bytes=20_000, block=64)  # levels 1-2 on disk, the rest in memory
    cascade = write_label_pyramid(tmp_path / "levels.tif", levels, mpp=0.5, colors=COLORS, class_names=NAMES,
                                  tile=128)
    assert cascade.read_bytes() == plain.read_bytes()
    with tifffile.TiffFile(cascade) as tif:
        assert len(tif.pages) == 4
        for k, page in enumerate(tif.pages):  # each level is level 0 subsampled, nearest
            np.testing.assert_array_equal(page.asarray(), lab[::2 ** k, ::2 ** k])
    assert {type(v).__name__ for v in levels.levels.values()} == {"_BlockFile", "ndarray"}
    np.testing.assert_array_equal(levels[0:600:4, 0:777:4], lab[::4, ::4])  # read again, as the overlay does
    np.testing.assert_array_equal(levels[0:600:3, 0:777:3], lab[::3, ::3])  # not a level: from level 0


def test_overlay_blended_in_bands_is_the_whole_image_blend():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (writers.OVERLAY_BAND_ROWS * 2 + 37, 50, 3)).astype(np.uint8)
    lab = rng.integers(0, 5, rgb.shape[:2]).astype(np.uint8)  # 4 is past the 4 colours: clipped to the last
    lut = np.asarray(COLORS, np.float32)  # the blend over the whole image at once
    col = lut[np.clip(lab, 0, 3)]
    a = np.where(lab == 0, 0.0, 0.45).astype(np.float32)
    want = np.clip(rgb.astype(np.float32) * (1 - a[..., None]) + col * a[..., None] + 0.5, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(overlay_image(rgb, lab, COLORS), want)


def test_slide_geojson_in_strips_is_the_whole_map_geojson(tmp_path, monkeypatch):
    path, _ = synthetic_slide(tmp_path / "slide", 1024, seed=2)
    cfg = PredictConfig(tile=256, overlap=0.0, min_tissue=0.0, min_area_um2=2.0)
    monkeypatch.setattr(writers, "POLYGON_STRIP_PIXELS", 64 * 1024)  # 1024 px wide: strips of 64 rows
    rec = SlidePredictor(colour_backend(), cfg).predict(path, tmp_path / "out")
    labels = read_level0(rec["outputs"]["labels"])
    stem = path.stem
    want = label_polygons(labels, ["background", "tissue"], [[230, 230, 230], [220, 40, 60]], id_prefix=stem,
                          min_area=2.0 / 0.5 ** 2)
    have = json.loads(Path(rec["outputs"]["geojson"]).read_text())
    assert have["properties"] == {"pathseg_run_id": rec["run_id"]}
    assert len(want) > 5
    assert by_polygon(have["features"]) == by_polygon(want)
    assert sorted(f["id"] for f in have["features"]) == sorted(f["id"] for f in want)


def _simple_rings_by_vertex(ring: np.ndarray) -> list[np.ndarray]:
    """The cut written out one vertex at a time (a stack of vertices; at a vertex already on it, the stretch
    from there to the top is a ring of its own): the reference for the range-based walk of the writer."""
    out, stack, seen = [], [], {}
    for v in map(tuple, ring.tolist()):
        if v in seen:
            k = seen[v]
            for u in stack[k + 1:]:
                del seen[u]
            loop = stack[k:]
            del stack[k + 1:]
            if len(loop) >= 3:
                out.append(np.asarray(loop, np.float64))
            continue
        seen[v] = len(stack)
        stack.append(v)
    if len(stack) >= 3:
        out.append(np.asarray(stack, np.float64))
    return out


@pytest.mark.parametrize("seed", range(40))
def test_ring_cut_at_repeated_vertices_is_the_vertex_by_vertex_cut(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    grid = int(rng.integers(2, 30))  # few distinct vertices: many repeats, nested and overlapping
    ring = rng.integers(0, grid, (n, 2)).astype(np.float64)
    want = _simple_rings_by_vertex(ring)
    got = writers._simple_rings(ring)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    assert sum(map(len, got)) <= n


def _comb_strips(rows: int, h: int = 256, w: int = 64):
    """One region down the whole map (a spine on the left with a ragged right edge, two vertices a row), in
    strips made one at a time."""
    for i in range(0, rows, h):
        lab = np.zeros((h, w), np.uint8)
        for r, x in enumerate(np.random.default_rng(i).integers(1, w - 2, h)):
            lab[r, :x] = 1
        yield lab


def test_geojson_memory_per_vertex_of_a_region_across_the_map(tmp_path):
    """A region that stays open from the first strip to the last (a tissue region down a slide) is joined and
    written at the end: its cost is a few arrays of its vertices, not a Python object per vertex (which took
    about 310 bytes a vertex before the ring cut and the text were written from arrays)."""
    names, colors = ["background", "a"], [[0, 0, 0], [200, 0, 0]]
    write_label_geojson(tmp_path / "warm.geojson", _comb_strips(512), names, colors)
    peaks, vertices = {}, {}
    for rows in (10240, 40960):
        path = tmp_path / f"comb{rows}.geojson"
        tracemalloc.start()
        try:
            write_label_geojson(path, _comb_strips(rows), names, colors)
            peaks[rows] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        (feat,) = features(path)
        vertices[rows] = len(feat["geometry"]["coordinates"][0])
    assert vertices[40960] > 3.5 * vertices[10240] > 3.5 * 15000  # two vertices a row, one region
    per_vertex = (peaks[40960] - peaks[10240]) / (vertices[40960] - vertices[10240])
    assert per_vertex < 200, per_vertex
