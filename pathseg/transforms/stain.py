"""Stain tools: colour deconvolution, HED stain jitter, and stain normalisers picked by name.

Optical density follows Beer–Lambert with natural logarithms and white = 255:

    OD  = -ln(max(I, 1) / 255)            (per RGB channel, I in 0..255)
    OD  = C @ M                           (C: stain concentrations (N, k), M: stain vectors (k, 3))
    I   = 255 * exp(-OD)

``RUIFROK_HED`` holds the Ruifrok & Johnston (2001) hematoxylin, eosin and DAB/residual vectors,
each normalised to unit length. The synthetic H&E renderer (:mod:`pathseg.data.synth`) uses the
same functions, so a deconvolution of a synthetic image recovers its concentrations.

Stain normalisers follow fit/transform and live in the ``STAIN_NORMALIZERS`` registry:

    >>> norm = create_stain_normalizer("macenko").fit(target_rgb)   # doctest: +SKIP
    >>> out = norm.transform(tile_rgb)             # uint8 (H, W, 3)  # doctest: +SKIP

A normaliser fitted on too little tissue raises :class:`pathseg.errors.DataError`; with
``fallback="identity"`` ``transform`` returns a tile that has too little tissue unchanged instead.

A fitted Macenko normaliser travels in model checkpoints as ``state()`` (JSON-safe), so prediction
normalises new images to the training reference: :func:`normalizer_from_state` rebuilds it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pathseg.errors import ConfigError, DataError
from pathseg.registry import Registry
from pathseg.transforms.paired import TRANSFORMS

__all__ = [
    "RUIFROK_HED",
    "MIN_TISSUE_PIXELS",
    "MAX_STAIN_COS",
    "STAIN_NORMALIZERS",
    "rgb_to_od",
    "od_to_rgb",
    "rgb_to_hed",
    "hed_to_rgb",
    "HEDJitter",
    "MacenkoNormalizer",
    "ReinhardNormalizer",
    "StainNormalize",
    "create_stain_normalizer",
    "normalizer_from_state",
]

_RJ = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64)
RUIFROK_HED: np.ndarray = _RJ / np.linalg.norm(_RJ, axis=1, keepdims=True)
"""Rows: hematoxylin, eosin, DAB (the residual channel for H&E); unit-length OD vectors (R, G, B)."""
RUIFROK_HED.setflags(write=False)

MIN_TISSUE_PIXELS = 500
"""A stain normaliser needs at least this many tissue pixels (OD ≥ β in some channel) to fit."""

MAX_STAIN_COS = 0.999
"""Macenko cannot tell two stain vectors apart when their cosine exceeds this (H&E measures 0.75–0.96)."""

STAIN_NORMALIZERS: Registry = Registry("stain normaliser")

_OD_TABLE = -np.log(np.maximum(np.arange(256, dtype=np.float64), 1.0) / 255.0)
"""OD of each 8-bit value: the values :func:`rgb_to_od` computes, looked up instead of recomputed per pixel."""
_OD_TABLE.setflags(write=False)


def rgb_to_od(image: np.ndarray) -> np.ndarray:
    """Optical density of RGB pixels: ``-ln(max(I, 1) / 255)``.

    Shape:
        image: (..., 3) uint8 or float in 0..255  ->  (..., 3) float64, ≥ 0.
    """
    i = np.maximum(np.asarray(image, dtype=np.float64), 1.0)
    return -np.log(i / 255.0)


def od_to_rgb(od: np.ndarray) -> np.ndarray:
    """RGB uint8 from optical density: ``round(255 * exp(-OD))`` clipped to 0..255.

    Shape:
        od: (..., 3) float  ->  (..., 3) uint8.
    """
    return np.clip(np.rint(255.0 * np.exp(-np.asarray(od, dtype=np.float64))), 0, 255).astype(np.uint8)


def rgb_to_hed(image: np.ndarray, matrix: np.ndarray = RUIFROK_HED) -> np.ndarray:
    """Colour deconvolution: stain concentrations ``C`` with ``OD = C @ matrix``.

    Concentrations are not clipped, so :func:`hed_to_rgb` inverts this exactly (up to rounding
    of 8-bit pixels, and pixels of value 0, which read as 1).

    Shape:
        image: (H, W, 3) uint8; matrix: (3, 3) rows = stain OD vectors  ->  (H, W, 3) float64.

    Example:
        >>> img = np.full((2, 2, 3), 200, np.uint8)
        >>> int(np.abs(hed_to_rgb(rgb_to_hed(img)).astype(int) - 200).max()) <= 1
        True
    """
    od = rgb_to_od(image)
    return od @ np.linalg.inv(np.asarray(matrix, dtype=np.float64))


def hed_to_rgb(conc: np.ndarray, matrix: np.ndarray = RUIFROK_HED) -> np.ndarray:
    """Recompose RGB uint8 from stain concentrations (inverse of :func:`rgb_to_hed`).

    Shape:
        conc: (H, W, 3) float; matrix: (3, 3)  ->  (H, W, 3) uint8.
    """
    return od_to_rgb(np.asarray(conc, dtype=np.float64) @ np.asarray(matrix, dtype=np.float64))


@TRANSFORMS.register("hed_jitter")
class HEDJitter:
    """HED stain augmentation (Tellez et al. 2018): ``c' = α·c + β`` per stain channel.

    α ~ U(1−σ, 1+σ) and β ~ U(−σ, σ), drawn once per call for each of H, E and the residual channel.
    Only ``image`` changes; ``sigma=0`` is the identity up to 8-bit rounding.

    Example:
        >>> t = HEDJitter(sigma=0.05)
        >>> out = t({"image": np.full((8, 8, 3), 180, np.uint8)}, np.random.default_rng(0))
    """

    def __init__(self, sigma: float = 0.05, bias: float | None = None, p: float = 1.0) -> None:
        if sigma < 0:
            raise ConfigError(f"hed_jitter: sigma must be ≥ 0, got {sigma}")
        self.sigma = float(sigma)
        self.bias = float(sigma if bias is None else bias)
        self.p = float(p)

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        apply = rng.random() < self.p
        alpha = rng.uniform(1 - self.sigma, 1 + self.sigma, size=3)
        beta = rng.uniform(-self.bias, self.bias, size=3)
        if not apply or sample.get("image") is None:
            return sample
        out = dict(sample)
        conc = rgb_to_hed(sample["image"])
        out["image"] = hed_to_rgb(conc * alpha + beta)
        return out

    def __repr__(self) -> str:
        return f"HEDJitter(sigma={self.sigma}, bias={self.bias}, p={self.p})"


def _tissue_od(image: np.ndarray, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """All pixels' OD (N, 3) and the tissue ones (OD ≥ β in at least one channel).

    The often-copied rule "OD ≥ β in every channel" drops pale eosin-only pixels, whose red OD
    stays below β, and then both estimated stain vectors collapse toward hematoxylin.
    """
    od = rgb_to_od(np.asarray(image)[..., :3]).reshape(-1, 3)
    return od, od[np.any(od >= beta, axis=1)]


def _check_image(image: np.ndarray, who: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] < 3:
        raise DataError(f"{who}: expected an RGB image (H, W, 3), got shape {image.shape}")
    return image[..., :3]


def _check_fallback(fallback: str) -> str:
    if fallback not in ("raise", "identity"):
        raise ConfigError(f"stain normaliser fallback must be 'raise' or 'identity', got {fallback!r}")
    return fallback


def _matvec3(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``x @ m.T`` for (N, 3) ``x`` and (k, 3) ``m``, column by column (no BLAS threads)."""
    return np.stack([x[:, 0] * r[0] + x[:, 1] * r[1] + x[:, 2] * r[2] for r in m], axis=1)


