"""Synthetic H&E: an infinite, deterministic virtual slide rendered through a stain absorption model.

Everything is a function of global coordinates, so any window renders identically however it is
tiled (tiles rendered apart and concatenated equal one large render, bit for bit):

* **Tissue classes** (``CLASS_NAMES``): background (glass and fat), tumour, stroma, inflammatory,
  necrosis. Each class has a smooth random field (hashed value noise, three octaves of 280, 110 and
  45 µm) evaluated at the pixel centre in µm; the pixel takes the class with the largest field.
  A very low-frequency "tissue envelope" field leaves some regions as bare glass.
* **Nuclei** (``NUCLEUS_TYPES``) come from two hashed jittered grids (12 µm cells for large nuclei,
  6.5 µm cells for small ones): each grid cell holds one candidate whose position, size, shape and
  darkness are hashed from (seed, cell); it is kept according to the tissue class at its centre.
  Tumour nuclei are large and pleomorphic, lymphocytes small, round and dark, fibroblasts elongated
  along the stroma fibres, and necrosis holds small pyknotic fragments. Overlaps are resolved by a
  hashed priority, so the result does not depend on drawing order or on the window.
* **Stains**: per-pixel hematoxylin, eosin and a small residual concentration give the optical
  density ``OD = c_H·v_H + c_E·v_E + c_R·v_R`` and ``RGB = round(255·exp(−OD))`` (Beer–Lambert;
  see :mod:`pathseg.transforms.stain`). Centre 0 uses the Ruifrok & Johnston vectors; every other
  centre perturbs the vectors and stain intensities (:func:`centre_stains`), so the same tissue
  looks different across centres.

Sizes are in µm, so ``mpp`` (µm per pixel) sets the pixel scale: pixel ``(x, y)`` samples the point
``((x + 0.5)·mpp, (y + 0.5)·mpp)`` µm.

Example:
    >>> r = render_region(0, 0, 256, 256, seed=0, centre=1)
    >>> r["image"].shape, r["mask"].dtype
    ((256, 256, 3), dtype('int64'))
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from pathseg.data.base import DATASETS, SegmentationDataset
from pathseg.errors import ConfigError
from pathseg.sample import Sample, make_sample

__all__ = [
    "CLASS_NAMES",
    "NUCLEUS_TYPES",
    "centre_stains",
    "render_region",
    "render_mask",
    "SyntheticHE",
    "write_synthetic_images",
    "write_synthetic_slide",
]

CLASS_NAMES = ["background", "tumour", "stroma", "inflammatory", "necrosis"]
"""Tissue classes of the ``mask`` (index = class id); background is glass or fat."""

NUCLEUS_TYPES = ["none", "tumour", "lymphocyte", "fibroblast", "apoptotic"]
"""Values of ``nuclei_type`` (0 = no nucleus)."""

BG, TUMOUR, STROMA, INFLAM, NECROSIS = range(5)
_N_TUMOUR, _N_LYMPH, _N_FIBRO, _N_APOP = 1, 2, 3, 4

# ---------------------------------------------------------------------------------------------
# hashing and value noise (exact functions of integer lattice coordinates)

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


# ---------------------------------------------------------------------------------------------
# tissue layout

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


# ---------------------------------------------------------------------------------------------
# stains per centre


def centre_stains(centre: int) -> tuple[np.ndarray, np.ndarray]:
    """Stain vectors and intensities of an acquisition centre.

    Returns ``(matrix, scale)``: ``matrix`` (3, 3) float64, rows = unit OD vectors of hematoxylin,
    eosin and the residual; ``scale`` (3,) multiplies the tissue's stain amounts. Centre 0 is the
    Ruifrok & Johnston reference with unit scales; other centres are perturbed deterministically.

    Example:
        >>> from pathseg.transforms.stain import RUIFROK_HED
        >>> m, s = centre_stains(0)
        >>> bool(np.allclose(m, RUIFROK_HED)), s.tolist()
        (True, [1.0, 1.0, 1.0])
    """
    from pathseg.transforms.stain import RUIFROK_HED  # here: pathseg.transforms imports pathseg.data

    if centre < 0:
        raise ConfigError(f"centre must be ≥ 0, got {centre}")
    if centre == 0:
        return np.array(RUIFROK_HED, dtype=np.float64), np.ones(3)
    h = _hash2(_key(12345, 3), np.array([centre]), np.array([0]))
    r = np.array([_unit(h, k)[0] for k in range(1, 12)])
    m = np.array(RUIFROK_HED, dtype=np.float64)
    m[0] = m[0] + (r[0:3] - 0.5) * np.array([0.40, 0.40, 0.50])  # hematoxylin: bluer / redder
    m[1] = m[1] + (r[3:6] - 0.5) * np.array([0.40, 0.10, 0.50])  # eosin: pinker / more orange
    m = np.clip(m, 0.01, None)
    m = m / np.linalg.norm(m, axis=1, keepdims=True)
    scale = np.array([0.6 + 0.8 * r[6], 0.6 + 0.8 * r[7], 1.0])
    return m, scale


# ---------------------------------------------------------------------------------------------
# nuclei

# layer: cell size µm, max extent µm (semi-axis × (1 + shape harmonics)), salt
_LAYERS = ((12.0, 8.6, 11), (6.5, 3.8, 12))
# per layer, per tissue class: (nucleus type, probability)
_ACCEPT = {
    0: {TUMOUR: (_N_TUMOUR, 0.85), STROMA: (_N_FIBRO, 0.30), INFLAM: (_N_FIBRO, 0.04)},
    1: {INFLAM: (_N_LYMPH, 0.80), TUMOUR: (_N_LYMPH, 0.04), STROMA: (_N_LYMPH, 0.04), NECROSIS: (_N_APOP, 0.45)},
}
# per nucleus type: semi-major axis range µm, aspect (b/a) range, harmonic amplitude, H amount
_SHAPE = {
    _N_TUMOUR: ((4.0, 6.5), (0.65, 1.0), 0.12, 1.05),
    _N_LYMPH: ((2.6, 3.3), (0.85, 1.0), 0.04, 1.65),
    _N_FIBRO: ((5.0, 7.2), (0.22, 0.35), 0.05, 1.15),
    _N_APOP: ((1.0, 2.2), (0.6, 1.0), 0.25, 1.90),
}


NUCLEI_MAX_MPP = 3.0
"""Above this many µm per pixel nuclei are not drawn one by one: each pixel gets the area-mean
light of its class's expected nucleus coverage, and ``instances``/``nuclei_type`` are 0."""


