"""GlaS adapter: grades from the CR-only Grade.csv, masks from the instance maps, sizes read not assumed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pathseg.data.glas import GlaS, read_grade_csv
from pathseg.errors import DataError

# PROVENANCE.md staging rule: the 10 lowest-numbered benign and malignant training images
BENIGN = {f"train_{n}" for n in (2, 4, 6, 8, 9, 12, 15, 20, 21, 22)}
MALIGNANT = {f"train_{n}" for n in (1, 3, 5, 7, 10, 11, 13, 14, 16, 17)}


@pytest.fixture(scope="module")
def glas(shared_dataset) -> Path:
    return shared_dataset("glas")


def test_grade_csv_cr_only(glas):
    raw = (glas / "Grade.csv").read_bytes()
    assert b"\r" in raw and b"\n" not in raw  # the gotcha this parser must handle
    grades = read_grade_csv(glas / "Grade.csv")
    assert len(grades) == 165  # PROVENANCE.md: Grade.csv covers all 165 images of the release
    assert {k for k, v in grades.items() if k in BENIGN | MALIGNANT and v["grade"] == "benign"} == BENIGN
    assert {k for k, v in grades.items() if k in BENIGN | MALIGNANT and v["grade"] == "malignant"} == MALIGNANT
    assert all(v["patient"] == v["patient"].strip() and v["patient"] for v in grades.values())


def test_masks_labels_and_sizes(glas):
    ds = GlaS(glas)
    assert set(ds.ids) >= BENIGN | MALIGNANT
    for i, name in enumerate(ds.ids):
        s = ds[i]
        with Image.open(glas / "train" / "annotations" / f"{name}_anno.bmp") as im:
            anno = np.asarray(im)
        with Image.open(glas / "train" / "images" / f"{name}.bmp") as im:
            size = im.size
        assert s["image"].shape == (size[1], size[0], 3)
        assert np.array_equal(s["mask"], (anno > 0).astype(np.int64))
        assert np.array_equal(s["instances"], anno)
        expected = [1.0, 0.0] if name in BENIGN else [0.0, 1.0]
        assert s["labels"].tolist() == expected, name
    sizes = {ds[i]["image"].shape for i in (ds.ids.index("train_1"), ds.ids.index("train_7"))}
    assert len(sizes) == 2  # train_7 is smaller than most: nothing may assume one size


def test_grade_view(glas):
    ds = GlaS(glas, view="grade")
    assert ds.class_names == ["background", "benign_gland", "malignant_gland"]
    for name, value in (("train_2", 1), ("train_1", 2)):
        s = ds[ds.ids.index(name)]
        gland = s["instances"] > 0
        assert set(np.unique(s["mask"][gland]).tolist()) == {value}
        assert (s["mask"][~gland] == 0).all()


def test_flat_release_layout_and_errors(tmp_path):
    (tmp_path / "Grade.csv").write_bytes(b"name, patient ID, grade (GlaS), grade (S)\rtrain_1, 3,  benign, healthy\r")
    Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(tmp_path / "train_1.bmp")
    anno = np.zeros((5, 7), np.uint8)
    anno[1:3, 2:5] = 4
    Image.fromarray(anno).save(tmp_path / "train_1_anno.bmp")
    s = GlaS(tmp_path)[0]
    assert s["mask"].sum() == 6 and s["labels"].tolist() == [1.0, 0.0] and s["meta"]["source"] == "patient3"
    Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(tmp_path / "train_2.bmp")
    with pytest.raises(DataError, match="Grade.csv"):
        GlaS(tmp_path)
    with pytest.raises(DataError, match="unknown view"):
        GlaS(tmp_path, view="colour")
