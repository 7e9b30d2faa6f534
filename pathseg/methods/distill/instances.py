"""Nuclei instances from a binary mask, and per-nucleus patches at several resolutions.

As in Háberová et al.: nuclei are the connected components of the segmenter's binary output,
optionally with touching nuclei split by a marker watershed on the distance transform:

1. ``d`` = Euclidean distance of each nucleus pixel to the background (cv2, exact 5x5 mask);
2. markers = plateaus of local maxima of ``d`` over a (2r+1)^2 window (r = ``peak_radius``) with
   ``d >= min_peak``; a component without such a peak keeps itself as one marker;
3. the markers flood ``-d`` inside the mask (``scipy.ndimage.watershed_ift``), so a neck between two
   blobs, where ``d`` dips, becomes the boundary.

Patches are ``size`` x ``size`` (16 or 32 px) crops centred on each nucleus centroid, cut from the
image resized by each of ``scales`` (1, 1/2, 1/4: the same size shows 1x, 2x and 4x the context),
zero-padded outside the image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pathseg.errors import ConfigError


def label_instances(
    binary: np.ndarray,
    *,
    split_touching: bool = False,
    min_size: int = 4,
    peak_radius: int = 3,
    min_peak: float = 2.0,
    connectivity: int = 8,
) -> np.ndarray:
    """Instance map (0 = background, 1..N) of a binary nuclei mask.

    Components smaller than ``min_size`` pixels are dropped. Ids are numbered in raster order of
    each instance's first pixel.

    Shape:
        binary (H, W) bool/int -> int32 (H, W).

    Example:
        >>> m = np.zeros((5, 9), bool); m[1:4, 1:4] = m[1:4, 5:8] = True
        >>> int(label_instances(m).max())
        2
    """
    import cv2

    if connectivity not in (4, 8):
        raise ConfigError(f"label_instances: connectivity must be 4 or 8, got {connectivity}")
    mask = np.asarray(binary) > 0
    if mask.ndim != 2:
        raise ConfigError(f"label_instances: expected a 2-D mask, got shape {mask.shape}")
    n, cc = cv2.connectedComponents(mask.astype(np.uint8), connectivity=connectivity, ltype=cv2.CV_32S)
    if split_touching and n > 1:
        cc = _watershed_split(mask, cc, peak_radius=peak_radius, min_peak=min_peak)
    return _clean(cc, min_size)


def _watershed_split(mask: np.ndarray, cc: np.ndarray, *, peak_radius: int, min_peak: float) -> np.ndarray:
    import cv2
    from scipy import ndimage as ndi

    dist = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    size = 2 * int(peak_radius) + 1
    peaks = mask & (dist >= ndi.maximum_filter(dist, size=size)) & (dist >= min_peak)
    markers, n_peaks = ndi.label(peaks, structure=np.ones((3, 3)))
    # a component with no peak keeps itself as one marker
    has = np.zeros(cc.max() + 1, bool)
    has[np.unique(cc[peaks])] = True
    lone = (cc > 0) & ~has[cc]
    markers = markers.astype(np.int32)
    markers[lone] = (n_peaks + cc[lone]).astype(np.int32)
    markers[~mask] = -1  # background marker: the flood never leaves the mask
    dmax = float(dist.max()) or 1.0
    relief = np.round((1.0 - dist / dmax) * 65534).astype(np.uint16)
    ws = ndi.watershed_ift(relief, markers)
    ws[~mask] = 0
    return np.maximum(ws, 0).astype(np.int32)


def _clean(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Drop components under ``min_size`` px and renumber 1..N in raster order of first pixel."""
    flat = labels.ravel()
    ids, first, counts = np.unique(flat, return_index=True, return_counts=True)
    keep = (ids > 0) & (counts >= max(1, min_size))
    order = ids[keep][np.argsort(first[keep])]
    lut = np.zeros(int(ids.max()) + 1 if ids.size else 1, np.int32)
    lut[order] = np.arange(1, order.size + 1, dtype=np.int32)
    return lut[labels]


def instance_centroids(instances: np.ndarray) -> np.ndarray:
    """Centroid (y, x) in pixels of every instance 1..N (row i is instance i+1).

    Shape:
        instances (H, W) int -> float64 (N, 2).
    """
    from scipy import ndimage as ndi

    n = int(instances.max()) if instances.size else 0
    if n == 0:
        return np.zeros((0, 2))
    return np.asarray(ndi.center_of_mass(np.ones(instances.shape), instances, np.arange(1, n + 1)), np.float64)


def nucleus_patches(
    image: np.ndarray,
    centroids: np.ndarray,
    *,
    size: int = 32,
    scales: Sequence[float] = (1.0, 0.5, 0.25),
) -> np.ndarray:
    """``size`` x ``size`` crops centred on each centroid, from the image resized by each scale.

    The crop for centroid (y, x) at scale s starts at resized pixel ``floor(s·(y + 0.5)) - size//2``
    (the resized pixel that holds the centroid's pixel centre sits at ``size//2``). Pixels outside the image are 0.

    Shape:
        image (H, W, 3) uint8, centroids (N, 2) (y, x) -> uint8 (N, len(scales), size, size, 3).

    Example:
        >>> p = nucleus_patches(np.zeros((64, 64, 3), np.uint8), np.array([[10.0, 20.0]]), size=16)
        >>> p.shape
        (1, 3, 16, 16, 3)
    """
    import cv2

    if size < 2:
        raise ConfigError(f"nucleus_patches: size must be ≥ 2 px, got {size}")
    centroids = np.asarray(centroids, np.float64).reshape(-1, 2)
    out = np.zeros((len(centroids), len(scales), size, size, 3), np.uint8)
    h, w = image.shape[:2]
    for j, s in enumerate(scales):
        if not s > 0:
            raise ConfigError(f"nucleus_patches: scales must be > 0, got {s}")
        img = image if s == 1 else cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))),
                                              interpolation=cv2.INTER_AREA)
        padded = np.pad(img, ((size, size), (size, size), (0, 0)))
        for i, (cy, cx) in enumerate(centroids):
            y0 = int(np.floor((cy + 0.5) * s)) - size // 2 + size  # the resized pixel holding the centroid
            x0 = int(np.floor((cx + 0.5) * s)) - size // 2 + size
            out[i, j] = padded[y0:y0 + size, x0:x0 + size]
    return out
