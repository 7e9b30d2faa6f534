"""The one sample contract every dataset adapter returns.

A sample is a plain dict (so DataLoader collates it) with these keys:

==========  ==================  ==========================================================
key         type                meaning
==========  ==================  ==========================================================
image       uint8 (H, W, 3)     RGB pixels
mask        int64 (H, W)        class index per pixel; ``IGNORE_INDEX`` = unlabelled
instances   int32 (H, W)|None   0 = background, 1..N = one object each (nuclei, glands)
labels      float32 (C,)|None   image-level multi-label vector (weak label)
meta        dict                ``id``, ``source`` (centre/site), ``mpp`` (µm/px or None)
==========  ==================  ==========================================================

Example:
    >>> s = make_sample(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.int64), id="a")
    >>> s["meta"]["id"]
    'a'
"""

from __future__ import annotations

from typing import Any, TypedDict

import numpy as np

from pathseg.errors import DataError

IGNORE_INDEX = 255
"""Mask value for pixels that carry no label; excluded from losses and metrics."""


class Meta(TypedDict, total=False):
    id: str
    source: str
    mpp: float | None
    path: str


class Sample(TypedDict):
    image: np.ndarray
    mask: np.ndarray | None
    instances: np.ndarray | None
    labels: np.ndarray | None
    meta: Meta


def make_sample(
    image: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    id: str,
    instances: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    source: str = "",
    mpp: float | None = None,
    path: str = "",
    num_classes: int | None = None,
) -> Sample:
    """Check shapes and types and return a :class:`Sample`.

    ``num_classes`` (when given) checks that every mask value is a class index or ``IGNORE_INDEX``.
    Raises :class:`DataError` naming ``path`` (or ``id``) on any mismatch.
    """
    where = path or id
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise DataError(f"{where}: expected an RGB image (H, W, 3), got shape {image.shape}")
    if image.dtype != np.uint8:
        raise DataError(f"{where}: expected 8-bit pixels (uint8), got {image.dtype}; convert the image to 8-bit RGB")
    h, w = image.shape[:2]
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != (h, w):
            raise DataError(
                f"{where}: mask size {mask.shape[1]}x{mask.shape[0]} does not match image size {w}x{h}; "
                "check that the mask belongs to this image"
            )
        mask = mask.astype(np.int64, copy=False)
        if num_classes is not None:
            bad = np.setdiff1d(np.unique(mask), np.r_[np.arange(num_classes), IGNORE_INDEX])
            if bad.size:
                raise DataError(
                    f"{where}: mask values {bad.tolist()[:10]} are outside the class map "
                    f"(0..{num_classes - 1}, {IGNORE_INDEX} = ignore); fix the mask or the class map"
                )
    if instances is not None:
        instances = np.asarray(instances).astype(np.int32, copy=False)
        if instances.shape != (h, w):
            raise DataError(f"{where}: instance map shape {instances.shape} does not match image {(h, w)}")
    if labels is not None:
        labels = np.asarray(labels, dtype=np.float32).reshape(-1)
    meta: Meta = {"id": id, "source": source, "mpp": mpp, "path": path}
    return Sample(image=image, mask=mask, instances=instances, labels=labels, meta=meta)


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate samples that went through ``to_tensors``: stacks tensors, lists everything else."""
    import torch

    out: dict[str, Any] = {}
    for key in samples[0]:
        vals = [s[key] for s in samples]
        if all(isinstance(v, torch.Tensor) for v in vals):
            out[key] = torch.stack(vals)
        else:
            out[key] = vals
    return out