def _expected_nuclei() -> tuple[np.ndarray, np.ndarray]:
    """Per tissue class: expected area fraction covered by nuclei, and their mean H amount."""
    cov = np.zeros(len(CLASS_NAMES), np.float64)
    dark = np.zeros(len(CLASS_NAMES), np.float64)
    for layer, table in _ACCEPT.items():
        cell = _LAYERS[layer][0]
        for c, (t, p) in table.items():
            (a0, a1), (q0, q1), _, d = _SHAPE[t]
            area = np.pi * (a0 * a0 + a0 * a1 + a1 * a1) / 3 * (q0 + q1) / 2  # E[π a b]
            f = p * area / (cell * cell)
            prof = 0.925 if t == _N_TUMOUR else 1.0  # mean of the vesicular profile over a disc
            cov[c] += f
            dark[c] += f * d * prof
    dark = np.where(cov > 0, dark / np.maximum(cov, 1e-9), 0.0)
    return np.minimum(cov, 0.9).astype(np.float32), dark.astype(np.float32)


def _fibre_angles(seed: int) -> tuple[float, float]:
    h = _hash2(_key(seed, _FIBRE_ANGLES_SALT), np.array([0]), np.array([0]))
    a = float(_unit(h, 1)[0]) * np.pi
    return a, a + np.pi * (0.3 + 0.4 * float(_unit(h, 2)[0]))


def _fibre_weight(noise, u, v, seed):
    """Blend weight between the two fibre orientations (low-frequency field in [0, 1])."""
    return np.clip(noise(u, v, 220.0, _key(seed, 5)) * 2.0 + 0.5, 0.0, 1.0)


