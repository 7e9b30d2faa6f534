"""Independent augmentation of each unlabelled view inside the step (CRCFP's and CAC's data loaders).

The authors' loaders cut the two overlapping crops from the un-augmented image and then augment the
full image and each crop on its own: a horizontal flip per crop (p = 0.5) and, per view, Gaussian blur,
colour jitter (0.4, 0.4, 0.4, 0.1 with p = 0.8) and greyscale (p = 0.2). Here the crops are cut from the
batch the loader delivers, so :class:`ViewAugment` applies the per-view part to tensors: it undoes the
ImageNet normalisation, runs pathseg's own photometric transforms (:mod:`pathseg.transforms`, the same
code the loader uses) on each image with its own draw, normalises again, and flips each image with
probability ``flip``, reporting which ones it flipped (their feature maps are flipped back before the
overlap is compared, :func:`pathseg.methods.semi.overlap.unflip`).

Only photometric transforms are allowed here (geometry would break the overlap): the loader keeps the
geometric part (``data.unlabeled_transforms``: crop, flip, rotate90, as ``configs/semi/monuseg_base.yaml``
does), the method the photometric part (``method.params.view_transforms``).

Example:
    >>> aug = ViewAugment(DEFAULT_VIEW_TRANSFORMS, flip=0.5)
    >>> x, flipped = aug(torch.zeros(2, 3, 32, 32))
    >>> x.shape, len(flipped)
    (torch.Size([2, 3, 32, 32]), 2)
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from pathseg.errors import ConfigError
from pathseg.transforms import build_transforms
from pathseg.transforms.paired import IMAGENET_MEAN, IMAGENET_STD

PHOTOMETRIC = ("blur", "color_jitter", "grayscale", "hed_jitter", "stain_normalize")
"""Transform names that change pixel values only, so they may differ between the two crops."""

DEFAULT_VIEW_TRANSFORMS: tuple[dict[str, Any], ...] = (
    {"name": "blur", "p": 0.5, "sigma": [0.1, 2.0]},
    {"name": "color_jitter", "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1, "p": 0.8},
    {"name": "grayscale", "p": 0.2},
)
"""The per-view augmentation of the CRCFP/CAC loaders (blur, colour jitter p = 0.8, greyscale p = 0.2)."""


class ViewAugment:
    """Per-image photometric augmentation and horizontal flip of a batch of normalised images.

    Args:
        transforms: photometric transform configs (names in :data:`PHOTOMETRIC`); empty: none.
        flip: probability of a horizontal flip per image.

    Shape: ``aug(x (B, 3, H, W))`` -> (x' (B, 3, H, W), B flip flags). Each image draws its own randomness
    from a numpy generator seeded by torch's global generator (so the run seed fixes it).
    """

    def __init__(self, transforms: Sequence[dict[str, Any]] = DEFAULT_VIEW_TRANSFORMS, *, flip: float = 0.0) -> None:
        for t in transforms:
            name = t.get("name") if isinstance(t, dict) else None
            if name not in PHOTOMETRIC:
                raise ConfigError(
                    f"method.params.view_transforms: {name!r} is not a photometric transform; the unlabelled views "
                    f"are augmented per view with {', '.join(PHOTOMETRIC)} only. Put geometric transforms in "
                    "data.unlabeled_transforms instead."
                )
        if not 0.0 <= flip <= 1.0:
            raise ConfigError(f"method.params.crop_flip must be a probability in [0, 1], got {flip}")
        self.compose = build_transforms([dict(t) for t in transforms])
        self.flip = float(flip)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, list[bool]]:
        b = x.shape[0]
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))
        flipped = [bool(rng.random() < self.flip) for _ in range(b)]
        if len(self.compose):
            x = self._photometric(x, rng)
        if any(flipped):
            flags = torch.tensor(flipped, device=x.device).view(b, 1, 1, 1)
            x = torch.where(flags, x.flip(-1), x)
        return x, flipped

    def _photometric(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        u8 = ((x.detach() * std + mean).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        out = np.stack([self.compose({"image": np.ascontiguousarray(img)}, rng)["image"] for img in u8])
        y = torch.from_numpy(out).to(device=x.device, dtype=x.dtype).permute(0, 3, 1, 2) / 255.0
        return ((y - mean) / std).contiguous()