def _pinv_rows(he: np.ndarray) -> np.ndarray:
    """The (2, 3) pseudo-inverse of ``he.T``: least-squares concentrations of OD rows are ``od @ result.T``."""
    return np.linalg.solve(he @ he.T, he)


def _stain_matrix_fast(tissue_od: np.ndarray, alpha: float) -> np.ndarray:
    """:meth:`MacenkoNormalizer.stain_matrix` with the covariance and projections written out (same steps)."""
    centred = tissue_od - tissue_od.mean(axis=0)
    cov = np.empty((3, 3))
    for i in range(3):
        for j in range(i, 3):
            cov[i, j] = cov[j, i] = (centred[:, i] * centred[:, j]).sum()
    cov /= tissue_od.shape[0] - 1
    _, vecs = np.linalg.eigh(cov)
    plane = vecs[:, [2, 1]]
    plane = plane * np.where(plane.sum(axis=0) < 0, -1.0, 1.0)
    proj = _matvec3(tissue_od, plane.T)
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [alpha, 100 - alpha])
    v_lo = plane @ np.array([np.cos(lo), np.sin(lo)])
    v_hi = plane @ np.array([np.cos(hi), np.sin(hi)])
    he = np.stack([v_lo, v_hi] if v_lo[0] > v_hi[0] else [v_hi, v_lo])
    he = np.maximum(he, 1e-6)
    return he / np.linalg.norm(he, axis=1, keepdims=True)


