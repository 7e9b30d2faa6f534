"""Label-fraction splits: determinism, disjointness, counts, groups, and the committed MoNuSeg files."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest

from pathseg.data.splits import (
    MONUSEG_FRACTIONS,
    MONUSEG_SEEDS,
    SPLITS_DIR,
    as_fraction,
    fraction_tag,
    generate_monuseg_splits,
    make_split,
    make_split_files,
    read_split,
    split_path,
    write_split,
)
from pathseg.errors import DataError

IDS = [f"img{i:02d}" for i in range(30)]
FRACTIONS = ["1", "1/2", "1/4", "1/8", "1/16", "1/32"]
# round-half-up of 30 * f, at least 1, worked out by hand
EXPECTED_COUNT = {"1": 30, "1/2": 15, "1/4": 8, "1/8": 4, "1/16": 2, "1/32": 1}


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_counts_disjoint_and_deterministic(fraction):
    a = make_split(IDS, fraction, seed=0)
    assert len(a["labeled"]) == EXPECTED_COUNT[fraction]
    assert not set(a["labeled"]) & set(a["unlabeled"])
    assert sorted(a["labeled"] + a["unlabeled"]) == IDS
    assert make_split(list(reversed(IDS)), fraction, seed=0) == a  # id order does not matter


def test_seeds_differ_and_tiny_sets_keep_one_labelled():
    draws = {tuple(make_split(IDS, "1/8", seed=s)["labeled"]) for s in range(5)}
    assert len(draws) > 1
    assert len(make_split(["x", "y", "z"], 1 / 32, seed=3)["labeled"]) == 1


def test_group_split_keeps_groups_whole():
    groups = [f"site{i % 7}" for i in range(len(IDS))]
    group_of = dict(zip(IDS, groups))
    for seed in range(4):
        s = make_split(IDS, "1/4", seed, groups=groups)
        assert s["by"] == "source" and s["labeled"]
        lab = {group_of[i] for i in s["labeled"]}
        unl = {group_of[i] for i in s["unlabeled"]}
        assert not lab & unl
        assert abs(len(s["labeled"]) - 30 / 4) <= 5  # whole sites of 4-5 images: within one site of 7.5


def test_fraction_parsing():
    assert as_fraction(0.125) == as_fraction("1/8") == as_fraction("1-8") == Fraction(1, 8)
    assert fraction_tag(1) == "1-1" and fraction_tag(1 / 16) == "1-16"
    for bad in (0, 1.5, "half"):
        with pytest.raises(DataError):
            as_fraction(bad)


def test_write_read_roundtrip(tmp_path):
    split = {"dataset": "toy", **make_split(IDS, "1/4", 1), "test": ["t1", "t2"]}
    path = write_split(split_path("toy", "1/4", 1, tmp_path), split)
    assert path.name == "1-4_seed1.json"
    assert read_split(path) == split
    bad = dict(split, test=[split["labeled"][0]])
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match="two of labeled"):
        read_split(tmp_path / "bad.json")


def test_committed_monuseg_splits(shared_dataset, tmp_path):
    root = shared_dataset("monuseg2018")
    train = sorted(p.stem for p in (root / "train" / "images").glob("*.tif"))
    test = sorted(p.stem for p in (root / "test" / "images").glob("*.tif"))
    assert len(test) == 14
    fresh = generate_monuseg_splits(tmp_path, root=root)
    assert len(fresh) == len(MONUSEG_FRACTIONS) * len(MONUSEG_SEEDS)
    for path in fresh:
        committed = SPLITS_DIR / "monuseg" / path.name
        data = read_split(committed)
        assert data == read_split(path), f"{committed} is stale; regenerate with generate_monuseg_splits()"
        assert data["dataset"] == "monuseg" and data["by"] == "image"
        assert data["test"] == test
        assert sorted(data["labeled"] + data["unlabeled"]) == train
        assert len(data["labeled"]) == max(1, int(len(train) * data["fraction"] + 0.5))


def test_make_split_files_by_source(tmp_path):
    import numpy as np
    from PIL import Image

    for n, site in enumerate(["A1", "A1", "B2", "C3", "C3", "C3"]):
        name = f"TCGA-{site}-X{n}-DX1_xmin0_ymin0_MPP-0.2500.png"
        for sub in ("images", "masks"):
            (tmp_path / "bcss" / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ones((2, 2), np.uint8) if sub == "masks" else np.zeros((2, 2, 3), np.uint8)).save(
                tmp_path / "bcss" / sub / name
            )
    paths = make_split_files("bcss", tmp_path / "bcss", ["1/2"], [0, 1], tmp_path / "out", by="source")
    assert [p.name for p in paths] == ["1-2_seed0.json", "1-2_seed1.json"]
    for p in paths:
        s = read_split(p)
        sites_l = {i.split("-")[1] for i in s["labeled"]}
        sites_u = {i.split("-")[1] for i in s["unlabeled"]}
        assert not sites_l & sites_u and s["test"] == [] and s["by"] == "source"


def test_a_val_list_is_a_validation_set_drawn_from_the_training_images(tmp_path):
    from pathseg.engine.config import load_config
    from pathseg.engine.data import build_dataset

    cfg = load_config(None, ["data.dataset=synthetic", "data.options={n_images: 6, size: 64}"])
    ids = list(build_dataset(cfg, "train").ids)
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"labeled": ids[:4], "unlabeled": [], "test": [], "val": ids[4:]}))
    cfg.data.split_file = str(path)
    val = build_dataset(cfg, "val")
    assert list(val.ids) == ids[4:]
    assert [val[i]["meta"]["id"] for i in range(len(val))] == ids[4:]  # the training images themselves
    path.write_text(json.dumps({"labeled": ids[:5], "unlabeled": [], "test": [], "val": ids[4:]}))
    with pytest.raises(DataError, match="labeled/unlabeled/test/val"):
        read_split(path)
