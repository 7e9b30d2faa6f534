"""Generic folder dataset error cases, GeoJSON reading and rasterising (holes), and the qupath dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import shapely
from PIL import Image
from shapely.geometry import Polygon

from pathseg.data import DATASETS
from pathseg.data.folder import FolderDataset, QuPathDataset
from pathseg.errors import DataError, DatasetNotFoundError
from pathseg.io.annotations import fill_polygon, rasterize_geojson, read_geojson

CLASSES = ["background", "tumour", "stroma"]


def _save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _folder(tmp_path: Path) -> Path:
    _save(tmp_path / "images" / "a.png", np.full((6, 8, 3), 9, np.uint8))
    _save(tmp_path / "masks" / "a.png", np.array([[0, 1, 2, 255] * 2] * 6, np.uint8))
    return tmp_path


def test_folder_reads_and_matches_by_stem(tmp_path):
    _folder(tmp_path)
    _save(tmp_path / "images" / "b.jpg", np.zeros((3, 3, 3), np.uint8))
    _save(tmp_path / "masks" / "b.png", np.ones((3, 3), np.uint8))
    ds = DATASETS.get("folder")(tmp_path, class_names=CLASSES)
    assert ds.ids == ["a", "b"] and ds.num_classes == 3
    s = ds[0]
    assert s["mask"][0].tolist() == [0, 1, 2, 255] * 2 and s["image"].shape == (6, 8, 3)
    assert ds[1]["mask"].sum() == 9


def test_folder_size_mismatch_names_mask(tmp_path):
    _folder(tmp_path)
    _save(tmp_path / "masks" / "a.png", np.zeros((5, 8), np.uint8))
    with pytest.raises(DataError, match=r"masks/a\.png: mask size 8x5 does not match"):
        FolderDataset(tmp_path, class_names=CLASSES)[0]


def test_folder_values_outside_class_map(tmp_path):
    _folder(tmp_path)
    _save(tmp_path / "masks" / "a.png", np.array([[0, 3], [7, 255]], np.uint8).repeat(3, 0).repeat(4, 1))
    with pytest.raises(DataError, match=r"masks/a\.png: mask values \[3, 7\] are outside the class map"):
        FolderDataset(tmp_path, class_names=CLASSES)[0]


def test_folder_missing_image_and_missing_mask(tmp_path):
    _folder(tmp_path)
    _save(tmp_path / "masks" / "ghost.png", np.zeros((6, 8), np.uint8))
    with pytest.raises(DataError, match=r"masks/ghost\.png: mask has no image"):
        FolderDataset(tmp_path, class_names=CLASSES)
    (tmp_path / "masks" / "ghost.png").unlink()
    _save(tmp_path / "images" / "c.png", np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(DataError, match=r"images/c\.png: no mask"):
        FolderDataset(tmp_path, class_names=CLASSES)
    ds = FolderDataset(tmp_path, class_names=CLASSES, allow_unlabeled=True)
    assert ds[ds.ids.index("c")]["mask"] is None


def test_folder_corrupt_image(tmp_path):
    _folder(tmp_path)
    (tmp_path / "images" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DataError, match=r"images/a\.png: cannot read"):
        FolderDataset(tmp_path, class_names=CLASSES)[0]


def test_folder_needs_root_and_classes(tmp_path):
    with pytest.raises(DatasetNotFoundError):
        FolderDataset(None, class_names=CLASSES)
    with pytest.raises(DataError, match="class_names"):
        FolderDataset(_folder(tmp_path))


# ---------------------------------------------------------------------------------------------- GeoJSON
def test_polygon_with_hole_equals_hand_computed_mask():
    # exterior (1,1)-(7,6), hole (3,2)-(5,4); pixel (r, c) is in when its centre (c+.5, r+.5) is.
    geom = Polygon([(1, 1), (7, 1), (7, 6), (1, 6)], [[(3, 2), (5, 2), (5, 4), (3, 4)]])
    expected = np.array(
        [
            [0, 0, 0, 0, 0, 0, 0, 0, 0],
            [0, 1, 1, 1, 1, 1, 1, 0, 0],
            [0, 1, 1, 0, 0, 1, 1, 0, 0],
            [0, 1, 1, 0, 0, 1, 1, 0, 0],
            [0, 1, 1, 1, 1, 1, 1, 0, 0],
            [0, 1, 1, 1, 1, 1, 1, 0, 0],
            [0, 0, 0, 0, 0, 0, 0, 0, 0],
        ]
    )
    got = rasterize_geojson([(geom, "tumour")], (7, 9), CLASSES)
    assert np.array_equal(got, expected)
    # sparse annotation: unannotated pixels ignored; the hole shows what is beneath (here: ignore)
    got = rasterize_geojson([(geom, "tumour")], (7, 9), CLASSES, background=255)
    assert np.array_equal(got, np.where(expected == 1, 1, 255))


def test_hole_keeps_the_feature_beneath_and_downsample():
    stroma = Polygon([(0, 0), (8, 0), (8, 8), (0, 8)])
    tumour = Polygon([(0, 0), (8, 0), (8, 8), (0, 8)], [[(2, 2), (6, 2), (6, 6), (2, 6)]])
    got = rasterize_geojson([(stroma, "stroma"), (tumour, "tumour")], (8, 8), CLASSES)
    assert (got[2:6, 2:6] == 2).all() and (got == 1).sum() == 64 - 16
    half = rasterize_geojson([(stroma, "stroma"), (tumour, "tumour")], (4, 4), CLASSES, downsample=2)
    assert np.array_equal(half, got[::2, ::2])


def test_fill_polygon_agrees_with_shapely_on_random_polygons():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:48]
    checked = 0
    for _ in range(20):
        n = int(rng.integers(3, 12))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = rng.uniform(6, 20, n)
        ext = np.c_[24 + rad * np.cos(ang), 24 + rad * np.sin(ang)]
        geom = Polygon(ext).buffer(0)  # a valid polygon, whatever the star shape
        hole = Polygon(np.c_[24 + 3 * np.cos(ang), 24 + 3 * np.sin(ang)]).buffer(0)
        if geom.contains(hole):
            geom = geom.difference(hole)
        if geom.geom_type != "Polygon":
            continue
        ref = shapely.contains_xy(geom, xx + 0.5, yy + 0.5)
        rings = [np.asarray(geom.exterior.coords)] + [np.asarray(r.coords) for r in geom.interiors]
        assert np.array_equal(fill_polygon(rings, (48, 48)), ref)
        checked += 1
    assert checked >= 10


def _qupath_feature(coords, name, multi=False):
    geom = {"type": "MultiPolygon" if multi else "Polygon", "coordinates": coords}
    props = {"objectType": "annotation"}
    if name is not None:
        props["classification"] = {"name": name, "color": [200, 0, 0]}
    return {"type": "Feature", "geometry": geom, "properties": props}


def test_read_geojson_collection_list_and_classes(tmp_path):
    sq = [[[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]]]
    feats = [
        _qupath_feature(sq, "tumour"),
        _qupath_feature([sq, [[[5, 5], [6, 5], [6, 6], [5, 5]]]], "stroma", multi=True),
        _qupath_feature(sq, None),
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 1]}, "properties": {}},
    ]
    (tmp_path / "fc.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    (tmp_path / "list.geojson").write_text(json.dumps(feats))
    for name in ("fc.geojson", "list.geojson"):
        out = read_geojson(tmp_path / name)
        assert [c for _, c in out] == ["tumour", "stroma", None]  # the point has no area: skipped
        assert out[1][0].geom_type == "MultiPolygon" and out[0][0].area == 16
    (tmp_path / "bad.geojson").write_text("{not json")
    with pytest.raises(DataError, match=r"bad\.geojson"):
        read_geojson(tmp_path / "bad.geojson")
    with pytest.raises(DataError, match="not in the class map"):
        rasterize_geojson(read_geojson(tmp_path / "fc.geojson"), (8, 8), CLASSES, source="fc.geojson")


def test_qupath_dataset(tmp_path):
    _save(tmp_path / "images" / "tile.png", np.zeros((6, 6, 3), np.uint8))
    ring, hole = [[1, 1], [5, 1], [5, 5], [1, 5], [1, 1]], [[2, 2], [4, 2], [4, 4], [2, 4], [2, 2]]
    feats = [_qupath_feature([ring, hole], "Tumor")]
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "tile.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    ds = QuPathDataset(tmp_path, class_names=["background", "Tumor"], background=255)
    m = ds[0]["mask"]
    assert (m == 1).sum() == 16 - 4 and (m == 255).sum() == 36 - 12
    assert "qupath" in DATASETS
    (tmp_path / "annotations" / "tile.geojson").unlink()
    with pytest.raises(DataError, match=r"tile\.png: no annotation"):
        QuPathDataset(tmp_path, class_names=["background", "Tumor"])