@STAIN_NORMALIZERS.register("macenko")
class MacenkoNormalizer:
    """Macenko et al. (2009) stain normalisation: fit on a target image, transform others to it.

    Both stain vectors are estimated from tissue pixels only: those whose OD is at least ``beta``
    in some channel (see :func:`_tissue_od`). The OD of these pixels is projected onto the plane of its two largest
    principal directions, and the stain vectors are the directions at the ``alpha`` and
    ``100 − alpha`` percentiles of the angle in that plane (the one with the larger red OD is
    hematoxylin). Concentrations come from least squares and are scaled so their 99th percentile
    matches the target's.

    An image with fewer than ``min_tissue_pixels`` tissue pixels raises
    :class:`pathseg.errors.DataError` in ``fit`` always, and in ``transform`` unless
    ``fallback="identity"``, which returns such a tile unchanged (typical for background tiles
    of a whole slide). So is a tile whose stains cannot be told apart, where the scaling would blow up
    (one colour only: uniform, black or grey-noise tiles): stain vectors with cosine above
    :data:`MAX_STAIN_COS`, or a stain whose 99th-percentile concentration is below ``beta`` (real
    H&E tiles measure ≥ 0.37 for either stain).

    Example:
        >>> norm = MacenkoNormalizer().fit(target)          # doctest: +SKIP
        >>> norm.transform(tile).shape == tile.shape        # doctest: +SKIP
        True
    """

    def __init__(
        self,
        beta: float = 0.15,
        alpha: float = 1.0,
        *,
        min_tissue_pixels: int = MIN_TISSUE_PIXELS,
        fallback: str = "raise",
        max_percentile: float = 99.0,
    ) -> None:
        self.beta, self.alpha = float(beta), float(alpha)
        self.min_tissue_pixels = int(min_tissue_pixels)
        self.fallback = _check_fallback(fallback)
        self.max_percentile = float(max_percentile)
        self.stain_matrix_: np.ndarray | None = None  # (2, 3): H, E
        self.max_conc_: np.ndarray | None = None  # (2,)
        self.reference: str | None = None  # what it was fitted on (an image id or path), for the record

    def _tissue(self, image: np.ndarray, who: str) -> tuple[np.ndarray, np.ndarray] | None:
        od, tissue = _tissue_od(_check_image(image, who), self.beta)
        if tissue.shape[0] < max(self.min_tissue_pixels, 3):
            return None
        return od, tissue

    def _too_little(self, image: np.ndarray, n: int, who: str) -> DataError:
        return DataError(
            f"{who}: only {n} tissue pixels (OD ≥ {self.beta} in some channel) in a "
            f"{image.shape[1]}x{image.shape[0]} image; Macenko needs at least {self.min_tissue_pixels}. "
            "Pick a tile with more tissue, or pass fallback='identity' to leave such tiles unchanged."
        )

    def stain_matrix(self, tissue_od: np.ndarray) -> np.ndarray:
        """Stain vectors (2, 3), hematoxylin first, from tissue OD (N, 3)."""
        cov = np.cov(tissue_od, rowvar=False)
        _, vecs = np.linalg.eigh(cov)  # ascending eigenvalues
        plane = vecs[:, [2, 1]]
        plane = plane * np.where(plane.sum(axis=0) < 0, -1.0, 1.0)  # point into positive OD
        proj = tissue_od @ plane
        phi = np.arctan2(proj[:, 1], proj[:, 0])
        lo, hi = np.percentile(phi, [self.alpha, 100 - self.alpha])
        v_lo = plane @ np.array([np.cos(lo), np.sin(lo)])
        v_hi = plane @ np.array([np.cos(hi), np.sin(hi)])
        he = np.stack([v_lo, v_hi] if v_lo[0] > v_hi[0] else [v_hi, v_lo])
        he = np.maximum(he, 1e-6)  # OD vectors are non-negative; clip estimation noise
        return he / np.linalg.norm(he, axis=1, keepdims=True)

    def _concentrations(self, od: np.ndarray, he: np.ndarray) -> np.ndarray:
        conc, *_ = np.linalg.lstsq(he.T, od.T, rcond=None)
        return conc.T  # (N, 2)

    def fit(self, target: np.ndarray, *, reference: str | None = None) -> "MacenkoNormalizer":
        """Estimate the target's stain vectors and 99th-percentile concentrations.

        ``reference`` names the target (image id or path); it is only recorded, in :meth:`state`.
        """
        self.reference = reference
        image = _check_image(target, "Macenko fit")
        got = self._tissue(image, "Macenko fit")
        if got is None:
            n = _tissue_od(image, self.beta)[1].shape[0]
            raise self._too_little(image, n, "Macenko fit target")
        od, tissue = got
        he = self.stain_matrix(tissue)
        conc = self._concentrations(tissue, he)
        self.stain_matrix_ = he
        self.max_conc_ = np.percentile(conc, self.max_percentile, axis=0)
        return self

    def transform(self, image: np.ndarray) -> np.ndarray:
        """Return ``image`` recoloured with the target's stains (uint8, same shape).

        The arithmetic of :meth:`fit` per tile, arranged for speed (about 10x on a 512 px tile, and no
        multi-threaded BLAS call to fight a model's threads for the cores): OD from a 256-entry table, the
        3x3 covariance and the projections written out, the least-squares concentrations through the 2x3
        pseudo-inverse, and OD -> concentrations -> target OD folded into one 3x3 map. Same results up
        to floating-point rounding (a pixel may differ by one 8-bit level, rarely).
        """
        if self.stain_matrix_ is None or self.max_conc_ is None:
            raise ConfigError("MacenkoNormalizer.transform was called before fit; call fit(target_image) first")
        image = _check_image(image, "Macenko transform")
        rgb = np.asarray(image, dtype=np.uint8).reshape(-1, 3)
        planes = [np.ascontiguousarray(rgb[:, c]) for c in range(3)]
        # OD >= beta in some channel <=> that channel's value is at most the last value whose OD is >= beta
        dark = int(np.count_nonzero(_OD_TABLE >= self.beta)) - 1
        is_tissue = (planes[0] <= dark) | (planes[1] <= dark) | (planes[2] <= dark)
        n_tissue = int(np.count_nonzero(is_tissue))
        if n_tissue < max(self.min_tissue_pixels, 3):
            if self.fallback == "identity":
                return np.array(image, dtype=np.uint8, copy=True)
            raise self._too_little(image, n_tissue, "Macenko transform tile")
        tissue = np.stack([_OD_TABLE[p[is_tissue]] for p in planes], axis=1)  # (M, 3)
        with np.errstate(all="ignore"):  # a one-colour tile gives a degenerate (even NaN) stain matrix
            he = _stain_matrix_fast(tissue, self.alpha)
        cos = float(he[0] @ he[1]) if np.isfinite(he).all() else 1.0
        if cos <= MAX_STAIN_COS:
            pinv = _pinv_rows(he)  # (2, 3): least-squares concentrations = OD @ pinv.T
            max_src = np.array([np.percentile(tissue[:, 0] * r[0] + tissue[:, 1] * r[1] + tissue[:, 2] * r[2],
                                              self.max_percentile) for r in pinv])
        else:
            max_src = np.zeros(2)
        if cos > MAX_STAIN_COS or max_src.min() < self.beta:  # one colour only: scaling would blow up
            if self.fallback == "identity":
                return np.array(image, dtype=np.uint8, copy=True)
            raise DataError(
                f"Macenko transform tile: its two stains cannot be told apart (stain vectors' cosine {cos:.4f}, "
                f"limit {MAX_STAIN_COS}; {self.max_percentile:g}th-percentile concentrations {np.round(max_src, 3)}, "
                f"need ≥ {self.beta}), as in a blank, one-colour or grey-noise tile; pass fallback='identity' to "
                "leave such tiles unchanged"
            )
        # target OD = OD @ pinv.T @ diag(max_conc / max_src) @ stain_matrix_  (one 3x3 map per tile)
        m = pinv.T @ np.diag(self.max_conc_ / max_src) @ self.stain_matrix_
        out = np.empty(rgb.shape, np.uint8)
        for c in range(3):
            od_c = (_OD_TABLE * m[0, c])[planes[0]]
            od_c += (_OD_TABLE * m[1, c])[planes[1]]
            od_c += (_OD_TABLE * m[2, c])[planes[2]]
            np.negative(od_c, out=od_c)
            np.exp(od_c, out=od_c)
            od_c *= 255.0
            np.rint(od_c, out=od_c)
            np.clip(od_c, 0, 255, out=od_c)
            out[:, c] = od_c
        return out.reshape(image.shape)

    def state(self) -> dict[str, Any]:
        """The fitted normaliser as JSON-safe values (stored in checkpoints and ONNX metadata).

        Example:
            >>> same = MacenkoNormalizer.from_state(norm.state())   # doctest: +SKIP
        """
        if self.stain_matrix_ is None or self.max_conc_ is None:
            raise ConfigError("MacenkoNormalizer.state was called before fit; call fit(target_image) first")
        return {"method": "macenko", "stain_matrix": self.stain_matrix_.tolist(), "max_conc": self.max_conc_.tolist(),
                "reference": self.reference, "beta": self.beta, "alpha": self.alpha,
                "min_tissue_pixels": self.min_tissue_pixels, "fallback": self.fallback,
                "max_percentile": self.max_percentile}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "MacenkoNormalizer":
        """A fitted normaliser from :meth:`state`; it transforms exactly as the one that wrote the state."""
        try:
            norm = cls(state["beta"], state["alpha"], min_tissue_pixels=state["min_tissue_pixels"],
                       fallback=state["fallback"], max_percentile=state["max_percentile"])
            norm.stain_matrix_ = np.asarray(state["stain_matrix"], dtype=np.float64).reshape(2, 3)
            norm.max_conc_ = np.asarray(state["max_conc"], dtype=np.float64).reshape(2)
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"Macenko state is incomplete or malformed ({type(e).__name__}: {e}); expected the dict "
                            "written by MacenkoNormalizer.state()") from e
        norm.reference = state.get("reference")
        return norm


