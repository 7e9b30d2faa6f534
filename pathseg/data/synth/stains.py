"""Stain vectors and intensities per acquisition centre (Beer-Lambert absorption model)."""

from __future__ import annotations

import numpy as np

from pathseg.data.synth.noise import _hash2, _key, _unit
from pathseg.errors import ConfigError


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