def _nuclei_candidates(layer: int, u_lo: float, u_hi: float, v_lo: float, v_hi: float, seed: int) -> dict[str, np.ndarray]:
    """Accepted nuclei of one layer that may reach the µm box [u_lo, u_hi] × [v_lo, v_hi]."""
    cell, ext, salt = _LAYERS[layer]
    i0, i1 = int(np.floor((u_lo - ext) / cell)), int(np.floor((u_hi + ext) / cell))
    j0, j1 = int(np.floor((v_lo - ext) / cell)), int(np.floor((v_hi + ext) / cell))
    ii, jj = np.meshgrid(np.arange(i0, i1 + 1, dtype=np.int64), np.arange(j0, j1 + 1, dtype=np.int64))
    ii, jj = ii.ravel(), jj.ravel()
    h = _hash2(_key(seed, salt), ii, jj)
    cu = (ii + 0.15 + 0.7 * _unit(h, 1)) * cell
    cv = (jj + 0.15 + 0.7 * _unit(h, 2)) * cell
    cls = _class_map(_noise_points, cu, cv, seed)[0]
    kind = np.zeros(ii.shape, np.int64)
    keep_u = _unit(h, 3)
    for c, (t, p) in _ACCEPT[layer].items():
        kind = np.where((cls == c) & (keep_u < p), t, kind)
    sel = kind > 0
    ii, jj, h, cu, cv, kind = ii[sel], jj[sel], h[sel], cu[sel], cv[sel], kind[sel]
    n = kind.size
    a = np.empty(n)
    b = np.empty(n)
    harm = np.empty(n)
    dark = np.empty(n)
    r_size, r_asp, r_dark = _unit(h, 4), _unit(h, 5), _unit(h, 6)
    for t, ((a_lo, a_hi), (q_lo, q_hi), hm, hd) in _SHAPE.items():
        m = kind == t
        a[m] = a_lo + (a_hi - a_lo) * r_size[m]
        b[m] = a[m] * (q_lo + (q_hi - q_lo) * r_asp[m])
        harm[m] = hm
        dark[m] = hd * (0.85 + 0.3 * r_dark[m])
    theta = _unit(h, 7) * np.pi
    fibro = kind == _N_FIBRO
    if fibro.any():  # fibroblasts lie along the local fibre direction
        a1, a2 = _fibre_angles(seed)
        w = _fibre_weight(_noise_points, cu[fibro], cv[fibro], seed)
        theta[fibro] = np.where(w > 0.5, a1, a2) + (_unit(h[fibro], 8) - 0.5) * 0.4
    h2c = (_unit(h, 9) * 2 - 1) * harm
    h2s = (_unit(h, 10) * 2 - 1) * harm
    h3 = (_unit(h, 11) * 2 - 1) * harm
    # unique within any window narrower than 2^14 cells; int32-safe and > 0
    ident = 1 + layer + 2 * ((ii % (1 << 14)) + (jj % (1 << 14)) * (1 << 14))
    prio = (h >> _U(2)).astype(np.int64)
    return dict(cu=cu, cv=cv, a=a, b=b, theta=theta, h2c=h2c, h2s=h2s, h3=h3, dark=dark, kind=kind,
                ident=ident.astype(np.int32), prio=prio, ext=a * (1 + 3 * harm) + 0.1)


