"""Per-view augmentation of the unlabelled views: each crop gets its own flip and photometric draw."""

from __future__ import annotations

import pytest
import torch

from pathseg.errors import ConfigError
from pathseg.methods.semi.cac import ContextAwareConsistency
from pathseg.methods.semi.overlap import gather_overlap, unflip
from pathseg.methods.semi.views import ViewAugment
from pathseg.transforms.paired import IMAGENET_MEAN, IMAGENET_STD

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _normalised(rgb01: torch.Tensor) -> torch.Tensor:
    return (rgb01 - MEAN) / STD


def test_the_two_crops_are_augmented_independently():
    """Issue 15 item 3: flips and colour draws differ between the crops of one image."""
    torch.manual_seed(0)
    cont = ContextAwareConsistency(8, crop_flip=0.5,
                                   view_transforms=[{"name": "color_jitter", "brightness": 0.5, "p": 1.0}])
    x = _normalised(torch.full((64, 3, 64, 64), 0.5))  # a uniform grey image: brightness alone changes it
    crops = cont.views(x, (32, 32), 8)
    b1 = (crops.x1 * STD + MEAN).mean((1, 2, 3))  # each crop's brightness after the jitter
    b2 = (crops.x2 * STD + MEAN).mean((1, 2, 3))
    # the overlap shows the same tissue, yet its brightness differs between the crops (own draw per crop)
    assert (b1 - b2).abs().mean() > 0.05
    assert b1.std() > 0.05 and b2.std() > 0.05  # and between images
    f1, f2 = torch.tensor(crops.flip1), torch.tensor(crops.flip2)
    assert 0.3 < f1.float().mean() < 0.7 and 0.3 < f2.float().mean() < 0.7  # p = 0.5 per crop
    assert (f1 != f2).any()  # independent flips


def test_crop_views_flip_the_image_and_report_it():
    """A crop with flip=1 is the mirrored crop; unflip of its (identity-network) map gives the overlap back."""
    torch.manual_seed(1)
    ys, xs = torch.meshgrid(torch.arange(96.0), torch.arange(96.0), indexing="ij")
    x = torch.stack([ys, xs, torch.zeros_like(ys)])[None].repeat(4, 1, 1, 1) / 96.0
    flipped = ContextAwareConsistency(8, crop_flip=1.0, view_transforms=[]).views(x, (32, 32), 8)
    assert all(flipped.flip1) and all(flipped.flip2)
    # the x coordinate decreases along the width of a flipped crop
    assert (flipped.x1[:, 1, :, 1:] - flipped.x1[:, 1, :, :-1] <= 1e-6).all()
    pool = lambda t: torch.nn.functional.avg_pool2d(t, 8)
    a, b = gather_overlap(unflip(pool(flipped.x1), flipped.flip1), unflip(pool(flipped.x2), flipped.flip2),
                          flipped.pairs)
    assert torch.allclose(a, b, atol=0.02)


def test_view_augment_identity_and_greyscale():
    x = _normalised(torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
    same, flips = ViewAugment([], flip=0.0)(x)
    assert same is x and flips == [False, False, False]
    grey, _ = ViewAugment([{"name": "grayscale", "p": 1.0}])(x)
    rgb = grey * STD + MEAN
    assert torch.allclose(rgb[:, 0], rgb[:, 1], atol=1e-5) and torch.allclose(rgb[:, 1], rgb[:, 2], atol=1e-5)
    luma = (0.299 * (x * STD + MEAN)[:, 0] + 0.587 * (x * STD + MEAN)[:, 1] + 0.114 * (x * STD + MEAN)[:, 2])
    assert torch.allclose(rgb[:, 0], luma, atol=1.5 / 255)  # ITU-R 601 luma, quantised to 8 bits


def test_view_augment_refuses_geometric_transforms():
    with pytest.raises(ConfigError, match="photometric"):
        ViewAugment([{"name": "rotate90"}])
