"""BCSS 21→5 class mapping, BCSS-WSSS/LUAD-HistoSeg patch labels, on tiny files in the documented layouts."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pathseg.data import DATASETS
from pathseg.data.bcss import BCSS, parse_bcss_name
from pathseg.data.wsss import parse_multilabel
from pathseg.errors import DataError, DatasetNotFoundError

BCSS_NAME = "TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500"
# hand-written from the official table (gtruth_codes.tsv) and the broad grouping in the brief:
# 0 tumour, 1 stroma, 2 inflammatory, 3 necrosis, 4 other, 255 ignore
EXPECTED = {
    0: 255, 1: 0, 2: 1, 3: 2, 4: 3, 5: 4, 6: 4, 7: 4, 8: 4, 9: 4, 10: 2, 11: 2,
    12: 4, 13: 4, 14: 4, 15: 4, 16: 4, 17: 4, 18: 4, 19: 0, 20: 0, 21: 4,
}  # fmt: skip


def _png(path: Path, arr: np.ndarray, palette: bool = False) -> None:
    """Write ``arr`` as PNG; ``palette=True`` writes an index (mode P) PNG as the WSSS releases do."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if palette:
        im = Image.frombytes("P", arr.shape[::-1], np.ascontiguousarray(arr, np.uint8).tobytes())
        im.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    else:
        im = Image.fromarray(arr)
    im.save(path)


def _bcss_root(tmp_path: Path) -> Path:
    raw = np.arange(22, dtype=np.uint8).reshape(2, 11)
    _png(tmp_path / "images" / f"{BCSS_NAME}.png", np.zeros((2, 11, 3), np.uint8))
    _png(tmp_path / "masks" / f"{BCSS_NAME}.png", raw)
    other = "TCGA-OL-A5RW-DX1_xmin1_ymin2_MPP-0.5000"
    _png(tmp_path / "images" / f"{other}.png", np.zeros((2, 2, 3), np.uint8))
    _png(tmp_path / "masks" / f"{other}.png", np.array([[1, 2], [0, 99]], np.uint8))
    return tmp_path


def test_bcss_mapping_on_hand_made_mask(tmp_path):
    ds = BCSS(_bcss_root(tmp_path))
    s = ds[ds.ids.index(BCSS_NAME)]
    raw = np.arange(22).reshape(2, 11)
    expected = np.vectorize(EXPECTED.get)(raw)
    assert np.array_equal(s["mask"], expected)
    assert s["meta"]["source"] == "A1" and s["meta"]["mpp"] == 0.25
    assert ds.class_names == ["tumour", "stroma", "inflammatory", "necrosis", "other"]
    assert BCSS(tmp_path, ignore_exclude=True)[ds.ids.index(BCSS_NAME)]["mask"][0, 7] == 255


def test_bcss_bad_codes_and_site_split(tmp_path):
    ds = BCSS(_bcss_root(tmp_path))
    j = [i for i, n in enumerate(ds.ids) if "OL" in n][0]
    with pytest.raises(DataError, match=r"TCGA-OL-A5RW.*99"):
        ds[j]
    assert BCSS(tmp_path, split="test", test_sites=["ol"]).ids == [ds.ids[j]]
    assert BCSS(tmp_path, split="train", test_sites=["OL"]).sources == ["A1"]
    with pytest.raises(DataError, match="test_sites"):
        BCSS(tmp_path, split="test")
    assert parse_bcss_name("TCGA-OL-A5RW-DX1_xmin1_ymin2_MPP-0.5000") == ("OL", 0.5)
    assert parse_bcss_name("roi_3") == ("", None)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("xxx[1010].png", [1, 0, 1, 0]),
        ("TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500+0[1101].png", [1, 1, 0, 1]),
        ("a[0001]", [0, 0, 0, 1]),
        # LUAD-HistoSeg's released form (its readme's example): digits separated by spaces
        ("1031280-2300-27920-[1 0 0 1].png", [1, 0, 0, 1]),
        ("385277-44539-46781-[0 1 1 0]", [0, 1, 1, 0]),
    ],
)
def test_wsss_filename_labels(name, expected):
    assert parse_multilabel(name, 4) == expected


@pytest.mark.parametrize("name", ["patch.png", "p-[1 0 2 1].png", "p-[1 00 1].png", "p-[1,0,0,1].png",
                                  "p-[1001]x.png"])
def test_wsss_filename_label_errors(name):
    with pytest.raises(DataError, match=rf"{re.escape(name)}: .*no label vector.*\[1 0 0 1\].*\[1101\]"):
        parse_multilabel(name)


