"""Paired geometric transforms, the transform registry, ``Compose`` and ``to_tensor``.

A transform is a callable ``t(sample, rng) -> sample`` on the sample dict of
:mod:`pathseg.sample`. It draws its randomness from ``rng`` once per call and applies the
same geometry to every spatial key:

=========== ============================= ===================================
key         interpolation                 fill outside the image
=========== ============================= ===================================
image       bilinear (area when shrinking) ``fill`` (255, white glass)
mask        nearest (pixel-centre exact)  ``IGNORE_INDEX`` (255)
instances   nearest (pixel-centre exact)  0
=========== ============================= ===================================

Other keys (``labels``, ``meta``, ...) pass through untouched; missing or ``None`` keys are skipped.
The input dict is not modified.

Example:
    >>> t = build_transforms([{"name": "random_crop", "size": 64}, {"name": "flip"}])
    >>> out = t(sample, np.random.default_rng(0))           # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from pathseg.errors import ConfigError
from pathseg.registry import Registry
from pathseg.sample import IGNORE_INDEX

__all__ = [
    "TRANSFORMS",
    "LABEL_FILL",
    "Compose",
    "build_transforms",
    "to_tensor",
    "RandomFlip",
    "RandomRotate90",
    "RandomCrop",
    "CenterCrop",
    "RandomScale",
    "Resize",
]

Transform = Callable[[dict, np.random.Generator], dict]

TRANSFORMS: Registry = Registry("transform")
"""Transform classes by config name; ``build_transforms`` calls them with the config's other keys."""

LABEL_FILL = {"mask": IGNORE_INDEX, "instances": 0}
"""Label keys moved with the image (nearest interpolation) and their fill value outside the image."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Compose:
    """Apply transforms in order, passing the same ``rng`` (a fresh one when ``rng`` is None)."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: dict, rng: np.random.Generator | None = None) -> dict:
        rng = np.random.default_rng() if rng is None else rng
        for t in self.transforms:
            sample = t(sample, rng)
        return sample

    def __len__(self) -> int:
        return len(self.transforms)

    def __repr__(self) -> str:
        return "Compose([" + ", ".join(repr(t) for t in self.transforms) + "])"


def build_transforms(config: Iterable[dict[str, Any]] | None) -> Compose:
    """Build a :class:`Compose` from a list of ``{"name": ..., **options}`` dicts.

    An unknown name raises :class:`pathseg.errors.UnknownNameError` listing the valid names; a bad
    option raises :class:`pathseg.errors.ConfigError` naming the transform.

    Example:
        >>> build_transforms([{"name": "flip"}, {"name": "rotate90"}])
        Compose([RandomFlip(horizontal=0.5, vertical=0.5), RandomRotate90(p=1.0)])
    """
    out = []
    for i, item in enumerate(config or []):
        if not isinstance(item, dict) or "name" not in item:
            raise ConfigError(f"transform #{i} must be a mapping with a 'name' key, got {item!r}")
        opts = {k: v for k, v in item.items() if k != "name"}
        if "range" in opts:  # "range" is a Python builtin; accept it in configs as an alias
            opts["scale_range"] = opts.pop("range")
        cls = TRANSFORMS.get(item["name"])
        try:
            out.append(cls(**opts))
        except TypeError as e:
            raise ConfigError(f"transform {item['name']!r}: {e}; check its options") from e
    return Compose(out)


# ---------------------------------------------------------------------------------------------
# helpers


def _spatial(sample: dict) -> tuple[int, int]:
    for key in ("image", *LABEL_FILL):
        a = sample.get(key)
        if a is not None:
            return int(a.shape[0]), int(a.shape[1])
    raise ConfigError("a spatial transform needs an 'image', 'mask' or 'instances' array in the sample")


def _apply(sample: dict, image_fn: Callable[[np.ndarray], np.ndarray], label_fn: Callable[[np.ndarray, int], np.ndarray]) -> dict:
    out = dict(sample)
    if sample.get("image") is not None:
        out["image"] = np.ascontiguousarray(image_fn(sample["image"]))
    for key, fill in LABEL_FILL.items():
        if sample.get(key) is not None:
            out[key] = np.ascontiguousarray(label_fn(sample[key], fill))
    return out


