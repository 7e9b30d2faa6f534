"""Concentric target/context pairs from any labelled segmentation dataset (for HookNet).

With ``data.context: {ratio: r}`` in a config, every training sample becomes a pair of patches of the
same pixel size ``T``, centred on the same point of the full-resolution image:

* ``image`` (target): the ``T × T`` crop ``[y0, y0+T) × [x0, x0+T)``, with its ``mask``;
* ``context``: the ``rT × rT`` region ``[y0 + T/2 - rT/2, …)`` around the same centre, downsampled by
  ``r`` (mean of each ``r × r`` block, i.e. area interpolation), so it covers r× the field of view at
  r× the µm per pixel; ``context_mask`` takes the label at the centre of each block.

Geometry: context pixel ``k`` covers full-resolution pixels ``[c0 + k·r, c0 + (k+1)·r)`` with
``c0 = y0 + T/2 - rT/2``, so the centre ``T/r`` context pixels (``T/2 - T/(2r)`` to ``T/2 + T/(2r)``)
cover exactly the target crop (``T`` a multiple of ``2r``). Wherever a patch leaves the image, the
*image* is reflect-padded (``numpy.pad(mode="reflect")``: mirrored about the edge pixel, repeated for
regions larger than the image) and the *masks* hold ``IGNORE_INDEX``. The same geometry is used at
inference by :meth:`pathseg.models.hooknet.HookNet.segment`.

With ``data.context.position: center`` the target is the image's centre crop instead of a random one:
for datasets of tiles that carry their own context margin (a labelled ``T`` px tile inside an ``rT`` px
window, as tile exporters write them), every pair is then exactly the labelled tile and its true context.

The training pipeline ``data.train_transforms`` is split at its first ``random_crop`` (its size is ``T``
unless ``data.context.size`` gives one): transforms before it see the whole image; the crop is replaced
by the pair cut above; transforms after it run on the target and on the context with the same random
draws (one flip, one turn, one colour jitter for both), which keeps them concentric. They must keep
the patch size (flip, rotate90, colour, stain); a resize after the crop is refused.

Example:
    >>> view = ContextView(SyntheticHE(n_images=2, size=128), [{"name": "random_crop", "size": 64}],
    ...                    {"ratio": 4})                                  # doctest: +SKIP
    >>> s = view[0]; s["image"].shape, s["context"].shape                 # doctest: +SKIP
    (torch.Size([3, 64, 64]), torch.Size([3, 64, 64]))
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pathseg.data.base import SegmentationDataset
from pathseg.data.views import TensorView
from pathseg.errors import ConfigError
from pathseg.io.tiling import context_start, reflect_index  # noqa: F401  (the pair geometry; names kept here)
from pathseg.sample import IGNORE_INDEX

RATIOS = (2, 4, 8, 16)
CROPS = ("random_crop",)
POSITIONS = ("random", "center")
CONTEXT_KEYS = ("ratio", "size", "position")


def check_geometry(size: int, ratio: int) -> None:
    """``size`` must be a multiple of 64 (HookNet's hook) and ``ratio`` one of 2, 4, 8, 16."""
    if int(ratio) not in RATIOS:
        raise ConfigError(f"data.context.ratio: must be one of {', '.join(map(str, RATIOS))} "
                          f"(context MPP / target MPP), got {ratio!r}")
    if size < 64 or size % 64:
        raise ConfigError(f"data.context: the patch size must be a multiple of 64 px (HookNet centres the target's "
                          f"field of view in the context map), got {size}; set random_crop size or data.context.size")


def cut_pair(image: np.ndarray, mask: np.ndarray | None, y0: int, x0: int, size: int, ratio: int) -> dict[str, Any]:
    """The target crop at ``(y0, x0)`` and its concentric context, as documented in the module.

    Shape: image (H, W, 3) uint8, mask (H, W) or None -> image, context (size, size, 3) uint8;
    mask, context_mask (size, size) int64 (None without a mask).
    """
    check_geometry(size, ratio)
    h, w = image.shape[:2]
    ty, tx = np.arange(y0, y0 + size), np.arange(x0, x0 + size)
    out: dict[str, Any] = {"image": image[reflect_index(ty, h)[:, None], reflect_index(tx, w)[None, :]]}
    cy = np.arange(size * ratio) + context_start(y0, size, ratio)
    cx = np.arange(size * ratio) + context_start(x0, size, ratio)
    region = image[reflect_index(cy, h)[:, None], reflect_index(cx, w)[None, :]].astype(np.float32)
    blocks = region.reshape(size, ratio, size, ratio, -1).mean(axis=(1, 3))
    out["context"] = np.clip(np.rint(blocks), 0, 255).astype(np.uint8)
    out["mask"] = out["context_mask"] = None
    if mask is not None:
        out["mask"] = _labels(mask, ty, tx)
        out["context_mask"] = _labels(mask, cy[ratio // 2::ratio], cx[ratio // 2::ratio])
    return out


def _labels(mask: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``mask`` at (rows × cols); IGNORE_INDEX outside the image (labels are never mirrored)."""
    h, w = mask.shape
    inside = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
    vals = mask[np.clip(rows, 0, h - 1)[:, None], np.clip(cols, 0, w - 1)[None, :]].astype(np.int64)
    return np.where(inside, vals, IGNORE_INDEX)


def parse_context(options: dict[str, Any], transforms: list[dict[str, Any]] | None) -> tuple[int, int, list, list]:
    """``data.context`` + ``data.train_transforms`` -> (ratio, size, transforms before the crop, after it)."""
    from pathseg.registry import did_you_mean

    opts = dict(options or {})
    for key in opts:
        if key not in CONTEXT_KEYS:
            raise ConfigError(f"data.context: unknown key {key!r}.{did_you_mean(key, list(CONTEXT_KEYS))} "
                              f"Valid keys: {', '.join(CONTEXT_KEYS)}")
    if opts.get("position", "random") not in POSITIONS:
        raise ConfigError(f"data.context.position: one of {', '.join(POSITIONS)}, got {opts['position']!r}")
    if "ratio" not in opts:
        raise ConfigError("data.context: give ratio (context MPP / target MPP), e.g. data.context={ratio: 4}")
    items = list(transforms or [])
    cut = next((i for i, t in enumerate(items) if isinstance(t, dict) and t.get("name") in CROPS), None)
    pre, post = (items[:cut], items[cut + 1:]) if cut is not None else ([], items)
    size = opts.get("size")
    if size is None:
        crop = items[cut].get("size") if cut is not None else None
        if not isinstance(crop, int):
            raise ConfigError("data.context: the patch size comes from a random_crop with one integer size in "
                              "data.train_transforms, or from data.context.size; neither is given")
        size = crop
    ratio, size = int(opts["ratio"]), int(size)
    check_geometry(size, ratio)
    return ratio, size, pre, post


class ContextView(TensorView):
    """A training view yielding ``{"image", "mask", "context", "context_mask", "context_ratio", "index"}`` tensors.

    ``dataset`` any :class:`SegmentationDataset`; ``transforms`` the ``data.train_transforms`` list;
    ``context`` the ``data.context`` mapping (``ratio``, optional ``size``). ``item`` is an index or
    ``(index, augmentation seed)`` (:class:`pathseg.engine.distributed.GlobalBatchSampler`), like
    :class:`pathseg.data.views.TensorView`.

    Shape: image, context (3, T, T) float32 (normalised); mask, context_mask (T, T) int64.
    """

    def __init__(self, dataset: SegmentationDataset, transforms: list[dict[str, Any]] | None,
                 context: dict[str, Any], *, cache: bool = False) -> None:
        from pathseg.transforms import build_transforms

        super().__init__(dataset, None, cache=cache)
        self.ratio, self.size, pre, post = parse_context(context, transforms)
        self.center = dict(context).get("position", "random") == "center"
        self.pre, self.post = build_transforms(pre), build_transforms(post)

    def pair(self, sample: dict[str, Any], rng: np.random.Generator) -> tuple[dict[str, Any], dict[str, Any]]:
        """(target sample, context sample) as uint8/int64 arrays, after every transform."""
        s = self.pre(sample, rng)
        h, w = s["image"].shape[:2]
        t = self.size
        if self.center:  # the labelled tile in the middle of its context window
            y0, x0 = (h - t) // 2, (w - t) // 2
        else:
            y0 = int(rng.integers(0, h - t + 1)) if h >= t else -int(rng.integers(0, t - h + 1))
            x0 = int(rng.integers(0, w - t + 1)) if w >= t else -int(rng.integers(0, t - w + 1))
        cut = cut_pair(s["image"], s.get("mask"), y0, x0, t, self.ratio)
        meta = s.get("meta")
        seed = int(rng.integers(0, 2**63 - 1))  # the same draws for both patches
        target = self.post({"image": cut["image"], "mask": cut["mask"], "meta": meta}, np.random.default_rng(seed))
        context = self.post({"image": cut["context"], "mask": cut["context_mask"], "meta": meta},
                            np.random.default_rng(seed))
        for name, part in (("target", target), ("context", context)):
            if part["image"].shape[:2] != (t, t):
                raise ConfigError(f"data.context: a transform after random_crop changed the {name} patch from {t} px "
                                  f"to {part['image'].shape[:2]}; keep only size-preserving transforms after the crop")
        return target, context

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        import torch

        from pathseg.transforms import to_tensor

        i, seed = item if isinstance(item, tuple) else (item, None)
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
        target, context = self.pair(self._sample(i), np.random.default_rng(seed))
        t, c = to_tensor(target), to_tensor(context)
        out = {k: v for k, v in t.items() if torch.is_tensor(v)}
        out["context"] = c["image"]
        if "mask" in c:
            out["context_mask"] = c["mask"]
        out["context_ratio"] = torch.tensor(self.ratio)
        out["index"] = torch.tensor(i)
        return out