@pytest.mark.parametrize("name", ["patch[101].png", "patch-[1 0 1].png"])
def test_wsss_filename_label_length_error(name):
    with pytest.raises(DataError, match=rf"{re.escape(name)}: .*3 entries, expected 4"):
        parse_multilabel(name, 4)


# one training patch of each release, named as released (LUAD-HistoSeg readme, BCSS-WSSS readme)
RELEASED = {
    "luad_histoseg": {"1031280-2300-27920-[1 0 0 1].png": [1, 0, 0, 1],
                      "385277-44539-46781-[0 1 1 0].png": [0, 1, 1, 0]},
    "bcss_wsss": {"TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500+0[1101].png": [1, 1, 0, 1],
                  "TCGA-OL-A5RW-DX1_xmin1_ymin2_MPP-0.2500+12[0010].png": [0, 0, 1, 0]},
}


@pytest.mark.parametrize("name", list(RELEASED))
def test_wsss_reads_released_training_names(tmp_path, name):
    for fname in RELEASED[name]:
        _png(tmp_path / "train" / fname, np.zeros((4, 4, 3), np.uint8))
    ds = DATASETS.get(name)(tmp_path, split="train")
    got = {f"{ds.ids[i]}.png": ds[i]["labels"].tolist() for i in range(len(ds))}
    assert got == RELEASED[name]


def test_wsss_unreadable_training_name_names_the_file(tmp_path):
    _png(tmp_path / "train" / "1031280-2300-27920-[1 0 0 1].png", np.zeros((4, 4, 3), np.uint8))
    _png(tmp_path / "train" / "1031280-2300-27920.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError, match=r"train/1031280-2300-27920\.png: .*no label vector"):
        DATASETS.get("luad_histoseg")(tmp_path, split="train")


def _wsss_root(root: Path, train_dir: str = "training") -> Path:
    _png(root / train_dir / "p+0[1010].png", np.zeros((4, 4, 3), np.uint8))
    _png(root / train_dir / "q+1[0111].png", np.zeros((4, 4, 3), np.uint8))
    mask = np.array([[0, 1, 2, 3], [4, 4, 0, 0], [1, 1, 4, 3], [3, 3, 3, 3]], np.uint8)
    for split in ("val", "test"):
        _png(root / split / "img" / "v1.png", np.zeros((4, 4, 3), np.uint8))
        _png(root / split / "mask" / "v1.png", mask, palette=True)
    return root


@pytest.mark.parametrize("name", ["bcss_wsss", "luad_histoseg"])
def test_wsss_datasets(tmp_path, name):
    root = _wsss_root(tmp_path)
    cls = DATASETS.get(name)
    train = cls(root, split="train")
    s = train[train.ids.index("p+0[1010]")]
    assert s["mask"] is None and s["labels"].tolist() == [1, 0, 1, 0]
    assert len(train) == 2 and len(cls.class_names) == 4
    for split in ("val", "test"):
        v = cls(root, split=split)[0]
        with Image.open(root / split / "mask" / "v1.png") as im:
            assert im.mode == "P"
            raw = np.asarray(im)
        expected = np.where(raw == 4, 255, raw)  # background (4) is not scored
        assert np.array_equal(v["mask"], expected)
        assert v["labels"].tolist() == [1, 1, 1, 1]


def test_wsss_published_class_orders():
    assert DATASETS.get("bcss_wsss").class_names == ["tumour", "stroma", "lymphocytic_infiltrate", "necrosis"]
    assert DATASETS.get("luad_histoseg").class_names == [
        "tumour_epithelium", "necrosis", "lymphocyte", "tumour_associated_stroma",
    ]  # fmt: skip


def test_release_train_folder_name_and_bad_mask(tmp_path):
    root = _wsss_root(tmp_path, train_dir="train")
    assert len(DATASETS.get("luad_histoseg")(root, split="train")) == 2
    _png(root / "val" / "mask" / "v1.png", np.full((4, 4), 7, np.uint8), palette=True)
    with pytest.raises(DataError, match=r"val/mask/v1\.png.*\[7\]"):
        DATASETS.get("luad_histoseg")(root, split="val")[0]


@pytest.mark.parametrize(
    "name, where",
    [("bcss", "github.com/PathologyDataScience/BCSS"), ("bcss_wsss", "Multi-layer pseudo-supervision"),
     ("luad_histoseg", "Han et al")],
)  # fmt: skip
def test_missing_root_says_where_to_get_it(tmp_path, name, where):
    with pytest.raises(DatasetNotFoundError, match=where):
        DATASETS.get(name)(tmp_path / "absent")