def _nearest_index(n_out: int, n_in: int) -> np.ndarray:
    """Source index of each output pixel, pixel-centre aligned (like bilinear's sampling grid)."""
    return np.clip(np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64), 0, n_in - 1)


def resize_pair(sample: dict, out_h: int, out_w: int) -> dict:
    """Resize every spatial key to ``out_h × out_w``: bilinear/area for the image, nearest for labels."""
    import cv2

    h, w = _spatial(sample)
    if (out_h, out_w) == (h, w):
        return dict(sample)
    iy, ix = _nearest_index(out_h, h), _nearest_index(out_w, w)

    def image_fn(img: np.ndarray) -> np.ndarray:
        interp = cv2.INTER_AREA if out_h < h and out_w < w else cv2.INTER_LINEAR
        return cv2.resize(img, (out_w, out_h), interpolation=interp)

    return _apply(sample, image_fn, lambda a, fill: a[iy[:, None], ix[None, :]])


def _crop(sample: dict, y: int, x: int, ch: int, cw: int, fill: int) -> dict:
    """Crop ``[y, y+ch) × [x, x+cw)``; parts outside the image get the key's fill value."""
    h, w = _spatial(sample)

    def cut(a: np.ndarray, value: int) -> np.ndarray:
        out = np.full((ch, cw) + a.shape[2:], value, dtype=a.dtype)
        y0, x0 = max(y, 0), max(x, 0)
        y1, x1 = min(y + ch, h), min(x + cw, w)
        if y1 > y0 and x1 > x0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = a[y0:y1, x0:x1]
        return out

    return _apply(sample, lambda img: cut(img, fill), cut)


def _size2(size: int | Sequence[int], who: str) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    if len(size) != 2 or min(size) < 1:
        raise ConfigError(f"{who}: size must be a positive int or [height, width], got {size!r}")
    return int(size[0]), int(size[1])


# ---------------------------------------------------------------------------------------------
# transforms


@TRANSFORMS.register("flip")
class RandomFlip:
    """Flip left-right with probability ``horizontal`` and up-down with probability ``vertical``."""

    def __init__(self, horizontal: float = 0.5, vertical: float = 0.5) -> None:
        self.horizontal, self.vertical = float(horizontal), float(vertical)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        fh, fv = rng.random() < self.horizontal, rng.random() < self.vertical
        axes = tuple(ax for ax, on in ((1, fh), (0, fv)) if on)
        if not axes:
            return sample
        return _apply(sample, lambda a: np.flip(a, axes), lambda a, _: np.flip(a, axes))

    def __repr__(self) -> str:
        return f"RandomFlip(horizontal={self.horizontal}, vertical={self.vertical})"


@TRANSFORMS.register("rotate90")
class RandomRotate90:
    """Rotate by k·90° (k uniform in 0..3) with probability ``p``; ``k`` fixes the turn count."""

    def __init__(self, p: float = 1.0, k: int | None = None) -> None:
        self.p, self.k = float(p), k

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        apply = rng.random() < self.p
        k = int(rng.integers(0, 4)) if self.k is None else int(self.k) % 4
        if not apply or k == 0:
            return sample
        return _apply(sample, lambda a: np.rot90(a, k, axes=(0, 1)), lambda a, _: np.rot90(a, k, axes=(0, 1)))

    def __repr__(self) -> str:
        return f"RandomRotate90(p={self.p})" if self.k is None else f"RandomRotate90(p={self.p}, k={self.k})"


@TRANSFORMS.register("random_crop")
class RandomCrop:
    """Crop ``size`` (int or [h, w]) at a uniform random position.

    A side smaller than the crop is padded (at a random offset): the image with ``fill``,
    ``mask`` with ``IGNORE_INDEX``, ``instances`` with 0.
    """

    def __init__(self, size: int | Sequence[int], fill: int = 255) -> None:
        self.size = _size2(size, "random_crop")
        self.fill = int(fill)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        h, w = _spatial(sample)
        ch, cw = self.size
        y = int(rng.integers(0, h - ch + 1)) if h >= ch else -int(rng.integers(0, ch - h + 1))
        x = int(rng.integers(0, w - cw + 1)) if w >= cw else -int(rng.integers(0, cw - w + 1))
        return _crop(sample, y, x, ch, cw, self.fill)

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size})"


