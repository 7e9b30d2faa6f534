"""Whole-slide readers: one interface that reads a region at a requested resolution (µm per pixel).

Three backends sit behind :class:`SlideReader`, picked by :func:`open_slide` from the file:

* ``openslide`` -- Aperio SVS, Hamamatsu NDPI, MIRAX MRXS, Leica SCN, Ventana BIF, ... (the
  openslide-bin wheel ships the C library, JPEG 2000 included);
* ``tifffile`` -- pyramidal and plain TIFF / BigTIFF (levels as pages or SubIFDs, any compression
  imagecodecs decodes, palette and grey images are shown as RGB);
* ``pillow`` -- small plain images (PNG, JPEG, BMP), read once into memory.

MPP policy (:func:`resolve_mpp`): the resolution comes from the metadata; ``mpp_override`` replaces
it for one slide; a slide without MPP is refused (:class:`MPPError`, with the option to pass) unless an
override is given; an override more than 5% away from the metadata value gives a warning.

Coordinates: ``read_region(x0, y0, width, height, mpp=...)`` takes the top-left corner in level-0
pixels (floats allowed) and the output size in pixels at ``mpp``. The reader picks the coarsest
pyramid level that is at least as fine as ``mpp`` and resamples (area averaging when shrinking,
bilinear when enlarging). Regions outside the slide are padded white, as glass is.

Example:
    >>> with open_slide("CMU-1-Small-Region.svs") as s:
    ...     s.mpp, s.dimensions                       # (0.499, (2220, 2967))
    ...     tile = s.read_region(0, 0, 512, 512, mpp=1.0)   # (512, 512, 3) uint8 at 1 µm/px

Shape:
    read_region -> (height, width, 3) uint8 RGB.
"""

from __future__ import annotations

import math
import os
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pathseg.errors import MPPError, SlideError
from pathseg.registry import Registry

#: Suffixes that OpenSlide reads and tifffile/Pillow do not (or not as well).
OPENSLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".dcm")
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".ome.tif", ".ome.tiff", ".qptiff")
PILLOW_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
#: A TIFF bigger than this (pixels, level 0) counts as a slide even without a pyramid.
LARGE_IMAGE_PIXELS = 4096 * 4096
#: Warn when an override differs from the metadata MPP by more than this fraction.
MPP_TOLERANCE = 0.05
#: Larger level regions are shrunk band by band (memory stays ~ this many pixels x 3 bytes).
MAX_SOURCE_PIXELS = 8192 * 8192
#: TIFF levels up to this many pixels are decoded whole on first read and kept (plain tiles such as MoNuSeg's
#: 1000 x 1000 LZW strips: a 64 px read through zarr decodes ~1/3 of the strips; the whole image costs ~3x that).
#: Kept small: each DataLoader worker holds its own reader, so a large level would be decoded once per worker.
SMALL_LEVEL_PIXELS = 2048 * 2048
#: MPP values outside this range in resolution tags are taken as "not set" (72 dpi defaults etc.).
PLAUSIBLE_MPP = (0.05, 100.0)

READERS: Registry = Registry("slide backend")


@dataclass(frozen=True)
class SlideInfo:
    """What a reader knows about a slide, for records and error messages."""

    path: str
    backend: str
    dimensions: tuple[int, int]
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float | None
    metadata_mpp: float | None
    vendor: str | None


