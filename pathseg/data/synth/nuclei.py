"""Nuclei: candidates on two hashed jittered grids, kept by the tissue class at their centre, drawn with a
hashed priority so overlaps do not depend on the window."""

from __future__ import annotations

import numpy as np

from pathseg.data.synth.noise import _U, _hash2, _key, _noise_points, _unit
from pathseg.data.synth.tissue import CLASS_NAMES, INFLAM, NECROSIS, STROMA, TUMOUR, _class_map, _fibre_angles, \
    _fibre_weight

NUCLEUS_TYPES = ["none", "tumour", "lymphocyte", "fibroblast", "apoptotic"]
"""Values of ``nuclei_type`` (0 = no nucleus)."""

_N_TUMOUR, _N_LYMPH, _N_FIBRO, _N_APOP = 1, 2, 3, 4

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
