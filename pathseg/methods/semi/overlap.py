"""Two overlapping crops of each unlabelled image, and where their overlap lies on the feature grid (CAC).

Geometry, per image of size (H, W): both crops have the same side (``crop_fraction`` · H, · W) and are
resized to the same output size, so one feature cell covers the same image area in both. The offset
between the crops is a whole number of cells, so the overlap is an exact block of cells in each crop:
cell (i, j) of ``rows1/cols1`` in crop 1 and cell (i, j) of ``rows2/cols2`` in crop 2 see the same
image location. The intersection over union of the two crops, IoU = I / (2A - I) for crops of area A
overlapping on I, is drawn from U(lo, hi) (CAC and CRCFP bound the IoU: [0.1, 1.0]); the matching area
ratio I / A = 2 IoU / (1 + IoU) is split between the two axes at random and rounded to whole cells, and
clamped to what fits in the image (a crop side of 0.6 leaves room for IoUs down to about 0.06).

Crops are resampled bilinearly with ``grid_sample`` (crop + resize in one step, sub-pixel offsets).
A crop that was flipped after cropping (independent per-crop augmentation) is flipped back on its
feature map with :func:`unflip` before :func:`gather_overlap` reads the overlap.

Example:
    >>> pairs = sample_crop_pairs(2, (128, 128), (8, 8), crop_fraction=0.6)
    >>> x1, x2 = crop_pairs(torch.rand(2, 3, 128, 128), pairs, (64, 64))
    >>> x1.shape, pairs[0].rows1.stop - pairs[0].rows1.start == pairs[0].rows2.stop - pairs[0].rows2.start
    (torch.Size([2, 3, 64, 64]), True)
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F


Box = tuple[float, float, float, float]  # top, left, height, width in source-image pixels


@dataclass(frozen=True)
class CropPair:
    """Crop boxes in source-image pixels (top, left, height, width) and the overlap's cell slices."""

    box1: Box
    box2: Box
    rows1: slice
    cols1: slice
    rows2: slice
    cols2: slice


def _axis(
    n_cells: int, side: float, extent: float, frac: float, rng: random.Random
) -> tuple[float, float, slice, slice]:
    """One axis: crop starts s1, s2 (pixels) and the overlap's cell slices in crop 1 and crop 2."""
    cell = side / n_cells
    max_shift = max(0, min(n_cells - 1, math.floor((extent - side) / cell + 1e-9)))
    o = min(n_cells, max(n_cells - max_shift, 1, round(frac * n_cells)))  # overlap in cells
    d = n_cells - o  # shift in cells
    s1 = rng.uniform(0.0, max(0.0, extent - side - d * cell))
    s2 = s1 + d * cell
    if rng.random() < 0.5:  # crop 2 before or after crop 1
        s1, s2 = s2, s1
        return s1, s2, slice(0, o), slice(d, n_cells)
    return s1, s2, slice(d, n_cells), slice(0, o)


def sample_crop_pairs(
    batch: int,
    image_hw: tuple[int, int],
    grid_hw: tuple[int, int],
    *,
    crop_fraction: float = 0.6,
    overlap: tuple[float, float] = (0.1, 1.0),
    rng: random.Random | None = None,
) -> list[CropPair]:
    """Draw one overlapping crop pair per image.

    Args:
        batch: number of images.
        image_hw: (H, W) of the source images.
        grid_hw: (h, w) feature cells of a crop after resizing (output size / feature stride).
        crop_fraction: crop side as a fraction of the image side, in (0, 1].
        overlap: range of the IoU of the two crops (overlap area / union area).
        rng: a ``random.Random`` (default: seeded from torch's global generator, so Lightning seeds it).
    """
    if not 0 < crop_fraction <= 1:
        from pathseg.errors import ConfigError

        raise ConfigError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
    rng = rng or random.Random(int(torch.randint(0, 2**31 - 1, ()).item()))
    (H, W), (gh, gw) = image_hw, grid_hw
    ch, cw = crop_fraction * H, crop_fraction * W
    pairs = []
    for _ in range(batch):
        iou = rng.uniform(*overlap)
        r = 2 * iou / (1 + iou)  # overlap area / crop area of two equal crops with this IoU
        fy = rng.uniform(r, 1.0)  # split the area ratio between the axes: fy * fx = r
        fx = r / fy
        y1, y2, r1, r2 = _axis(gh, ch, H, fy, rng)
        x1, x2, c1, c2 = _axis(gw, cw, W, fx, rng)
        pairs.append(CropPair((y1, x1, ch, cw), (y2, x2, ch, cw), r1, c1, r2, c2))
    return pairs


def overlap_ratio(pair: CropPair) -> float:
    """Overlap area / crop area of a pair, counted in feature cells."""
    h = pair.rows1.stop - pair.rows1.start
    w = pair.cols1.stop - pair.cols1.start
    gh = max(pair.rows1.stop, pair.rows2.stop)
    gw = max(pair.cols1.stop, pair.cols2.stop)
    return h * w / (gh * gw)


def crop_iou(pair: CropPair) -> float:
    """Intersection over union of the two crops of a pair, counted in feature cells."""
    r = overlap_ratio(pair)
    return r / (2 - r)


def crop_resize(images: torch.Tensor, boxes: list[Box], out_hw: tuple[int, int]) -> torch.Tensor:
    """Crop each image to its box (pixels, may be fractional) and resize to ``out_hw``, bilinear.

    Shape: images (B, C, H, W), len(boxes) == B -> (B, C, *out_hw).
    """
    b, _, H, W = images.shape
    theta = images.new_zeros(b, 2, 3)
    for i, (top, left, h, w) in enumerate(boxes):
        # normalised coordinates (align_corners=False): pixel edge 0 -> -1, edge W -> +1
        theta[i, 0, 0] = w / W
        theta[i, 0, 2] = (2 * left + w) / W - 1
        theta[i, 1, 1] = h / H
        theta[i, 1, 2] = (2 * top + h) / H - 1
    grid = F.affine_grid(theta, [b, images.shape[1], *out_hw], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def crop_pairs(
    images: torch.Tensor, pairs: list[CropPair], out_hw: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two crops of every image, resized to ``out_hw``. Shape: (B, C, H, W) -> 2 × (B, C, *out_hw)."""
    return crop_resize(images, [p.box1 for p in pairs], out_hw), crop_resize(images, [p.box2 for p in pairs], out_hw)


def unflip(maps: torch.Tensor, flipped: list[bool] | torch.Tensor) -> torch.Tensor:
    """Undo a horizontal flip of the input on the maps of the flipped images, so that they are in crop
    coordinates again. Shape: maps (B, C, h, w), ``flipped`` B flags -> (B, C, h, w).
    """
    flags = torch.as_tensor(list(flipped) if not torch.is_tensor(flipped) else flipped, dtype=torch.bool)
    if not bool(flags.any()):
        return maps
    flags = flags.to(maps.device).view(-1, *([1] * (maps.dim() - 1)))
    return torch.where(flags, maps.flip(-1), maps)


def gather_overlap(f1: torch.Tensor, f2: torch.Tensor, pairs: list[CropPair]) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned per-position rows of the overlap from both crops' maps.

    Shape: f1, f2 (B, C, h, w) on the pairs' grid -> two (N, C) tensors, N = Σ overlap cells;
    row n of both is the same image location.
    """
    a, b = [], []
    for i, p in enumerate(pairs):
        a.append(f1[i, :, p.rows1, p.cols1].flatten(1).t())
        b.append(f2[i, :, p.rows2, p.cols2].flatten(1).t())
    return torch.cat(a), torch.cat(b)
