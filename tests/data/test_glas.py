"""GlaS adapter: grades and patients from the CR-only Grade.csv, masks from the instance maps, sizes read
not assumed. The expected grades, patients and counts come from Grade.csv and the staged files themselves
(parsed here independently of the adapter), never from a hard-coded image count."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pathseg.data.glas import GlaS, read_grade_csv
from pathseg.errors import DataError


@pytest.fixture(scope="module")
def glas(shared_dataset) -> Path:
    return shared_dataset("glas")


@pytest.fixture(scope="module")
def truth(glas) -> dict[str, tuple[str, str]]:
    """``{name: (patient, grade)}`` straight from the bytes of Grade.csv: CR-separated records, comma fields."""
    records = (glas / "Grade.csv").read_bytes().decode("utf-8").split("\r")
    rows = [[f.strip() for f in r.split(",")] for r in records[1:] if r.strip()]
    return {r[0]: (r[1], r[2]) for r in rows}


@pytest.fixture(scope="module")
def staged(glas) -> list[str]:
    return sorted(p.stem for p in (glas / "train" / "images").glob("train_*.bmp"))


def test_grade_csv_cr_only(glas, truth):
    raw = (glas / "Grade.csv").read_bytes()
    assert b"\r" in raw and b"\n" not in raw  # the gotcha this parser must handle
    grades = read_grade_csv(glas / "Grade.csv")
    assert len(grades) == len(truth) == 165  # PROVENANCE.md: Grade.csv covers all 165 images of the release
    assert {k: (v["patient"], v["grade"]) for k, v in grades.items()} == truth
    assert all(v["patient"] == v["patient"].strip() and v["patient"] for v in grades.values())


def test_every_staged_image_with_its_grade_and_patient(glas, truth, staged):
    ds = GlaS(glas)
    assert sorted(ds.ids) == staged and len(ds) == len(staged)  # every file on disk, no count assumed
    want_grade = Counter(truth[n][1] for n in staged)
    got_grade = Counter(ds.grade(i) for i in range(len(ds)))
    assert got_grade == want_grade and set(got_grade) == {"benign", "malignant"}
    assert ds.patients == [truth[n][0] for n in ds.ids]
    assert ds.sources == [f"patient{truth[n][0]}" for n in ds.ids]
    assert len(set(ds.patients)) == len({truth[n][0] for n in staged})
    # a subset view keeps the per-image attributes aligned with its ids
    pick = [ds.ids[-1], ds.ids[0]]
    sub = ds.subset(pick)
    assert sub.patients == [truth[n][0] for n in pick] and [sub.grade(i) for i in (0, 1)] == [truth[n][1] for n in pick]


def test_masks_labels_meta_and_sizes(glas, truth):
    ds = GlaS(glas)
    sizes = set()
    for i, name in enumerate(ds.ids):
        s = ds[i]
        with Image.open(glas / "train" / "annotations" / f"{name}_anno.bmp") as im:
            anno = np.asarray(im)
        with Image.open(glas / "train" / "images" / f"{name}.bmp") as im:
            size = im.size
        sizes.add(size)
        assert s["image"].shape == (size[1], size[0], 3)
        assert np.array_equal(s["mask"], (anno > 0).astype(np.int64))
        assert np.array_equal(s["instances"], anno)
        patient, grade = truth[name]
        assert s["labels"].tolist() == ([1.0, 0.0] if grade == "benign" else [0.0, 1.0]), name
        assert s["meta"]["patient"] == patient and s["meta"]["source"] == f"patient{patient}", name
    assert len(sizes) > 1  # PROVENANCE.md: train_7, train_12 are smaller than most: nothing may assume one size


def test_grade_view(glas, truth):
    ds = GlaS(glas, view="grade")
    assert ds.class_names == ["background", "benign_gland", "malignant_gland"]
    benign = next(n for n in ds.ids if truth[n][1] == "benign")
    malignant = next(n for n in ds.ids if truth[n][1] == "malignant")
    for name, value in ((benign, 1), (malignant, 2)):
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
    ds = GlaS(tmp_path)
    s = ds[0]
    assert s["mask"].sum() == 6 and s["labels"].tolist() == [1.0, 0.0] and s["meta"]["source"] == "patient3"
    assert s["meta"]["patient"] == "3" and ds.patients == ["3"] and ds.patient(0) == "3"
    Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(tmp_path / "train_2.bmp")
    with pytest.raises(DataError, match="Grade.csv"):
        GlaS(tmp_path)
    with pytest.raises(DataError, match="unknown view"):
        GlaS(tmp_path, view="colour")
