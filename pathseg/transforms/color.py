"""Colour transforms: they change ``image`` only (uint8 in, uint8 out) and leave labels alone.

Example:
    >>> t = ColorJitter(brightness=0.2, hue=0.02)
    >>> out = t({"image": np.full((8, 8, 3), 128, np.uint8)}, np.random.default_rng(0))
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pathseg.errors import ConfigError
from pathseg.transforms.paired import TRANSFORMS

__all__ = ["ColorJitter", "GaussianBlur", "Grayscale"]

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _with_image(sample: dict, image: np.ndarray) -> dict:
    out = dict(sample)
    out["image"] = image
    return out


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


@TRANSFORMS.register("color_jitter")
class ColorJitter:
    """Random brightness, contrast, saturation (factors in [1−x, 1+x]) and hue (shift in [−x, x]
    of a full turn, x ≤ 0.5), applied in a random order, with probability ``p``."""

    def __init__(
        self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0, hue: float = 0.0, p: float = 1.0
    ) -> None:
        for name, val in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if not 0 <= val:
                raise ConfigError(f"color_jitter: {name} must be ≥ 0, got {val}")
        if not 0 <= hue <= 0.5:
            raise ConfigError(f"color_jitter: hue must be in [0, 0.5] (a fraction of a turn), got {hue}")
        self.brightness, self.contrast, self.saturation, self.hue = map(float, (brightness, contrast, saturation, hue))
        self.p = float(p)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        apply = rng.random() < self.p
        b = rng.uniform(1 - self.brightness, 1 + self.brightness)
        c = rng.uniform(1 - self.contrast, 1 + self.contrast)
        s = rng.uniform(1 - self.saturation, 1 + self.saturation)
        h = rng.uniform(-self.hue, self.hue)
        order = rng.permutation(4)
        if not apply or sample.get("image") is None:
            return sample
        import cv2

        img = sample["image"].astype(np.float32) / 255.0
        for op in order:
            if op == 0 and b != 1:
                img = img * b
            elif op == 1 and c != 1:
                mean = float((img @ _LUMA).mean())
                img = (img - mean) * c + mean
            elif op == 2 and s != 1:
                gray = (img @ _LUMA)[..., None]
                img = (img - gray) * s + gray
            elif op == 3 and h != 0:
                hsv = cv2.cvtColor(np.clip(img, 0, 1).astype(np.float32), cv2.COLOR_RGB2HSV)  # H in degrees
                hsv[..., 0] = np.mod(hsv[..., 0] + 360.0 * h, 360.0)
                img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
            img = np.clip(img, 0, 1)
        return _with_image(sample, _to_u8(img))

    def __repr__(self) -> str:
        return (
            f"ColorJitter(brightness={self.brightness}, contrast={self.contrast}, "
            f"saturation={self.saturation}, hue={self.hue}, p={self.p})"
        )


@TRANSFORMS.register("blur")
class GaussianBlur:
    """Gaussian blur with σ (pixels) drawn uniformly from ``sigma``, with probability ``p``."""

    def __init__(self, p: float = 0.5, sigma: Sequence[float] = (0.1, 2.0)) -> None:
        lo, hi = (float(x) for x in sigma)
        if not 0 < lo <= hi:
            raise ConfigError(f"blur: sigma must be [low, high] with 0 < low ≤ high, got {list(sigma)}")
        self.p, self.sigma = float(p), (lo, hi)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        apply = rng.random() < self.p
        sig = rng.uniform(*self.sigma)
        if not apply or sample.get("image") is None:
            return sample
        import cv2

        return _with_image(sample, cv2.GaussianBlur(sample["image"], (0, 0), sigmaX=sig, sigmaY=sig))

    def __repr__(self) -> str:
        return f"GaussianBlur(p={self.p}, sigma={self.sigma})"


@TRANSFORMS.register("grayscale")
class Grayscale:
    """Replace the image by its luma (ITU-R 601), kept as 3 channels, with probability ``p``."""

    def __init__(self, p: float = 0.2) -> None:
        self.p = float(p)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        if not rng.random() < self.p or sample.get("image") is None:
            return sample
        gray = np.clip(np.rint(sample["image"].astype(np.float32) @ _LUMA), 0, 255).astype(np.uint8)
        return _with_image(sample, np.repeat(gray[..., None], 3, axis=2))

    def __repr__(self) -> str:
        return f"Grayscale(p={self.p})"
