"""Hashing and value noise: exact functions of integer lattice coordinates, so any window of the virtual
slide renders the same however it is tiled."""

from __future__ import annotations

import numpy as np

_U = np.uint64
_M1, _M2 = _U(0xBF58476D1CE4E5B9), _U(0x94D049BB133111EB)
_KX, _KY, _KS = _U(0x9E3779B97F4A7C15), _U(0xC2B2AE3D27D4EB4F), _U(0x165667B19E3779F9)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (wraps modulo 2^64)."""
    h = h ^ (h >> _U(30))
    h = h * _M1
    h = h ^ (h >> _U(27))
    h = h * _M2
    return h ^ (h >> _U(31))


def _key(seed: int, *salt: int) -> np.uint64:
    h = np.array([(seed * 0x632BE59BD9B4E019 + 0x8CB92BA72F3D8DD7) % 2**64], dtype=np.uint64)
    for s in salt:
        h = _mix(h ^ _U((s * 0x9E3779B97F4A7C15 + 1) % 2**64))
    return h[0]


def _hash2(key: np.uint64, ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
    """64-bit hash of (key, ix, iy); ix/iy int64 arrays (broadcast)."""
    hx = np.asarray(ix, dtype=np.int64).astype(np.uint64) * _KX
    hy = np.asarray(iy, dtype=np.int64).astype(np.uint64) * _KY
    return _mix(_mix(hx ^ key) + hy)


def _unit(h: np.ndarray, k: int = 0) -> np.ndarray:
    """Uniform float64 in [0, 1) from a hash (``k`` picks an independent stream)."""
    if k:
        h = _mix(h + _U(k) * _KS)
    return (h >> _U(11)).astype(np.float64) * (1.0 / 2**53)


def _smooth(t: np.ndarray) -> np.ndarray:
    return t * t * (3.0 - 2.0 * t)


def _noise_grid(u: np.ndarray, v: np.ndarray, scale: float, key: np.uint64) -> np.ndarray:
    """Value noise in [-1, 1] on the pixel grid ``u`` (W,) × ``v`` (H,) µm -> float32 (H, W).

    Only the lattice points next to a pixel are hashed, so the cost does not grow when the
    noise is much finer than the pixels.
    """
    fu, fv = u / scale, v / scale
    iu, iv = np.floor(fu), np.floor(fv)
    wx = _smooth(fu - iu).astype(np.float32)
    wy = _smooth(fv - iv).astype(np.float32)[:, None]
    iu, iv = iu.astype(np.int64), iv.astype(np.int64)
    cols, cinv = np.unique(np.concatenate([iu, iu + 1]), return_inverse=True)
    rows, rinv = np.unique(np.concatenate([iv, iv + 1]), return_inverse=True)
    lat = (_unit(_hash2(key, cols[None, :], rows[:, None])) * 2 - 1).astype(np.float32)
    cx0, cx1 = cinv[: iu.size], cinv[iu.size :]
    cy0, cy1 = rinv[: iv.size], rinv[iv.size :]
    r = lat[:, cx0] * (1 - wx) + lat[:, cx1] * wx  # (rows, W)
    return r[cy0] * (1 - wy) + r[cy1] * wy


def _lattice(key: np.uint64, u0: int, v0: int, nx: int, ny: int) -> np.ndarray:
    """Lattice values in [-1, 1] for cells u0..u0+nx-1 × v0..v0+ny-1 -> float32 (ny, nx)."""
    h = _hash2(key, np.arange(u0, u0 + nx, dtype=np.int64)[None, :], np.arange(v0, v0 + ny, dtype=np.int64)[:, None])
    return (_unit(h) * 2 - 1).astype(np.float32)


def _noise_points(u: np.ndarray, v: np.ndarray, scale: float, key: np.uint64) -> np.ndarray:
    """The same value noise as :func:`_noise_grid`, at arbitrary points ``u``, ``v`` (N,) µm."""
    fu, fv = u / scale, v / scale
    iu, iv = np.floor(fu), np.floor(fv)
    wx = _smooth(fu - iu).astype(np.float32)
    wy = _smooth(fv - iv).astype(np.float32)
    iu, iv = iu.astype(np.int64), iv.astype(np.int64)
    if iu.size == 0:
        return np.zeros(iu.shape, np.float32)
    u0, v0 = int(iu.min()), int(iv.min())
    nx, ny = int(iu.max()) - u0 + 2, int(iv.max()) - v0 + 2
    if nx * ny <= 4 * iu.size + 4096:  # dense points: hash a lattice table once, then gather
        lat = _lattice(key, u0, v0, nx, ny)
        cx, cy = iu - u0, iv - v0
        l00, l10, l01, l11 = lat[cy, cx], lat[cy, cx + 1], lat[cy + 1, cx], lat[cy + 1, cx + 1]
    else:  # sparse points: hash each corner

        def lat1(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return (_unit(_hash2(key, a, b)) * 2 - 1).astype(np.float32)

        l00, l10, l01, l11 = lat1(iu, iv), lat1(iu + 1, iv), lat1(iu, iv + 1), lat1(iu + 1, iv + 1)
    row0 = l00 * (1 - wx) + l10 * wx
    row1 = l01 * (1 - wx) + l11 * wx
    return row0 * (1 - wy) + row1 * wy