@TRANSFORMS.register("center_crop")
class CenterCrop:
    """Crop ``size`` from the centre (padding as in :class:`RandomCrop`); deterministic."""

    def __init__(self, size: int | Sequence[int], fill: int = 255) -> None:
        self.size = _size2(size, "center_crop")
        self.fill = int(fill)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        h, w = _spatial(sample)
        ch, cw = self.size
        return _crop(sample, (h - ch) // 2, (w - cw) // 2, ch, cw, self.fill)

    def __repr__(self) -> str:
        return f"CenterCrop(size={self.size})"


@TRANSFORMS.register("scale")
class RandomScale:
    """Resize by a factor drawn log-uniformly from ``scale_range`` (config key ``range``).

    The output size is ``round(h·s) × round(w·s)``; follow it with a crop for a fixed size.
    ``meta["mpp"]`` is left as is.
    """

    def __init__(self, scale_range: Sequence[float] = (0.8, 1.25), p: float = 1.0) -> None:
        lo, hi = (float(x) for x in scale_range)
        if not 0 < lo <= hi:
            raise ConfigError(f"scale: range must be [low, high] with 0 < low ≤ high, got {list(scale_range)}")
        self.scale_range, self.p = (lo, hi), float(p)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        apply = rng.random() < self.p
        lo, hi = self.scale_range
        s = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        if not apply:
            return sample
        h, w = _spatial(sample)
        return resize_pair(sample, max(1, round(h * s)), max(1, round(w * s)))

    def __repr__(self) -> str:
        return f"RandomScale(scale_range={self.scale_range}, p={self.p})"


@TRANSFORMS.register("resize")
class Resize:
    """Resize by a fixed ``scale`` factor, or to a fixed ``size`` (int or [h, w]); deterministic."""

    def __init__(self, scale: float | None = None, size: int | Sequence[int] | None = None) -> None:
        if (scale is None) == (size is None):
            raise ConfigError("resize: give exactly one of scale (a factor) or size ([height, width])")
        if scale is not None and not scale > 0:
            raise ConfigError(f"resize: scale must be > 0, got {scale}")
        self.scale = None if scale is None else float(scale)
        self.size = None if size is None else _size2(size, "resize")

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        h, w = _spatial(sample)
        if self.size is not None:
            oh, ow = self.size
        else:
            oh, ow = max(1, round(h * self.scale)), max(1, round(w * self.scale))
        return resize_pair(sample, oh, ow)

    def __repr__(self) -> str:
        return f"Resize(scale={self.scale})" if self.size is None else f"Resize(size={self.size})"


# ---------------------------------------------------------------------------------------------
# tensors


def to_tensor(sample: dict, *, keep_meta: bool = True) -> dict:
    """Convert a sample to tensors for a model.

    ``image`` -> float32 (3, H, W), scaled to 0..1 and normalised with the ImageNet mean/std;
    ``mask`` and ``instances`` -> int64 (H, W); ``labels`` -> float32 (C,). ``None`` values are
    dropped (so ``collate`` can stack); ``meta`` is kept as-is unless ``keep_meta=False``;
    other keys pass through.

    Shape:
        image (H, W, 3) uint8 -> (3, H, W) float32; mask/instances (H, W) -> (H, W) int64.

    Example:
        >>> t = to_tensor({"image": np.zeros((4, 4, 3), np.uint8), "mask": np.zeros((4, 4))})
        >>> tuple(t["image"].shape), t["mask"].dtype
        ((3, 4, 4), torch.int64)
    """
    import torch

    out: dict[str, Any] = {}
    for key, val in sample.items():
        if val is None or (key == "meta" and not keep_meta):
            continue
        if key == "image":
            img = torch.from_numpy(np.array(val, dtype=np.float32)).permute(2, 0, 1).div_(255.0)  # a copy: writable
            mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
            std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
            out[key] = (img - mean) / std
        elif key in LABEL_FILL:
            out[key] = torch.from_numpy(np.ascontiguousarray(val).astype(np.int64, copy=False))
        elif key == "labels":
            out[key] = torch.as_tensor(np.asarray(val, dtype=np.float32))
        else:
            out[key] = val
    return out


to_tensors = to_tensor
"""Alias of :func:`to_tensor` (the name :func:`pathseg.sample.collate` refers to)."""