def _draw_nuclei(u, v, mpp, seed, x0, y0, width, height, chrom):
    """Per-pixel winning nucleus: id, type, and hematoxylin amount (0 outside nuclei).

    Every nucleus is evaluated on a square patch of global pixels around its centre (vectorised
    over nuclei); where nuclei overlap, the one with the highest hashed priority wins, so the
    result does not depend on the window.
    """
    flat_all, prio_all, id_all, kind_all, val_all = [], [], [], [], []
    chrom_flat = chrom.ravel()
    for layer in range(len(_LAYERS)):
        nc = _nuclei_candidates(layer, float(u[0]), float(u[-1]), float(v[0]), float(v[-1]), seed)
        n = nc["kind"].size
        if n == 0:
            continue
        r = int(np.ceil(float(nc["ext"].max()) / mpp)) + 1
        d = np.arange(-r, r + 1, dtype=np.int64)
        per = d.size * d.size
        step = max(1, 2_000_000 // per)  # bound memory at fine mpp
        for s0 in range(0, n, step):
            sl = slice(s0, min(n, s0 + step))
            cu, cv = nc["cu"][sl, None, None], nc["cv"][sl, None, None]
            gx = np.floor(nc["cu"][sl] / mpp).astype(np.int64)[:, None, None] + d[None, None, :]
            gy = np.floor(nc["cv"][sl] / mpp).astype(np.int64)[:, None, None] + d[None, :, None]
            ok = (gx >= x0) & (gx < x0 + width) & (gy >= y0) & (gy < y0 + height)
            dx = (gx.astype(np.float64) + 0.5) * mpp - cu
            dy = (gy.astype(np.float64) + 0.5) * mpp - cv
            th = nc["theta"][sl, None, None]
            c, s_ = np.cos(th), np.sin(th)
            p = (dx * c + dy * s_) / nc["a"][sl, None, None]
            q = (dy * c - dx * s_) / nc["b"][sl, None, None]
            rho2 = p * p + q * q
            rho = np.sqrt(rho2)
            inv = 1.0 / np.maximum(rho, 1e-9)
            pn, qn = p * inv, q * inv  # cos φ, sin φ
            reff = (1.0 + nc["h2c"][sl, None, None] * (pn * pn - qn * qn) + nc["h2s"][sl, None, None] * (2 * pn * qn)
                    + nc["h3"][sl, None, None] * (pn * (pn * pn - 3 * qn * qn)))
            sn = rho / reff
            hit = ok & (sn < 1.0)
            k_loc, iy, ix = np.nonzero(hit)
            k_idx = k_loc + s0
            gxh, gyh = gx[k_loc, 0, ix], gy[k_loc, iy, 0]
            flat = (gyh - y0) * width + (gxh - x0)
            snh, rho2h = sn[hit], rho2[hit]
            kind = nc["kind"][k_idx]
            chr_ = chrom_flat[flat].astype(np.float64)
            edge = np.clip((1.0 - snh) * nc["a"][k_idx] / 0.5, 0.0, 1.0)  # soft 0.5 µm rim
            prof = np.where(
                kind == _N_TUMOUR, (0.75 + 0.35 * rho2h) * (1.0 + 0.45 * chr_),  # vesicular, clumped
                np.where(kind == _N_LYMPH, 1.0 + 0.12 * chr_, 1.0 + 0.2 * chr_),
            )
            flat_all.append(flat)
            prio_all.append(nc["prio"][k_idx])
            id_all.append(nc["ident"][k_idx])
            kind_all.append(kind)
            val_all.append((nc["dark"][k_idx] * edge * prof).astype(np.float32))
    ident = np.zeros(height * width, np.int32)
    kind = np.zeros(height * width, np.int64)
    amount = np.zeros(height * width, np.float32)
    if flat_all:
        flat = np.concatenate(flat_all)
        prio = np.concatenate(prio_all)
        order = np.lexsort((prio, flat))  # by pixel, then priority: the last of each pixel wins
        fs = flat[order]
        last = np.ones(fs.size, bool)
        last[:-1] = fs[1:] != fs[:-1]
        win = order[last]
        pix = flat[win]
        ident[pix] = np.concatenate(id_all)[win]
        kind[pix] = np.concatenate(kind_all)[win]
        amount[pix] = np.concatenate(val_all)[win]
    shape = (height, width)
    return ident.reshape(shape), kind.reshape(shape), amount.reshape(shape)


_COVERAGE, _DARKNESS = _expected_nuclei()

# ---------------------------------------------------------------------------------------------
# rendering

# base (c_H, c_E) per tissue class
_BASE = np.array([[0.0, 0.0], [0.16, 0.30], [0.06, 0.42], [0.10, 0.22], [0.16, 0.55]], dtype=np.float32)
_FAT_CELL = 60.0  # µm


def _fat_membranes(u: np.ndarray, v: np.ndarray, seed: int) -> np.ndarray:
    """1 on adipocyte membranes, 0 inside (Voronoi edges of a jittered 60 µm grid), points (N,)."""
    iu, iv = np.floor(u / _FAT_CELL).astype(np.int64), np.floor(v / _FAT_CELL).astype(np.int64)
    key = _key(seed, 21)
    d1 = np.full(u.shape, np.inf)
    d2 = np.full(u.shape, np.inf)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            h = _hash2(key, iu + di, iv + dj)
            pu = (iu + di + 0.1 + 0.8 * _unit(h, 1)) * _FAT_CELL
            pv = (iv + dj + 0.1 + 0.8 * _unit(h, 2)) * _FAT_CELL
            d = np.hypot(u - pu, v - pv)
            d2 = np.where(d < d1, d1, np.minimum(d2, d))
            d1 = np.minimum(d1, d)
    return np.clip(1.0 - (d2 - d1) / 2.0, 0.0, 1.0).astype(np.float32)


def render_region(
    x0: int,
    y0: int,
    width: int,
    height: int,
    *,
    seed: int = 0,
    centre: int = 0,
    mpp: float = 0.5,
    return_concentrations: bool = False,
) -> dict[str, np.ndarray]:
    """Render the window ``[x0, x0+width) × [y0, y0+height)`` (pixels) of the virtual slide.

    The result depends only on the global coordinates, ``seed``, ``centre`` and ``mpp``: tiles
    rendered separately and concatenated equal one render of the whole window exactly.
    ``instances`` holds global nucleus ids (unique within any window up to ~80 mm wide); relabel
    them (e.g. ``np.unique(..., return_inverse=True)``) for compact 1..N ids.

    Shape:
        -> ``image`` uint8 (H, W, 3); ``mask`` int64 (H, W) tissue class (``CLASS_NAMES``);
        ``instances`` int32 (H, W) nucleus id, 0 = none; ``nuclei_type`` int64 (H, W)
        (``NUCLEUS_TYPES``); with ``return_concentrations`` also ``concentrations`` float32
        (H, W, 3): the amounts of H, E, residual (centre scale applied), so that
        ``image == round(255·exp(−concentrations @ centre_stains(centre)[0]))``.

    Above ``NUCLEI_MAX_MPP`` (3 µm/px, pyramid levels and thumbnails) nuclei are smaller than a
    pixel: each pixel then gets the area-mean light of its class's expected nucleus coverage,
    ``instances`` and ``nuclei_type`` are all 0 and ``concentrations`` are those between nuclei.

    Example:
        >>> a = render_region(0, 0, 64, 32)["image"]
        >>> b = np.concatenate([render_region(0, 0, 32, 32)["image"], render_region(32, 0, 32, 32)["image"]], 1)
        >>> bool((a == b).all())
        True
    """
    _check_window(width, height, mpp)
    u, v = _coords(x0, y0, width, height, mpp)
    cls, glass = _class_map(_noise_grid, u, v, seed)

    def fade(scale: float) -> np.float32:  # texture finer than a pixel averages out
        return np.float32(min(1.0, scale / mpp))

    t_mid = _noise_grid(u, v, 6.0, _key(seed, 31)) * fade(6.0)
    t_fine = _noise_grid(u, v, 2.0, _key(seed, 32)) * fade(2.0)
    chrom = _noise_grid(u, v, 0.9, _key(seed, 33)) * fade(0.9)
    gx = np.arange(x0, x0 + width, dtype=np.int64)[None, :]
    gy = np.arange(y0, y0 + height, dtype=np.int64)[:, None]
    grain = (_unit(_hash2(_key(seed, 34), gx, gy)) - 0.5).astype(np.float32)

    c_h = _BASE[cls, 0] + np.float32(0.04) * t_mid + np.float32(0.03) * grain
    c_e = _BASE[cls, 1] + np.float32(0.06) * t_mid + np.float32(0.04) * t_fine + np.float32(0.03) * grain

    # stroma: wavy collagen fibres in two orientations blended by a low-frequency field
    stroma = cls == STROMA
    if stroma.any():
        a1, a2 = _fibre_angles(seed)
        warp = _noise_grid(u, v, 30.0, _key(seed, 35)).astype(np.float64)
        w = _fibre_weight(_noise_grid, u, v, seed)
        fib = np.zeros(cls.shape, np.float32)
        contrast = 0.5 * float(np.clip(1.0 - (mpp - 1.0) / 1.5, 0.0, 1.0))  # fade 3.5 µm fibres before they alias
        for ang, wt in ((a1, w), (a2, 1.0 - w)):
            phase = (u[None, :] * np.cos(ang) + v[:, None] * np.sin(ang)) / 3.5 + 2.5 * warp
            fib = fib + (wt * (0.5 + contrast * np.sin(2 * np.pi * np.mod(phase, 1.0)))).astype(np.float32)
        c_e = np.where(stroma, c_e + np.float32(0.35) * fib, c_e)
    # necrosis: smudgy eosin and nuclear dust
    necro = cls == NECROSIS
    if necro.any():
        dust = np.maximum(t_fine, 0) * np.maximum(chrom, 0)
        c_e = np.where(necro, c_e + np.float32(0.12) * t_mid, c_e)
        c_h = np.where(necro, c_h + np.float32(0.5) * dust, c_h)
    # background: glass (nearly clear) or fat (clear cells with thin eosin membranes)
    bg = cls == BG
    if bg.any():
        c_h = np.where(bg, np.float32(0.01) + np.float32(0.01) * grain, c_h)
        c_e = np.where(bg, np.float32(0.015) + np.float32(0.01) * grain, c_e)
        fat = bg & ~glass
        if fat.any():
            yy, xx = np.nonzero(fat)
            memb = _fat_membranes(u[xx], v[yy], seed)
            c_e[yy, xx] += np.float32(0.40) * memb
            c_h[yy, xx] += np.float32(0.05) * memb

    c_r = np.float32(0.03) + np.float32(0.02) * grain
    matrix, scale = centre_stains(centre)
    m32, s32 = matrix.astype(np.float32), scale.astype(np.float32)

    def concentrations(ch: np.ndarray, ce: np.ndarray) -> np.ndarray:
        return np.stack([np.maximum(ch, 0) * s32[0], np.maximum(ce, 0) * s32[1], c_r * s32[2]], axis=-1)

    def transmitted(conc: np.ndarray) -> np.ndarray:  # Beer–Lambert: exp(-OD), OD = C @ M
        return np.exp(-(conc[..., 0:1] * m32[0] + conc[..., 1:2] * m32[1] + conc[..., 2:3] * m32[2]))

    if mpp <= NUCLEI_MAX_MPP:
        ident, kind, amount = _draw_nuclei(u, v, mpp, seed, x0, y0, width, height, chrom)
        nuc = kind > 0
        c_h = np.where(nuc, amount + np.float32(0.5) * c_h, c_h)
        c_e = np.where(nuc, np.float32(0.45) * c_e, c_e)
        conc = concentrations(c_h, c_e)
        light = transmitted(conc)
    else:  # nuclei below the pixel size: area-mean of nucleus and surrounding light
        ident = np.zeros((height, width), np.int32)
        kind = np.zeros((height, width), np.int64)
        cov = _COVERAGE[cls][..., None]
        conc = concentrations(c_h, c_e)
        nuc_conc = concentrations(_DARKNESS[cls] + np.float32(0.5) * c_h, np.float32(0.45) * c_e)
        light = cov * transmitted(nuc_conc) + (1 - cov) * transmitted(conc)
    image = np.clip(np.rint(np.float32(255.0) * light), 0, 255).astype(np.uint8)
    out = {"image": image, "mask": cls.astype(np.int64), "instances": ident, "nuclei_type": kind}
    if return_concentrations:
        out["concentrations"] = conc
    return out


# ---------------------------------------------------------------------------------------------
# dataset

_SPLITS = {"train": 0, "val": 1, "test": 2}
_STRIDE = 4096  # px between image origins: far apart relative to the 280 µm class fields


def _relabel(instances: np.ndarray) -> np.ndarray:
    ids, inv = np.unique(instances, return_inverse=True)
    out = inv.reshape(instances.shape).astype(np.int32)
    if ids[0] != 0:
        out += 1
    return out


@DATASETS.register("synthetic")
class SyntheticHE(SegmentationDataset):
    """Synthetic H&E tiles from :func:`render_region`: no files, deterministic, multi-centre.

    ``task="tissue"``: 5-class mask (``CLASS_NAMES``), ``labels`` = which classes are present.
    ``task="nuclei"``: 2-class mask (background, nucleus), ``instances`` 1..N, ``labels`` = which
    nucleus types (tumour, lymphocyte, fibroblast, apoptotic) are present.
    Image ``i`` comes from centre ``i % n_centres`` (``meta["source"] = "centre-<k>"``). The splits
    draw from disjoint bands of the virtual slide, and each image's region is chosen so it is not
    mostly bare glass.

    Example:
        >>> ds = SyntheticHE(n_images=4, size=64)
        >>> s = ds[0]; s["image"].shape, s["meta"]["source"]
        ((64, 64, 3), 'centre-0')
    """

    name = "synthetic"
    class_names = CLASS_NAMES
    download_hint = "The synthetic dataset needs no files."

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        *,
        n_images: int = 24,
        size: int = 256,
        seed: int = 0,
        task: str = "tissue",
        n_centres: int = 3,
        mpp: float = 0.5,
        split: str = "train",
    ) -> None:
        if task not in ("tissue", "nuclei"):
            raise ConfigError(f"synthetic: task must be 'tissue' or 'nuclei', got {task!r}")
        if split not in _SPLITS:
            raise ConfigError(f"synthetic: split must be one of {list(_SPLITS)}, got {split!r}")
        if n_images < 1 or size < 8 or n_centres < 1 or not mpp > 0:
            raise ConfigError(
                f"synthetic: need n_images ≥ 1, size ≥ 8, n_centres ≥ 1 and mpp > 0; "
                f"got n_images={n_images}, size={size}, n_centres={n_centres}, mpp={mpp}"
            )
        self.root = None  # type: ignore[assignment]
        self.n_images, self.size, self.seed, self.task = int(n_images), int(size), int(seed), task
        self.n_centres, self.mpp, self.split = int(n_centres), float(mpp), split
        self.class_names = list(CLASS_NAMES) if task == "tissue" else ["background", "nucleus"]
        self.label_names = list(CLASS_NAMES) if task == "tissue" else NUCLEUS_TYPES[1:]
        self.ids = [f"synthetic-{split}-{i:04d}" for i in range(self.n_images)]
        self.sources = [f"centre-{i % self.n_centres}" for i in range(self.n_images)]
        self._origins = [self._origin(i) for i in range(self.n_images)]

    def _origin(self, i: int) -> tuple[int, int]:
        band = _SPLITS[self.split] * (1 << 21)
        key = _key(self.seed, 41, _SPLITS[self.split])
        for attempt in range(32):
            h = _hash2(key, np.array([i]), np.array([attempt]))
            x = int(i * _STRIDE + _unit(h, 1)[0] * (_STRIDE - self.size))
            y = int(band + attempt * _STRIDE + _unit(h, 2)[0] * (_STRIDE - self.size))
            # keep regions that are not mostly bare glass (checked on a coarse 8x8 grid)
            pts = (np.arange(8) + 0.5) * self.size / 8
            pu, pv = np.meshgrid((x + pts) * self.mpp, (y + pts) * self.mpp)
            _, glass = _class_map(_noise_points, pu.ravel(), pv.ravel(), self.seed)
            if glass.mean() < 0.5:
                break
        return x, y

    def labels(self, i: int) -> np.ndarray:
        """Image-level labels of image ``i`` without rendering its pixels (tissue task)."""
        if self.task == "nuclei":
            return self.load(i)["labels"]
        x, y = self._origins[i]
        mask = render_mask(x, y, self.size, self.size, seed=self.seed, mpp=self.mpp)
        return np.isin(np.arange(len(CLASS_NAMES)), np.unique(mask)).astype(np.float32)

    def load(self, i: int) -> Sample:
        x, y = self._origins[i]
        centre = i % self.n_centres
        r = render_region(x, y, self.size, self.size, seed=self.seed, centre=centre, mpp=self.mpp)
        if self.task == "tissue":
            mask = r["mask"]
            instances = _relabel(r["instances"])  # nuclei come with the tissue task too
            labels = np.isin(np.arange(len(CLASS_NAMES)), np.unique(mask)).astype(np.float32)
        else:
            instances = _relabel(r["instances"])
            mask = (instances > 0).astype(np.int64)
            labels = np.isin(np.arange(1, len(NUCLEUS_TYPES)), np.unique(r["nuclei_type"])).astype(np.float32)
        return make_sample(
            r["image"], mask, id=self.ids[i], instances=instances, labels=labels,
            source=f"centre-{centre}", mpp=self.mpp, num_classes=self.num_classes,
        )


