"""Patch-level labels derived from any segmentation dataset (dataset name ``patch_labels``).

Han et al. 2022 built BCSS-WSSS this way: cut the annotated regions into patches and call a class
present in a patch when it covers at least a set fraction of it. This adapter does the same for any
registered dataset with pixel masks: every image of the base split is (optionally) rescaled, cut into
``patch`` x ``patch`` tiles on a grid of ``stride`` (the last row/column is shifted to end at the image
border, so every pixel is covered), and each tile gets

    labels[c] = 1  if  (pixels of class c) / (labelled pixels of the tile) >= min_fraction

Ignored pixels (``IGNORE_INDEX``) count in neither numerator nor denominator.

Held-out images: ``holdout`` (a fraction) or ``test_ids`` (base image ids) set aside whole images of
the base split ``train`` for this adapter's split ``test``; the rest form ``train``. Without either,
split names pass through to the base dataset (``train`` -> ``train``, ``test`` -> ``test``, or
``splits={"test": "testA"}``). ``train_masks=False`` drops the masks of the training split, so a weakly
supervised run provably sees the labels only.

Example (GlaS 3-class view at half resolution, 112 px patches, 6 images held out)::

    data:
      dataset: patch_labels
      options: {dataset: glas, options: {view: grade}, scale: 0.5, patch: 112, holdout: 0.3,
                min_fraction: 0.05, train_masks: false}

Shape: every sample is an RGB patch (patch, patch, 3) with its mask (patch, patch) and labels (K,).
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np

from pathseg.data.base import DATASETS, SegmentationDataset
from pathseg.errors import ConfigError, DataError
from pathseg.sample import IGNORE_INDEX, Sample, make_sample


def presence_labels(mask: np.ndarray, num_classes: int, min_fraction: float = 0.05,
                    ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """The 0/1 vector of classes covering at least ``min_fraction`` of the labelled pixels.

    Shape: mask (H, W) int -> (num_classes,) float32.

    Example:
        >>> presence_labels(np.array([[0, 0, 0, 1]]), 3, 0.25)
        array([1., 1., 0.], dtype=float32)
    """
    m = np.asarray(mask).reshape(-1)
    m = m[m != ignore_index]
    if m.size == 0:
        return np.zeros(num_classes, np.float32)
    frac = np.bincount(m, minlength=num_classes)[:num_classes] / m.size
    return (frac >= min_fraction - 1e-12).astype(np.float32)


def grid_starts(length: int, patch: int, stride: int) -> list[int]:
    """Tile origins along one axis: every ``stride`` px, the last one moved to end at ``length``.

    Example:
        >>> grid_starts(250, 112, 112)
        [0, 112, 138]
    """
    if length <= patch:
        return [0]
    starts = list(range(0, length - patch + 1, stride))
    if starts[-1] + patch < length:
        starts.append(length - patch)
    return starts


def _resize(image: np.ndarray, mask: np.ndarray | None, scale: float) -> tuple[np.ndarray, np.ndarray | None]:
    if scale == 1.0:
        return image, mask
    from pathseg.transforms import resize_pair

    h, w = image.shape[:2]
    out = resize_pair({"image": image, "mask": mask}, max(1, round(h * scale)), max(1, round(w * scale)))
    return out["image"], out["mask"]


EVAL_BATCH = 64  # patches a validation batch


@DATASETS.register("patch_labels")
class PatchLabelDataset(SegmentationDataset):
    """Patches of a segmentation dataset with presence labels from their masks (see module docstring).

    Options:
        dataset, options: the base dataset's registered name and constructor options.
        patch, stride: tile size and step in px (after ``scale``); stride defaults to ``patch``.
        scale: resize factor applied to each base image first (bilinear image, nearest mask).
        min_fraction: a class is present when it covers at least this fraction of the tile.
        holdout / test_ids / seed: hold out whole base images as split ``test`` (see module docstring).
        splits: map of this adapter's split names to the base's, when nothing is held out.
        train_masks: keep the training split's masks (False: labels only).
    """

    name = "patch_labels"
    download_hint = "patch_labels wraps another dataset; see that dataset's message."

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str = "train",
        *,
        dataset: str = "synthetic",
        options: dict[str, Any] | None = None,
        patch: int = 112,
        stride: int | None = None,
        scale: float = 1.0,
        min_fraction: float = 0.05,
        holdout: float | None = None,
        test_ids: list[str] | None = None,
        seed: int = 0,
        splits: dict[str, str] | None = None,
        train_masks: bool = True,
    ) -> None:
        if dataset == self.name:
            raise ConfigError("patch_labels: options.dataset must name another dataset, e.g. glas")
        if patch < 8 or (stride is not None and stride < 1) or not scale > 0 or not 0 <= min_fraction <= 1:
            raise ConfigError(
                f"patch_labels: need patch >= 8, stride >= 1, scale > 0 and 0 <= min_fraction <= 1; got "
                f"patch={patch}, stride={stride}, scale={scale}, min_fraction={min_fraction}"
            )
        if holdout is not None and not 0 < holdout < 1:
            raise ConfigError(f"patch_labels: holdout is a fraction of the images in (0, 1), got {holdout}")
        # the base adapters are registered: importing this module ran pathseg/data/__init__.py first
        base_cls = DATASETS.get(dataset)
        base_opts = dict(options or {})
        if root is not None:
            base_opts["root"] = root
        self.split, self.patch, self.stride = split, int(patch), int(stride or patch)
        self.scale, self.min_fraction, self.train_masks = float(scale), float(min_fraction), bool(train_masks)
        if holdout is not None or test_ids:
            if split not in ("train", "test"):
                raise ConfigError(f"patch_labels: with holdout/test_ids the splits are train and test, not {split!r}")
            base = base_cls(split="train", **base_opts)
            held = set(test_ids or []) or set(_holdout_ids(base.ids, holdout, seed))
            unknown = held - set(base.ids)
            if unknown:
                raise DataError(f"patch_labels: test_ids not in {dataset} train: {sorted(unknown)[:5]}")
            keep = [i for i, sid in enumerate(base.ids) if (sid in held) == (split == "test")]
        else:
            base = base_cls(split=(splits or {}).get(split, split), **base_opts)
            keep = list(range(len(base)))
        self.base, self.root = base, getattr(base, "root", None)
        self.class_names = list(base.class_names)
        self.image_ids = [base.ids[i] for i in keep]
        self._tiles: list[tuple[int, int, int]] = []  # (kept image index, y, x)
        self._images: list[tuple[np.ndarray, np.ndarray | None, dict]] = []
        self.ids, self.sources, self._labels = [], [], []
        for j, i in enumerate(keep):
            s = base[i]
            if s["mask"] is None:
                raise DataError(f"patch_labels: {dataset} image {base.ids[i]} has no mask to derive labels from")
            image, mask = _resize(s["image"], s["mask"], self.scale)
            self._images.append((image, mask, s["meta"]))
            h, w = mask.shape
            for y in grid_starts(h, self.patch, self.stride):
                for x in grid_starts(w, self.patch, self.stride):
                    self._tiles.append((j, y, x))
                    self.ids.append(f"{base.ids[i]}_y{y}_x{x}")
                    self.sources.append(s["meta"].get("source", ""))
                    tile = mask[y:y + self.patch, x:x + self.patch]
                    self._labels.append(presence_labels(tile, self.num_classes, self.min_fraction))
        mpp = self._images[0][2].get("mpp") if self._images else None
        self.mpp = mpp / self.scale if mpp else None
        # patches of one size (every image at least a patch on each side) are scored in batches, not one by one:
        # the metrics are per pixel, so the result is the same up to float rounding (GlaS held-out patches at
        # 64 px: 1 pixel of 2.8 million labelled otherwise), and 2.5x faster than one by one on this CPU
        full = all(min(im.shape[:2]) >= self.patch for im, _, _ in self._images)
        self.eval_batch_size = EVAL_BATCH if full else 1

    def labels(self, i: int) -> np.ndarray:
        """The presence vector of patch ``i`` (no image read)."""
        return self._labels[i]

    def load(self, i: int) -> Sample:
        j, y, x = self._tiles[i]
        image, mask, meta = self._images[j]
        p = self.patch
        img = np.ascontiguousarray(image[y:y + p, x:x + p])
        m = None if (self.split == "train" and not self.train_masks) else np.ascontiguousarray(mask[y:y + p, x:x + p])
        return make_sample(img, m, id=self.ids[i], labels=self._labels[i], source=self.sources[i], mpp=self.mpp,
                           num_classes=self.num_classes)


def _holdout_ids(ids: list[str], fraction: float | None, seed: int) -> list[str]:
    order = sorted(ids)
    random.Random(seed).shuffle(order)
    n = max(1, round(len(order) * float(fraction or 0)))
    return sorted(order[:n])
