"""Tissue layout: the class of every point of the virtual slide (smooth random fields per class, a tissue
envelope that leaves bare glass) and the stroma fibre orientations."""

from __future__ import annotations

import numpy as np

from pathseg.data.synth.noise import _hash2, _key, _noise_grid, _unit
from pathseg.errors import ConfigError

CLASS_NAMES = ["background", "tumour", "stroma", "inflammatory", "necrosis"]
"""Tissue classes of the ``mask`` (index = class id); background is glass or fat."""

BG, TUMOUR, STROMA, INFLAM, NECROSIS = range(5)

_OCTAVES = ((280.0, 1.0), (110.0, 0.5), (45.0, 0.22))
_CLASS_BIAS = np.array([-0.12, 0.0, 0.08, -0.05, -0.08], dtype=np.float32)
_ENVELOPE = ((2500.0, 1.0), (900.0, 0.45))
_GLASS_BELOW = -0.42
_FIBRE_ANGLES_SALT = 77


def _class_map(noise, u: np.ndarray, v: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Tissue class and glass flag from value-noise fields; ``noise`` is the grid or point evaluator."""
    best = best_val = None
    for c in range(len(CLASS_NAMES)):
        f = _CLASS_BIAS[c]
        for o, (scale, amp) in enumerate(_OCTAVES):
            f = f + np.float32(amp) * noise(u, v, scale, _key(seed, 1, c, o))
        if best is None:
            best, best_val = np.zeros(f.shape, np.int64), f
        else:
            better = f > best_val
            best = np.where(better, c, best)
            best_val = np.where(better, f, best_val)
    env = np.float32(0.0)
    for o, (scale, amp) in enumerate(_ENVELOPE):
        env = env + np.float32(amp) * noise(u, v, scale, _key(seed, 2, o))
    glass = env < _GLASS_BELOW
    best = np.where(glass, BG, best)
    return best, glass


def _coords(x0: int, y0: int, width: int, height: int, mpp: float) -> tuple[np.ndarray, np.ndarray]:
    u = (np.arange(x0, x0 + width, dtype=np.int64).astype(np.float64) + 0.5) * mpp
    v = (np.arange(y0, y0 + height, dtype=np.int64).astype(np.float64) + 0.5) * mpp
    return u, v


def _check_window(width: int, height: int, mpp: float) -> None:
    if width < 1 or height < 1:
        raise ConfigError(f"render_region: width and height must be ≥ 1 px, got {width}x{height}")
    if not mpp > 0:
        raise ConfigError(f"render_region: mpp (µm per pixel) must be > 0, got {mpp}")


def render_mask(x0: int, y0: int, width: int, height: int, *, seed: int = 0, mpp: float = 0.5) -> np.ndarray:
    """Only the tissue class map of a window (fast: no nuclei, no stains).

    Equals ``render_region(...)["mask"]`` for the same arguments.

    Shape:
        -> int64 (height, width), values index ``CLASS_NAMES``.
    """
    _check_window(width, height, mpp)
    u, v = _coords(x0, y0, width, height, mpp)
    return _class_map(_noise_grid, u, v, seed)[0]


def _fibre_angles(seed: int) -> tuple[float, float]:
    h = _hash2(_key(seed, _FIBRE_ANGLES_SALT), np.array([0]), np.array([0]))
    a = float(_unit(h, 1)[0]) * np.pi
    return a, a + np.pi * (0.3 + 0.4 * float(_unit(h, 2)[0]))


def _fibre_weight(noise, u, v, seed):
    """Blend weight between the two fibre orientations (low-frequency field in [0, 1])."""
    return np.clip(noise(u, v, 220.0, _key(seed, 5)) * 2.0 + 0.5, 0.0, 1.0)