def write_synthetic_images(
    out_dir: str | os.PathLike, n: int = 24, size: int = 256, seed: int = 0, task: str = "tissue"
) -> Path:
    """Write a :class:`SyntheticHE` train split as files, each written atomically.

    Layout: ``images/<id>.png`` (RGB), ``masks/<id>.png`` (8-bit class index),
    ``instances/<id>.png`` (16-bit nucleus ids 1..N), ``labels.csv`` (``id`` then one 0/1 column
    per label name, plus ``source``). Returns ``out_dir``.
    """
    from pathseg.io.files import write_image, write_text

    out = Path(out_dir)
    ds = SyntheticHE(n_images=n, size=size, seed=seed, task=task)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", *ds.label_names, "source"])
    for i in range(len(ds)):
        s = ds[i]
        sid = s["meta"]["id"]
        write_image(out / "images" / f"{sid}.png", s["image"])
        write_image(out / "masks" / f"{sid}.png", s["mask"].astype(np.uint8))
        inst = s["instances"]
        if inst.max() > 65535:
            raise ConfigError(f"{sid}: {inst.max()} nuclei do not fit a 16-bit instance PNG; use a smaller size")
        write_image(out / "instances" / f"{sid}.png", inst.astype(np.uint16))
        w.writerow([sid, *[int(x) for x in s["labels"]], s["meta"]["source"]])
    write_text(out / "labels.csv", buf.getvalue())
    return out


