"""Centred ground-truth extraction, k-means splitting, foreground filtering and the S / S+C / S+C*
patch sets, on hand-made masks and tiny synthetic data."""

import numpy as np
import pytest

from pathseg.data.patches import (
    SegClsPatches,
    component_centres,
    foreground_mask,
    grid_boxes,
    holdout_ids,
    kmeans,
    patch_box,
    segmentation_ids,
    split_count,
)
from pathseg.sample import IGNORE_INDEX


def test_one_centre_per_component_at_its_centroid():
    m = np.zeros((64, 64), np.int64)
    m[2:6, 3:9] = 1  # centroid (3.5, 5.5)
    m[40:51, 40:45] = 2  # centroid (45, 42)
    m[10, 50] = 1  # single pixel
    m[30:33, 0:3] = IGNORE_INDEX  # unlabelled: never centred on
    got = component_centres(m, 16)
    assert sorted(got) == sorted([(4, 6, 1), (10, 50, 1), (45, 42, 2)])  # rounded half to even: 3.5->4, 5.5->6


def test_large_component_is_split_by_kmeans_into_ceil_1_plus_area_over_delta2():
    m = np.zeros((80, 100), np.int64)
    m[10:30, 20:80] = 1  # 20 x 60 = 1200 px, wider than the 16 px patch
    got = component_centres(m, 16)
    assert len(got) == split_count(1200, 16) == 6  # ceil(1 + 1200/256) = ceil(5.69)
    assert len(set(got)) == 6 and all(10 <= y < 30 and 20 <= x < 80 and c == 1 for y, x, c in got)
    # an elongated component larger than the patch but with area < Δ²: ceil(1 + 40/256) = 2 parts
    m2 = np.zeros((64, 64), np.int64)
    m2[5, 2:42] = 1
    assert [(y, x) for y, x, _ in component_centres(m2, 16)] in ([(5, 12), (5, 32)], [(5, 32), (5, 12)])


def test_kmeans_finds_separated_blobs():
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.normal(0, 1, (300, 2)), rng.normal(20, 1, (300, 2))])
    c, a = kmeans(pts, 2, seed=0, max_points=100)
    assert sorted(np.round(c[:, 0]).tolist()) == [0.0, 20.0] and len(set(a[:300])) == 1 and a[0] != a[-1]


def test_patch_boxes_stay_inside_the_image():
    assert patch_box(2, 3, 16, 100, 120) == (0, 0)
    assert patch_box(50, 60, 16, 100, 120) == (42, 52)
    assert patch_box(99, 119, 16, 100, 120) == (84, 104)
    assert patch_box(5, 5, 16, 10, 100)[0] == -3  # smaller than the patch: centred, padded later
    assert grid_boxes(40, 70, 32) == [(0, 0), (0, 32), (0, 38), (8, 0), (8, 32), (8, 38)]


def test_foreground_mask_thresholds_saturation_and_fills_holes():
    img = np.full((64, 64, 3), 240, np.uint8)  # white glass
    img[8:56, 8:56] = (150, 60, 160)  # stained ring ...
    img[24:40, 24:40] = (245, 245, 245)  # ... around a white lumen
    fg = foreground_mask(img, opening_px=3)
    assert fg[10:54, 10:54].all() and fg[24:40, 24:40].all() and not fg[:6].any()  # opening rounds corners


@pytest.fixture(scope="module")
def synth_opts():
    return dict(base="synthetic", base_options={"task": "tissue", "n_images": 8, "size": 64}, patch_size=32,
                holdout=2, seg_fraction=0.25, min_foreground=0.5)


def test_regimes_and_held_out_images(synth_opts):
    s = SegClsPatches(regime="S", **synth_opts)
    sc = SegClsPatches(regime="S+C", **synth_opts)
    sc_all = SegClsPatches(regime="S+C*", **synth_opts)
    test = SegClsPatches(split="test", regime="S+C", **synth_opts)
    assert len(s.seg_ids) == 2 and len(s.test_ids) == 2 and s.cls_ids == [] and set(s.kinds) == {"seg"}
    assert set(sc.cls_ids) == set(sc.train_ids) - set(sc.seg_ids) and len(sc.train_ids) == 6
    assert sc_all.cls_ids == sc_all.train_ids
    assert not set(test.ids) & set(sc.train_ids) and test.ids == sc.test_ids
    for i, kind in enumerate(sc.kinds):
        x = sc[i]
        assert x["image"].shape == (32, 32, 3)
        if kind == "cls":  # no pixel labels, a one-hot image class
            assert (x["mask"] == IGNORE_INDEX).all() and x["labels"].sum() == 1
        else:
            assert (x["mask"] != IGNORE_INDEX).any() and x["labels"].sum() == 0
    assert test[0]["image"].shape == (64, 64, 3) and (test[0]["mask"] != IGNORE_INDEX).all()


def test_split_helpers_balance_classes_and_keep_groups_together():
    ids = [f"im{i}" for i in range(12)]
    classes = [1, 2] * 6
    groups = ["p0", "p0", "p1", "p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8", "p9"]
    held = holdout_ids(ids, classes, groups, 4, seed=3)
    assert len(held) == 4 and sum(classes[ids.index(h)] == 1 for h in held) == 2
    for g in set(groups):  # a group is held out whole or not at all
        members = [i for i, gg in zip(ids, groups) if gg == g]
        assert all(m in held for m in members) or not any(m in held for m in members)
    seg = segmentation_ids(ids, classes, 0.05, seed=0)
    assert len(seg) == 1
    seg2 = segmentation_ids(ids, classes, 2 / 12, seed=0)
    assert sorted(classes[ids.index(s)] for s in seg2) == [1, 2]