class SlideReader:
    """Base class. Subclasses fill the level geometry and implement :meth:`_read_level`.

    Readers are picklable (they reopen the file lazily), so DataLoader workers can each hold one.
    """

    backend = "base"

    def __init__(self, path: str | os.PathLike, *, mpp_override: float | None = None, require_mpp: bool = True) -> None:
        self.path = Path(path)
        self.mpp_override = mpp_override
        self.require_mpp = require_mpp
        if not self.path.is_file():
            raise SlideError(f"{self.path}: slide not found; check the path")
        self.level_dimensions: tuple[tuple[int, int], ...] = ()
        self.level_downsamples: tuple[float, ...] = ()
        self.metadata_mpp: float | None = None
        self.vendor: str | None = None
        self._lock = threading.Lock()
        self._open()
        self.mpp = resolve_mpp(self.path, self.metadata_mpp, mpp_override, require=require_mpp)

    # -- subclass hooks ---------------------------------------------------------------------------
    def _open(self) -> None:
        raise NotImplementedError

    def _read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Read (h, w, 3) uint8 at ``level`` with top-left (x, y) in that level's pixels, inside bounds."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    # -- pickling: reopen in the worker -------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "mpp_override": self.mpp_override, "require_mpp": self.require_mpp}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["path"], mpp_override=state["mpp_override"], require_mpp=state["require_mpp"])

    def __enter__(self) -> "SlideReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- geometry -----------------------------------------------------------------------------------
    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def level_mpp(self, level: int) -> float:
        return self._need_mpp() * self.level_downsamples[level]

    def size_at(self, mpp: float) -> tuple[int, int]:
        """(width, height) of the whole slide at ``mpp``, rounded up."""
        s = self._need_mpp() / mpp
        w, h = self.dimensions
        return max(1, math.ceil(w * s - 1e-6)), max(1, math.ceil(h * s - 1e-6))

    def best_level(self, mpp: float) -> int:
        """The coarsest level whose resolution is at least as fine as ``mpp`` (1% slack)."""
        factor = mpp / self._need_mpp()
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= factor * 1.01:
                best = i if d >= self.level_downsamples[best] else best
        return best

    def info(self) -> SlideInfo:
        return SlideInfo(str(self.path), self.backend, self.dimensions, self.level_dimensions,
                         self.level_downsamples, self.mpp, self.metadata_mpp, self.vendor)

    def _need_mpp(self) -> float:
        if self.mpp is None:
            raise MPPError(_missing_mpp_message(self.path))
        return self.mpp

    # -- reading ------------------------------------------------------------------------------------
    def read_level_region(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Read (h, w, 3) uint8 at ``level``, top-left (x, y) in that level's pixels; outside is white."""
        lw, lh = self.level_dimensions[level]
        out = np.full((h, w, 3), 255, np.uint8)
        ix0, iy0, ix1, iy1 = max(x, 0), max(y, 0), min(x + w, lw), min(y + h, lh)
        if ix1 > ix0 and iy1 > iy0:
            try:
                with self._lock:
                    part = self._read_level(level, ix0, iy0, ix1 - ix0, iy1 - iy0)
            except SlideError:
                raise
            except Exception as e:  # decoder errors come in many types
                raise SlideError(
                    f"{self.path}: cannot read level {level} region x={ix0} y={iy0} {ix1 - ix0}x{iy1 - iy0} "
                    f"({type(e).__name__}: {e}); the file may be truncated or corrupt"
                ) from e
            out[iy0 - y:iy1 - y, ix0 - x:ix1 - x] = part
        return out

    def read_region(self, x0: float, y0: float, width: int, height: int, *, mpp: float) -> np.ndarray:
        """Read ``width`` x ``height`` pixels at ``mpp`` whose top-left corner is (x0, y0) in level-0 pixels.

        Shape:
            returns (height, width, 3) uint8.
        """
        import cv2

        level = self.best_level(mpp)
        d = self.level_downsamples[level]
        f = mpp / (self._need_mpp() * d)  # output pixel size in level pixels (>= ~1)
        lx, ly = x0 / d, y0 / d
        bx0, by0 = int(round(lx)), int(round(ly))
        bx1, by1 = int(round(lx + width * f)), int(round(ly + height * f))
        if f > 1.5 and (bx1 - bx0) * (by1 - by0) > MAX_SOURCE_PIXELS and height > 1:
            # a big shrink from a level without a coarser one (plain TIFF): in bands, to bound memory
            band = max(1, int(MAX_SOURCE_PIXELS // max(1.0, (bx1 - bx0) * f)))
            parts = [self.read_region(x0, y0 + r * f * d, width, min(band, height - r), mpp=mpp)
                     for r in range(0, height, band)]
            return np.concatenate(parts, axis=0)
        box = self.read_level_region(level, bx0, by0, max(bx1 - bx0, 1), max(by1 - by0, 1))
        if box.shape[:2] == (height, width):
            return box
        interp = cv2.INTER_AREA if f > 1 else cv2.INTER_LINEAR
        return cv2.resize(box, (width, height), interpolation=interp)

    def read_all(self, mpp: float) -> np.ndarray:
        """The whole slide at ``mpp`` (use only for coarse resolutions: thumbnails, tissue masks)."""
        w, h = self.size_at(mpp)
        return self.read_region(0, 0, w, h, mpp=mpp)

    def thumbnail(self, max_size: int = 2048) -> tuple[np.ndarray, float]:
        """The whole slide with its longer side at most ``max_size``; returns (image, mpp of the image)."""
        w, h = self.dimensions
        mpp0 = self.mpp if self.mpp is not None else 1.0
        mpp = max(mpp0, mpp0 * max(w, h) / max_size)
        return self.read_all(mpp), mpp

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, {self.dimensions[0]}x{self.dimensions[1]}, mpp={self.mpp})"


# ------------------------------------------------------------------------------------------------
# MPP policy
# ------------------------------------------------------------------------------------------------

def _missing_mpp_message(path: Path) -> str:
    return (
        f"{path}: the slide metadata has no resolution (microns per pixel), so tiles cannot be read at a "
        f"physical scale. If you know it, pass it: `--slide-mpp 0.5` on the command line (pathseg predict, "
        f"tissue-mask, tile), or `mpp_override=0.5` in Python (about 0.25 for 40x scans, 0.5 for 20x)."
    )


def resolve_mpp(path: Path, metadata_mpp: float | None, override: float | None, *,
                require: bool = True) -> float | None:
    """Apply the MPP policy; returns the MPP to use (None only when ``require=False``)."""
    if override is not None:
        if not (override > 0 and math.isfinite(override)):
            raise MPPError(f"{path}: mpp_override must be a positive number of microns per pixel, got {override!r}")
        if metadata_mpp is not None and abs(override - metadata_mpp) > MPP_TOLERANCE * metadata_mpp:
            warnings.warn(
                f"{path}: mpp override {override:g} differs from the metadata value {metadata_mpp:g} by "
                f"{abs(override - metadata_mpp) / metadata_mpp:.0%} (more than {MPP_TOLERANCE:.0%}); "
                f"using the override",
                stacklevel=3,
            )
        return float(override)
    if metadata_mpp is None and require:
        raise MPPError(_missing_mpp_message(path))
    return metadata_mpp


def _plausible(mpp: float | None) -> float | None:
    if mpp is None or not math.isfinite(mpp) or not (PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1]):
        return None
    return float(mpp)


def tiff_resolution_mpp(page: Any) -> float | None:
    """MPP from a TIFF page's X/YResolution and ResolutionUnit (None when unset or implausible)."""
    tags = page.tags
    if "XResolution" not in tags or "ResolutionUnit" not in tags:
        return None
    num, den = tags["XResolution"].value
    unit = int(tags["ResolutionUnit"].value)
    if not num or not den:
        return None
    per_unit = num / den  # pixels per unit
    microns = {2: 25400.0, 3: 10000.0}.get(unit)  # inch, centimetre; 1 = no unit
    if microns is None:
        return None
    return _plausible(microns / per_unit)


def aperio_mpp(description: str) -> float | None:
    m = re.search(r"\bMPP\s*=\s*([0-9.eE+-]+)", description or "")
    return _plausible(float(m.group(1))) if m else None


# ------------------------------------------------------------------------------------------------
# Backends
# ------------------------------------------------------------------------------------------------

class OpenSlideReader(SlideReader):
    backend = "openslide"

    def _open(self) -> None:
        import openslide

        try:
            self._slide = openslide.OpenSlide(str(self.path))
        except openslide.OpenSlideUnsupportedFormatError as e:
            raise SlideError(f"{self.path}: OpenSlide does not recognise this format ({e})") from e
        except openslide.OpenSlideError as e:
            raise SlideError(f"{self.path}: OpenSlide cannot open this slide ({e}); "
                             f"it may be truncated or corrupt") from e
        s = self._slide
        self.level_dimensions = tuple(tuple(map(int, d)) for d in s.level_dimensions)  # type: ignore[misc]
        w0 = self.level_dimensions[0][0]
        self.level_downsamples = tuple(w0 / d[0] for d in self.level_dimensions)
        p = s.properties
        mx, my = p.get(openslide.PROPERTY_NAME_MPP_X), p.get(openslide.PROPERTY_NAME_MPP_Y)
        vals = [float(v) for v in (mx, my) if v not in (None, "")]
        self.metadata_mpp = _plausible(sum(vals) / len(vals)) if vals else None
        self.vendor = p.get(openslide.PROPERTY_NAME_VENDOR)

    def _read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        import openslide

        d = self._slide.level_downsamples[level]
        try:
            im = self._slide.read_region((int(round(x * d)), int(round(y * d))), level, (w, h))
        except openslide.OpenSlideError as e:
            raise SlideError(f"{self.path}: OpenSlide read failed at level {level} ({x}, {y}) ({e}); "
                             f"the file may be truncated or corrupt") from e
        rgba = np.asarray(im)
        rgb = rgba[..., :3].copy()
        rgb[rgba[..., 3] == 0] = 255  # transparent (no scanned data) is glass
        return rgb

    def close(self) -> None:
        if getattr(self, "_slide", None) is not None:
            self._slide.close()
            self._slide = None


class TiffSlideReader(SlideReader):
    """Pyramidal or plain TIFF through tifffile; levels read as zarr arrays (only the tiles needed)."""

    backend = "tifffile"

    def _open(self) -> None:
        import tifffile
        import zarr

        try:
            self._tif = tifffile.TiffFile(self.path)
            series = self._tif.series[0]
            levels = list(series.levels)
            self._arrays = [zarr.open_array(series.aszarr(level=i), mode="r") for i in range(len(levels))]
            self._whole: dict[int, np.ndarray] = {}  # small levels, decoded whole (SMALL_LEVEL_PIXELS)
        except Exception as e:
            raise SlideError(f"{self.path}: tifffile cannot open this TIFF ({type(e).__name__}: {e}); "
                             f"it may be truncated or corrupt") from e
        page = series.keyframe
        self._axes = series.axes
        self._photometric = int(page.photometric)
        self._colormap = None
        if self._photometric == 3 and page.colormap is not None:  # palette: show colours
            cm = np.asarray(page.colormap)
            self._colormap = (cm >> 8 if cm.max() > 255 else cm).astype(np.uint8).T  # (N, 3)
        if not (self._axes.endswith("YXS") or self._axes.endswith("YX")):
            raise SlideError(f"{self.path}: unsupported TIFF layout (axes {self._axes!r}); "
                             f"expected an RGB or grey image")
        dims = []
        for a in self._arrays:
            shape = a.shape
            h, w = (shape[-3], shape[-2]) if self._axes.endswith("YXS") else (shape[-2], shape[-1])
            dims.append((int(w), int(h)))
        self.level_dimensions = tuple(dims)
        self.level_downsamples = tuple(dims[0][0] / d[0] for d in dims)
        self.metadata_mpp = aperio_mpp(page.description) or tiff_resolution_mpp(page)
        self.vendor = "aperio" if (page.description or "").startswith("Aperio") else "generic-tiff"

    def _read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        a = self._arrays[level]
        lead = (0,) * (a.ndim - (3 if self._axes.endswith("YXS") else 2))
        lw, lh = self.level_dimensions[level]
        if lw * lh <= SMALL_LEVEL_PIXELS:  # small: decode the level once, then slice it
            if level not in self._whole:
                self._whole[level] = np.asarray(a[lead])
            return _to_rgb(self._whole[level][y:y + h, x:x + w], self._colormap)
        region = np.asarray(a[lead + (slice(y, y + h), slice(x, x + w))])
        return _to_rgb(region, self._colormap)

    def close(self) -> None:
        if getattr(self, "_tif", None) is not None:
            self._tif.close()
            self._tif = None
        self._whole = {}


class PillowReader(SlideReader):
    """A plain image, read into memory once (PNG, JPEG, BMP; small TIFFs also work)."""

    backend = "pillow"

    def _open(self) -> None:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None
        try:
            with Image.open(self.path) as im:
                im.load()
                dpi = im.info.get("dpi")
                self._image = np.asarray(im.convert("RGB"))
        except Exception as e:
            raise SlideError(f"{self.path}: Pillow cannot read this image ({type(e).__name__}: {e}); "
                             f"it may be truncated or corrupt") from e
        h, w = self._image.shape[:2]
        self.level_dimensions = ((w, h),)
        self.level_downsamples = (1.0,)
        self.metadata_mpp = _plausible(25400.0 / float(dpi[0])) if dpi and dpi[0] else None
        self.vendor = None

    def _read_level(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        return self._image[y:y + h, x:x + w]


def _to_rgb(region: np.ndarray, colormap: np.ndarray | None) -> np.ndarray:
    if region.ndim == 2:
        if colormap is not None:
            return colormap[region]
        if region.dtype != np.uint8:
            region = _to_uint8(region)
        return np.repeat(region[..., None], 3, axis=2)
    if region.dtype != np.uint8:
        region = _to_uint8(region)
    if region.shape[-1] == 1:
        return np.repeat(region, 3, axis=2)
    return np.ascontiguousarray(region[..., :3])


def _to_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.integer):
        return (a >> (8 * (a.dtype.itemsize - 1))).astype(np.uint8)
    return (np.clip(a, 0, 1) * 255).astype(np.uint8)


READERS.register("openslide", OpenSlideReader)
READERS.register("tifffile", TiffSlideReader)
READERS.register("pillow", PillowReader)


def backend_order(path: str | os.PathLike) -> list[str]:
    """The backends tried for ``path``, best first."""
    name = Path(path).name.lower()
    if name.endswith(OPENSLIDE_SUFFIXES):
        return ["openslide", "tifffile"]
    if name.endswith(TIFF_SUFFIXES):
        return ["tifffile", "openslide", "pillow"]
    if name.endswith(PILLOW_SUFFIXES):
        return ["pillow"]
    return ["openslide", "tifffile", "pillow"]


def open_slide(path: str | os.PathLike, *, mpp_override: float | None = None, backend: str = "auto",
               require_mpp: bool = True) -> SlideReader:
    """Open a slide with the best backend for its format (see the module docstring for the MPP policy).

    Raises :class:`SlideError` when no backend can read the file (the message lists each backend's
    reason) and :class:`MPPError` when the slide has no MPP and no override is given.
    """
    path = Path(path)
    if not path.exists():
        raise SlideError(f"{path}: slide not found; check the path")
    if path.is_dir():
        raise SlideError(f"{path}: is a folder, not a slide file (for MIRAX pass the .mrxs file beside its folder)")
    names = backend_order(path) if backend == "auto" else [backend]
    errors = []
    for name in names:
        cls = READERS.get(name)
        try:
            return cls(path, mpp_override=mpp_override, require_mpp=require_mpp)
        except MPPError:
            raise
        except SlideError as e:
            errors.append(f"{name}: {str(e).removeprefix(f'{path}: ')}")
    supported = ", ".join(OPENSLIDE_SUFFIXES + TIFF_SUFFIXES + PILLOW_SUFFIXES)
    raise SlideError(f"{path}: cannot open this slide. Tried " + "; ".join(errors) +
                     f". Supported formats: {supported}. If the file is complete, convert it to a pyramidal TIFF.")


def is_slide_file(path: str | os.PathLike) -> bool:
    """True for whole-slide formats (SVS, NDPI, MRXS, SCN, ...) and pyramidal or large TIFFs.

    Small plain images (PNG, JPEG, small single-level TIFFs) are tiles, not slides: False.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith(OPENSLIDE_SUFFIXES):
        return True
    if name.endswith(TIFF_SUFFIXES):
        try:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                if len(series.levels) > 1:
                    return True
                shape = series.shape
                axes = series.axes
                h, w = (shape[-3], shape[-2]) if axes.endswith("YXS") else (shape[-2], shape[-1])
                return int(h) * int(w) >= LARGE_IMAGE_PIXELS or bool(series.keyframe.is_tiled and h * w >= 2048 * 2048)
        except Exception:
            return False
    return False