# ---------------------------------------------------------------------------------------------
# whole-slide writer


def _level_sizes(size_px: tuple[int, int], levels: int | None) -> list[tuple[int, int]]:
    w, h = size_px
    sizes = [(w, h)]
    while (levels is None and max(sizes[-1]) >= 1024) or (levels is not None and len(sizes) < levels):
        pw, ph = sizes[-1]
        if min(pw, ph) < 2:
            break
        sizes.append(((pw + 1) // 2, (ph + 1) // 2))
    return sizes


def _tiles(width: int, height: int, tile: int, fn) -> Any:
    """Yield full ``tile``-sized tiles in row-major order, rendered by ``fn(x, y, w, h)`` on a few
    threads (numpy releases the GIL) with a bounded look-ahead, so memory stays a few tiles."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    def job(tx: int, ty: int) -> np.ndarray:
        w, h = min(tile, width - tx), min(tile, height - ty)
        t = fn(tx, ty, w, h)
        if (w, h) != (tile, tile):  # TIFF tiles are full size; pad the edge ones
            pad = np.zeros((tile, tile) + t.shape[2:], t.dtype)
            pad[:h, :w] = t
            t = pad
        return t

    coords = [(tx, ty) for ty in range(0, height, tile) for tx in range(0, width, tile)]
    workers = max(1, min(4, (os.cpu_count() or 1)))
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for xy in coords:
            pending.append(pool.submit(job, *xy))
            if len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def write_synthetic_slide(
    path: str | os.PathLike,
    size_px: int | tuple[int, int],
    *,
    mpp: float = 0.5,
    seed: int = 0,
    tile: int = 512,
    levels: int | None = None,
    centre: int = 0,
    truth_path: str | os.PathLike | None = None,
    compression: str = "zlib",
) -> Path:
    """Write a pyramidal, tiled BigTIFF whole-slide image of the virtual slide, tile by tile.

    ``size_px`` is the level-0 size (an int for a square slide, or ``(width, height)``). Level 0
    is ``render_region(0, 0, width, height, seed=seed, centre=centre, mpp=mpp)["image"]`` exactly
    (with the default lossless ``compression="zlib"``; ``"zstd"`` is lossless and faster to read
    with OpenSlide/tifffile but not every TIFF reader has it; ``"jpeg"`` is small but lossy).
    Each further level halves the size (rounding up) until the longer side is below 1024 px (or
    ``levels`` levels in all). Level k is **rendered at mpp·2^k** (not downsampled from level 0):
    each level-k pixel samples the centre of its 2^k × 2^k block of level 0, so geometry and
    classes line up across levels, but fine texture is point-sampled rather than averaged. The
    pyramid costs about 1.33× level 0, tiles are rendered on up to 4 threads, and no more than a
    few tiles are in memory at once (a 32k × 32k slide streams).

    The layout is Aperio-like, so OpenSlide and tifffile both read the pyramid and the MPP: page 0
    is level 0, page 1 a stripped thumbnail, pages 2.. the other levels; the ImageDescription
    starts with ``Aperio`` and holds ``|MPP = <mpp>``; XResolution/YResolution are set in pixels
    per centimetre.

    ``truth_path`` (optional) gets the tissue class map (``CLASS_NAMES`` indices, uint8) of level
    0: a ``.npy`` file (for small slides), or a tiled pyramidal TIFF with the same tile size and
    levels, where level k holds the class at the centre sample of each level-k pixel (the class
    map rendered at ``mpp·2^k``).

    Example:
        >>> p = write_synthetic_slide(tmp / "s.tiff", 2048, mpp=0.5)        # doctest: +SKIP
        >>> openslide.OpenSlide(p).properties["openslide.mpp-x"]            # doctest: +SKIP
        '0.5'
    """
    import tifffile

    width, height = (size_px, size_px) if isinstance(size_px, (int, np.integer)) else (int(size_px[0]), int(size_px[1]))
    if width < 1 or height < 1:
        raise ConfigError(f"write_synthetic_slide: size must be ≥ 1 px, got {width}x{height}")
    if tile % 16 or tile < 16:
        raise ConfigError(f"write_synthetic_slide: tile must be a multiple of 16 px (TIFF), got {tile}")
    if not mpp > 0:
        raise ConfigError(f"write_synthetic_slide: mpp must be > 0, got {mpp}")
    if levels is not None and levels < 1:
        raise ConfigError(f"write_synthetic_slide: levels must be ≥ 1 or None, got {levels}")
    path = Path(path)
    sizes = _level_sizes((width, height), levels)
    from pathseg.io.files import atomic_path

    comp = None if compression in (None, "none") else compression
    cargs = {"level": 1} if comp in ("zlib", "zstd") else None  # fast; zlib level 6 costs more than rendering
    desc = (
        f"Aperio Image Library v12.0.0 pathseg synthetic\r\n{width}x{height} [0,0 {width}x{height}] "
        f"({tile}x{tile}) {str(comp).upper()}/RGB|AppMag = {10.0 / mpp:g}|MPP = {mpp:g}|seed = {seed}|centre = {centre}"
    )
    thumb_f = max(1, int(np.ceil(max(width, height) / 768)))
    tw, th = max(1, width // thumb_f), max(1, height // thumb_f)

    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
            for k, (lw, lh) in enumerate(sizes):
                lmpp = mpp * 2**k
                fn = lambda tx, ty, w, h, lmpp=lmpp: render_region(tx, ty, w, h, seed=seed, centre=centre, mpp=lmpp)["image"]
                kw: dict[str, Any] = {}
                if k == 0:
                    kw["description"] = desc
                tif.write(
                    _tiles(lw, lh, tile, fn), shape=(lh, lw, 3), dtype=np.uint8, tile=(tile, tile),
                    photometric="rgb", compression=comp, compressionargs=cargs, resolution=(1e4 / lmpp, 1e4 / lmpp),
                    resolutionunit="CENTIMETER", metadata=None, **kw,
                )
                if k == 0:  # Aperio puts a stripped thumbnail second
                    thumb = render_region(0, 0, tw, th, seed=seed, centre=centre, mpp=mpp * thumb_f)["image"]
                    tif.write(thumb, photometric="rgb", compression=comp, compressionargs=cargs, metadata=None,
                              description="Aperio thumbnail pathseg synthetic")
    if truth_path is not None:
        _write_truth(Path(truth_path), sizes, tile, seed=seed, mpp=mpp, compression=comp if comp != "jpeg" else "zlib")
    return path


def _write_truth(path: Path, sizes, tile, *, seed, mpp, compression) -> Path:
    import tifffile

    from pathseg.io.files import atomic_path

    w0, h0 = sizes[0]
    if path.suffix.lower() == ".npy":
        if w0 * h0 > 16384 * 16384:
            raise ConfigError(f"truth map {w0}x{h0} is too large for .npy; give truth_path a .tif/.tiff suffix")
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, render_mask(0, 0, w0, h0, seed=seed, mpp=mpp).astype(np.uint8))
        return path
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
            for k, (lw, lh) in enumerate(sizes):
                lmpp = mpp * 2**k
                fn = lambda tx, ty, w, h, lmpp=lmpp: render_mask(tx, ty, w, h, seed=seed, mpp=lmpp).astype(np.uint8)
                tif.write(
                    _tiles(lw, lh, tile, fn), shape=(lh, lw), dtype=np.uint8, tile=(tile, tile),
                    photometric="minisblack", compression=compression, metadata=None,
                    compressionargs={"level": 1} if compression in ("zlib", "zstd") else None,
                    resolution=(1e4 / lmpp, 1e4 / lmpp), resolutionunit="CENTIMETER",
                    subfiletype=1 if k else 0,
                    description=f"pathseg synthetic truth: {', '.join(CLASS_NAMES)}|MPP = {lmpp:g}" if k == 0 else None,
                )
    return path
