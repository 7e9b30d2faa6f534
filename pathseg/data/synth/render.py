"""Rendering a window of the virtual slide: tissue textures, fibres, fat, nuclei, and the stains through
Beer-Lambert absorption."""

from __future__ import annotations

import numpy as np

from pathseg.data.synth.noise import _hash2, _key, _noise_grid, _unit
from pathseg.data.synth.nuclei import _COVERAGE, _DARKNESS, NUCLEI_MAX_MPP, _draw_nuclei
from pathseg.data.synth.stains import centre_stains
from pathseg.data.synth.tissue import BG, NECROSIS, STROMA, _check_window, _class_map, _coords, _fibre_angles, \
    _fibre_weight

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
