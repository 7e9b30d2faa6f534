"""Whole-slide images of the virtual slide: a pyramidal BigTIFF in the Aperio layout and, optionally, its
truth map, both through the one pyramid writer (:func:`pathseg.io.pyramid.write_pyramid`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pathseg.data.synth.render import render_region
from pathseg.data.synth.tissue import CLASS_NAMES, render_mask
from pathseg.errors import ConfigError
from pathseg.io.files import atomic_path
from pathseg.io.pyramid import write_pyramid


def _level_sizes(size_px: tuple[int, int], levels: int | None) -> list[tuple[int, int]]:
    w, h = size_px
    sizes = [(w, h)]
    while (levels is None and max(sizes[-1]) >= 1024) or (levels is not None and len(sizes) < levels):
        pw, ph = sizes[-1]
        if min(pw, ph) < 2:
            break
        sizes.append(((pw + 1) // 2, (ph + 1) // 2))
    return sizes


def _threads() -> int:
    """Tile-rendering threads: up to 4 (numpy releases the GIL while rendering)."""
    return max(1, min(4, (os.cpu_count() or 1)))


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
    comp = None if compression in (None, "none") else compression
    level = 1 if comp in ("zlib", "zstd") else None  # fast; zlib level 6 costs more than rendering
    desc = (
        f"Aperio Image Library v12.0.0 pathseg synthetic\r\n{width}x{height} [0,0 {width}x{height}] "
        f"({tile}x{tile}) {str(comp).upper()}/RGB|AppMag = {10.0 / mpp:g}|MPP = {mpp:g}|seed = {seed}|centre = {centre}"
    )
    thumb_f = max(1, int(np.ceil(max(width, height) / 768)))
    tw, th = max(1, width // thumb_f), max(1, height // thumb_f)
    thumb = render_region(0, 0, tw, th, seed=seed, centre=centre, mpp=mpp * thumb_f)["image"]

    def rgb(k: int, x: int, y: int, w: int, h: int) -> np.ndarray:  # level k is rendered at mpp * 2^k
        return render_region(x, y, w, h, seed=seed, centre=centre, mpp=mpp * 2**k)["image"]

    write_pyramid(path, rgb, mpp=mpp, tile=tile, shapes=[(h, w) for w, h in sizes], channels=3, description=desc,
                  compression=comp, compression_level=level, layout="aperio", thumbnail=thumb,
                  thumbnail_description="Aperio thumbnail pathseg synthetic", threads=_threads())
    if truth_path is not None:
        _write_truth(Path(truth_path), sizes, tile, seed=seed, mpp=mpp, compression=comp if comp != "jpeg" else "zlib")
    return path


def _write_truth(path: Path, sizes, tile, *, seed, mpp, compression) -> Path:
    w0, h0 = sizes[0]
    if path.suffix.lower() == ".npy":
        if w0 * h0 > 16384 * 16384:
            raise ConfigError(f"truth map {w0}x{h0} is too large for .npy; give truth_path a .tif/.tiff suffix")
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, render_mask(0, 0, w0, h0, seed=seed, mpp=mpp).astype(np.uint8))
        return path

    def classes(k: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        return render_mask(x, y, w, h, seed=seed, mpp=mpp * 2**k).astype(np.uint8)

    return write_pyramid(path, classes, mpp=mpp, tile=tile, shapes=[(h, w) for w, h in sizes],
                         description=f"pathseg synthetic truth: {', '.join(CLASS_NAMES)}|MPP = {mpp:g}",
                         compression=compression, compression_level=1 if compression in ("zlib", "zstd") else None,
                         threads=_threads())
