"""Tissue detection at low resolution, so that tiles of bare glass are never read or predicted.

Two detectors, picked by name from :data:`TISSUE_DETECTORS` (fit/transform style: build with options,
then call ``detector(rgb) -> bool mask``):

* ``saturation`` (default): H&E stains are coloured and glass is not. A pixel is tissue when its HSV
  saturation is at least ``threshold`` (10%) of the maximum possible saturation. The threshold is on
  the absolute scale, not relative to the image's own maximum, so an empty slide gives an empty mask.
* ``otsu``: Otsu's threshold on the grey level (tissue darker than glass); for faint or grey stains.

Both then fill holes and apply a morphological opening (radius in µm) and drop specks smaller than
``min_area_um2``. :func:`detect_tissue` runs a detector on a slide at a coarse MPP (8 µm/px by default,
coarser when the slide is very large) and returns a :class:`TissueMask` that answers "what fraction of
this level-0 box is tissue?".

Example:
    >>> with open_slide(path) as slide:
    ...     tm = detect_tissue(slide, method="saturation")
    >>> tm.fraction, tm.box_fraction(0, 0, 1024, 1024)

Shape:
    detector(rgb (H, W, 3) uint8) -> (H, W) bool.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pathseg.errors import ConfigError
from pathseg.registry import Registry

TISSUE_DETECTORS: Registry = Registry("tissue detector")

#: Default resolution for tissue masks, and the largest mask side before it gets coarser.
TISSUE_MPP = 8.0
MAX_MASK_SIDE = 4096
MIN_MASK_SIDE = 1024


class TissueDetector:
    """Base: ``__call__(rgb) -> bool mask`` = ``clean(threshold(rgb))``."""

    def __init__(self, *, opening_um: float = 16.0, min_area_um2: float = 20000.0, fill_holes: bool = True,
                 mpp: float = TISSUE_MPP) -> None:
        if opening_um < 0 or min_area_um2 < 0:
            raise ConfigError("tissue detector: opening_um and min_area_um2 must be >= 0")
        self.opening_um, self.min_area_um2, self.fill_holes, self.mpp = opening_um, min_area_um2, fill_holes, mpp

    def threshold(self, rgb: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, rgb: np.ndarray, mpp: float | None = None) -> np.ndarray:
        mpp = mpp or self.mpp
        return self.clean(self.threshold(_rgb(rgb)), mpp)

    def clean(self, mask: np.ndarray, mpp: float) -> np.ndarray:
        """Fill holes, open with a disc of ``opening_um`` and drop components under ``min_area_um2``."""
        import cv2
        from scipy import ndimage

        mask = mask.astype(bool)
        if self.fill_holes:
            mask = ndimage.binary_fill_holes(mask)
        r = int(round(self.opening_um / mpp / 2))
        if r >= 1:
            k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
            mask = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, k).astype(bool)
        min_px = self.min_area_um2 / (mpp * mpp)
        if min_px >= 2 and mask.any():
            n, lab, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
            keep = np.zeros(n, bool)
            keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_px
            mask = keep[lab]
        return mask


class SaturationTissueDetector(TissueDetector):
    """Tissue where HSV saturation >= ``threshold`` x the maximum saturation (255)."""

    def __init__(self, threshold: float = 0.1, **kw: float) -> None:
        super().__init__(**kw)
        if not 0 < threshold < 1:
            raise ConfigError(f"saturation threshold must be in (0, 1), got {threshold}")
        self.threshold_fraction = threshold

    def threshold(self, rgb: np.ndarray) -> np.ndarray:
        import cv2

        s = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]
        return s >= self.threshold_fraction * 255


class OtsuTissueDetector(TissueDetector):
    """Tissue where the grey level is below Otsu's threshold (and the image is not uniform)."""

    def threshold(self, rgb: np.ndarray) -> np.ndarray:
        import cv2

        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        if int(grey.max()) - int(grey.min()) < 16:  # uniform: nothing to separate
            return np.zeros(grey.shape, bool)
        t, _ = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        return grey < t


TISSUE_DETECTORS.register("saturation", SaturationTissueDetector)
TISSUE_DETECTORS.register("otsu", OtsuTissueDetector)


def _rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] < 3 or img.dtype != np.uint8:
        raise ConfigError(f"tissue detection needs an (H, W, 3) uint8 RGB image, got {img.shape} {img.dtype}")
    return np.ascontiguousarray(img[..., :3])


@dataclass
class TissueMask:
    """A boolean mask at ``mpp`` covering the slide from level-0 (0, 0); ``scale`` = level-0 px per mask px."""

    mask: np.ndarray
    mpp: float
    scale: float
    method: str

    @property
    def fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    def box_fraction(self, x0: float, y0: float, w0: float, h0: float) -> float:
        """Tissue fraction of the level-0 box (x0, y0, w0, h0); outside the slide counts as glass."""
        s = self.scale
        mx0, my0 = int(np.floor(x0 / s)), int(np.floor(y0 / s))
        mx1, my1 = int(np.ceil((x0 + w0) / s)), int(np.ceil((y0 + h0) / s))
        area = max(mx1 - mx0, 1) * max(my1 - my0, 1)
        H, W = self.mask.shape
        sub = self.mask[max(my0, 0):max(min(my1, H), 0), max(mx0, 0):max(min(mx1, W), 0)]
        return float(sub.sum()) / area

    def any_in(self, x0: float, y0: float, w0: float, h0: float) -> bool:
        return self.box_fraction(x0, y0, w0, h0) > 0


def detect_tissue(slide, method: str = "saturation", *, mpp: float | None = None, **options: float) -> TissueMask:
    """Tissue mask of a slide at a coarse MPP.

    The default is 8 µm/px, finer for small images (so the mask's longer side is at least 1024 px) and
    coarser for huge ones (so it stays <= 4096 px).

    ``slide`` is a :class:`pathseg.io.slides.SlideReader`; a slide opened with ``require_mpp=False``
    and no MPP is masked at a fixed downsample instead (about 1/16 of level 0).
    """
    detector = TISSUE_DETECTORS.get(method)(**options)
    w0, h0 = slide.dimensions
    if slide.mpp is None:
        scale = max(16.0, max(w0, h0) / MAX_MASK_SIDE)
        level = max((i for i, d in enumerate(slide.level_downsamples) if d <= scale), default=0)
        d = slide.level_downsamples[level]
        lw, lh = slide.level_dimensions[level]
        import cv2

        img = slide.read_level_region(level, 0, 0, lw, lh)
        out = (max(1, int(np.ceil(w0 / scale))), max(1, int(np.ceil(h0 / scale))))
        img = cv2.resize(img, out, interpolation=cv2.INTER_AREA) if scale != d else img
        px_mpp = detector.mpp  # nominal, only for the morphology sizes
        return TissueMask(detector(img, px_mpp), mpp=float("nan"), scale=scale, method=method)
    if mpp is None:  # 8 µm/px, finer for small images (mask side >= MIN_MASK_SIDE), never finer than level 0
        mpp = max(slide.mpp, min(TISSUE_MPP, slide.mpp * max(w0, h0) / MIN_MASK_SIDE))
    mpp = max(mpp, slide.mpp * max(w0, h0) / MAX_MASK_SIDE)
    img = slide.read_all(mpp)
    return TissueMask(detector(img, mpp), mpp=mpp, scale=mpp / slide.mpp, method=method)