@STAIN_NORMALIZERS.register("reinhard")
class ReinhardNormalizer:
    """Reinhard et al. (2001) colour transfer: match per-channel mean and std in CIE Lab.

    Statistics come from tissue pixels (OD ≥ ``beta`` in some channel) when there are at least
    ``min_tissue_pixels`` of them, else ``fit`` raises :class:`DataError` and ``transform``
    raises or, with ``fallback="identity"``, returns the tile unchanged.
    """

    def __init__(
        self, beta: float = 0.15, *, min_tissue_pixels: int = MIN_TISSUE_PIXELS, fallback: str = "raise"
    ) -> None:
        self.beta = float(beta)
        self.min_tissue_pixels = int(min_tissue_pixels)
        self.fallback = _check_fallback(fallback)
        self.mean_: np.ndarray | None = None
        self.std_: np.ndarray | None = None

    def _stats(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        import cv2

        lab = cv2.cvtColor(np.ascontiguousarray(image, dtype=np.uint8), cv2.COLOR_RGB2LAB).reshape(-1, 3)
        lab = lab.astype(np.float64)
        keep = np.any(rgb_to_od(image).reshape(-1, 3) >= self.beta, axis=1)
        if int(keep.sum()) < max(self.min_tissue_pixels, 2):
            return None
        sel = lab[keep]
        return lab, sel.mean(axis=0), sel.std(axis=0) + 1e-6

    def fit(self, target: np.ndarray) -> "ReinhardNormalizer":
        image = _check_image(target, "Reinhard fit")
        got = self._stats(image)
        if got is None:
            raise DataError(
                f"Reinhard fit target: fewer than {self.min_tissue_pixels} tissue pixels "
                f"(OD ≥ {self.beta} in some channel); pick a target image with more tissue"
            )
        _, self.mean_, self.std_ = got
        return self

    def transform(self, image: np.ndarray) -> np.ndarray:
        import cv2

        if self.mean_ is None or self.std_ is None:
            raise ConfigError("ReinhardNormalizer.transform was called before fit; call fit(target_image) first")
        image = _check_image(image, "Reinhard transform")
        got = self._stats(image)
        if got is None:
            if self.fallback == "identity":
                return np.array(image, dtype=np.uint8, copy=True)
            raise DataError(
                f"Reinhard transform tile: fewer than {self.min_tissue_pixels} tissue pixels; "
                "pass fallback='identity' to leave such tiles unchanged"
            )
        lab, mean, std = got
        out = (lab - mean) / std * self.std_ + self.mean_
        out = np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(image.shape)
        return cv2.cvtColor(out, cv2.COLOR_LAB2RGB)


def create_stain_normalizer(name: str, **kwargs: Any) -> Any:
    """Build a stain normaliser by registered name (``macenko``, ``reinhard``)."""
    return STAIN_NORMALIZERS.get(name)(**kwargs)


def normalizer_from_state(state: dict[str, Any] | None, source: Any, **override: Any) -> Any | None:
    """Rebuild the fitted normaliser a checkpoint stores as ``info["stain"]``; None when it stores none.

    ``source`` (the checkpoint path) names the file in errors; ``override`` replaces saved settings,
    e.g. ``fallback="identity"`` so prediction leaves background tiles unchanged.
    """
    if state is None:
        return None
    method = state.get("method") if isinstance(state, dict) else None
    known = [n for n in STAIN_NORMALIZERS.names() if hasattr(STAIN_NORMALIZERS.get(n), "from_state")]
    if method not in known:
        raise DataError(
            f"{source}: the model was trained with stain normalisation {method!r}, which this pathseg cannot "
            f"rebuild (it can: {', '.join(known)}); update pathseg, or predict without it with "
            "`pathseg predict --no-stain-norm` (expect worse results on differently stained images)"
        )
    try:
        return STAIN_NORMALIZERS.get(method).from_state({**state, **override})
    except DataError as e:
        raise DataError(f"{source}: {e}") from e


@TRANSFORMS.register("stain_normalize")
class StainNormalize:
    """Sample transform: normalise ``image`` toward a target with a fitted stain normaliser.

    ``target`` is an RGB array or an image path; ``method`` a ``STAIN_NORMALIZERS`` name. Tiles
    with too little tissue are left unchanged (``fallback="identity"``) unless told otherwise.
    Deterministic: draws nothing from ``rng``.
    """

    def __init__(self, target: Any, method: str = "macenko", fallback: str = "identity", **kwargs: Any) -> None:
        if isinstance(target, (str, bytes)) or hasattr(target, "__fspath__"):
            from pathseg.io.files import read_image

            target = read_image(target)
        self.normalizer = create_stain_normalizer(method, fallback=fallback, **kwargs).fit(target)
        self.method = method

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        if sample.get("image") is None:
            return sample
        out = dict(sample)
        out["image"] = self.normalizer.transform(sample["image"])
        return out

    def __repr__(self) -> str:
        return f"StainNormalize(method={self.method!r})"
