"""Running a model on whole images: the input normalisation and size-agnostic logits.

Used by training-time validation, image prediction and the demo alike, so every path feeds the model the
same tensors.

Example:
    >>> x = to_model_input(image_uint8, IMAGENET_MEAN, IMAGENET_STD)   # (1, 3, H, W)
    >>> logits = predict_logits(model, x)                              # (1, K, H, W)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pathseg.transforms.paired import IMAGENET_MEAN, IMAGENET_STD


def to_model_input(image: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """An (H, W, 3) uint8 image as a normalised (1, 3, H, W) float tensor: ``(x / 255 - mean) / std``."""
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1).div(255)
    return ((x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]).unsqueeze(0)


def predict_logits(model: torch.nn.Module, image: torch.Tensor, *, channels_last: bool = True,
                   multiple: int = 32) -> torch.Tensor:
    """Logits for whole images of any size: reflect-pad to a multiple of ``multiple``, run, crop back.

    Shape: image (B, 3, H, W) -> (B, K, H, W).
    """
    h, w = image.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    x = F.pad(image, (0, pw, 0, ph), mode="reflect") if (ph or pw) else image
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return model(x)[..., :h, :w]


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "predict_logits", "to_model_input"]
