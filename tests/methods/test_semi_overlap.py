"""The CAC crop geometry: a feature cell in the overlap sees the same image location in both crops."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from pathseg.methods.semi.overlap import (
    crop_iou,
    crop_pairs,
    crop_resize,
    gather_overlap,
    overlap_ratio,
    sample_crop_pairs,
    unflip,
)


def _cell_centres(box, grid, axis):
    """Source-image coordinate (pixels) of each cell centre along one axis of a crop box."""
    start, size = (box[0], box[2]) if axis == 0 else (box[1], box[3])
    n = grid[axis]
    return torch.tensor([start + (i + 0.5) * size / n for i in range(n)], dtype=torch.float64)


@pytest.mark.parametrize("seed", range(5))
def test_overlap_cells_map_to_the_same_image_location(seed):
    H, W, grid = 96, 80, (8, 10)
    pairs = sample_crop_pairs(16, (H, W), grid, crop_fraction=0.6, rng=random.Random(seed))
    for p in pairs:
        for box in (p.box1, p.box2):  # inside the image
            assert box[0] >= -1e-9 and box[1] >= -1e-9 and box[0] + box[2] <= H + 1e-6 and box[1] + box[3] <= W + 1e-6
        y1, y2 = _cell_centres(p.box1, grid, 0)[p.rows1], _cell_centres(p.box2, grid, 0)[p.rows2]
        x1, x2 = _cell_centres(p.box1, grid, 1)[p.cols1], _cell_centres(p.box2, grid, 1)[p.cols2]
        assert len(y1) == len(y2) >= 1 and len(x1) == len(x2) >= 1
        assert torch.allclose(y1, y2) and torch.allclose(x1, x2)
        # the cell block is the whole geometric intersection of the two boxes
        ih = min(p.box1[0] + p.box1[2], p.box2[0] + p.box2[2]) - max(p.box1[0], p.box2[0])
        iw = min(p.box1[1] + p.box1[3], p.box2[1] + p.box2[3]) - max(p.box1[1], p.box2[1])
        assert overlap_ratio(p) == pytest.approx(ih * iw / (p.box1[2] * p.box1[3]))


def _box_iou(p) -> float:
    """IoU of the two crop boxes, from their pixel geometry."""
    ih = min(p.box1[0] + p.box1[2], p.box2[0] + p.box2[2]) - max(p.box1[0], p.box2[0])
    iw = min(p.box1[1] + p.box1[3], p.box2[1] + p.box2[3]) - max(p.box1[1], p.box2[1])
    inter = max(ih, 0.0) * max(iw, 0.0)
    return inter / (p.box1[2] * p.box1[3] + p.box2[2] * p.box2[3] - inter)


def test_overlap_bound_is_the_iou_of_the_two_crops():
    """Issue 15 item 7: the published [0.1, 1.0] bounds the IoU of the crops, not overlap / crop area."""
    pairs = sample_crop_pairs(400, (256, 256), (32, 32), crop_fraction=0.6, overlap=(0.1, 1.0), rng=random.Random(0))
    iou = torch.tensor([_box_iou(p) for p in pairs])
    assert iou.min() >= 0.09 and iou.max() <= 1.0
    assert iou.min() < 0.2 and iou.max() > 0.9  # the range is covered
    assert all(crop_iou(p) == pytest.approx(_box_iou(p)) for p in pairs)
    fixed = sample_crop_pairs(50, (256, 256), (32, 32), crop_fraction=0.6, overlap=(0.5, 0.5), rng=random.Random(1))
    assert all(abs(_box_iou(p) - 0.5) < 0.05 for p in fixed)  # an area ratio of 0.5 would give IoU 1/3
    assert all(abs(overlap_ratio(p) - 2 / 3) < 0.05 for p in fixed)  # I/A = 2 IoU / (1 + IoU)


def test_resampled_crops_agree_on_the_overlap():
    """Crop + resize a coordinate image; the overlap blocks of both crops hold the same coordinates."""
    H = W = 128
    out, grid = (64, 64), (8, 8)
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    img = torch.stack([ys, xs, torch.zeros_like(ys)])[None].repeat(6, 1, 1, 1).double()
    pairs = sample_crop_pairs(6, (H, W), grid, crop_fraction=0.5, rng=random.Random(3))
    c1, c2 = crop_pairs(img, pairs, out)
    assert c1.shape == (6, 3, 64, 64)
    # average over each cell = the cell centre's coordinates (linear ramp, bilinear resampling)
    f1, f2 = F.avg_pool2d(c1, 8), F.avg_pool2d(c2, 8)
    a, b = gather_overlap(f1, f2, pairs)
    assert a.shape == b.shape and a.shape[1] == 3
    assert torch.allclose(a, b, atol=0.05)
    # and those are the cells' source coordinates
    p = pairs[0]
    want_y = _cell_centres(p.box1, grid, 0)
    assert torch.allclose(f1[0, 0, :, 0], want_y, atol=0.6)  # border clamping moves the outer cell a little at most


def test_crop_resize_identity_box_is_identity():
    img = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    same = crop_resize(img, [(0.0, 0.0, 32.0, 32.0)] * 2, (32, 32))
    assert torch.allclose(same, img, atol=1e-9)


def test_flipped_crops_agree_on_the_overlap_once_unflipped():
    """Issue 15 item 3: a crop flipped on its own is flipped back on its feature map before the overlap is read."""
    H = W = 128
    out, grid = (64, 64), (8, 8)
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    img = torch.stack([ys, xs, torch.zeros_like(ys)])[None].repeat(6, 1, 1, 1).double()
    pairs = sample_crop_pairs(6, (H, W), grid, crop_fraction=0.5, overlap=(0.1, 0.6), rng=random.Random(4))
    c1, c2 = crop_pairs(img, pairs, out)
    flip1, flip2 = [True, False, True, False, True, True], [False, False, True, True, True, False]
    c1 = torch.stack([c.flip(-1) if f else c for c, f in zip(c1, flip1)])  # what the network sees
    c2 = torch.stack([c.flip(-1) if f else c for c, f in zip(c2, flip2)])
    f1, f2 = F.avg_pool2d(c1, 8), F.avg_pool2d(c2, 8)  # a flip-equivariant "network"
    a, b = gather_overlap(unflip(f1, flip1), unflip(f2, flip2), pairs)
    assert torch.allclose(a, b, atol=0.05)
    a, b = gather_overlap(f1, f2, pairs)  # read without undoing the flips, the x coordinates disagree
    assert not torch.allclose(a[:, 1], b[:, 1], atol=1.0)
