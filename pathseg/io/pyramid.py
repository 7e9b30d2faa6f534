"""The one pyramidal-TIFF writer: label maps, probability maps, synthetic slides and their truth maps, streamed
tile by tile.

:func:`write_pyramid` writes a tiled BigTIFF, one page per level (level 0 first, each further level at half
the size), with the MPP of each level in the resolution tags (pixels per centimetre), atomically. Two layouts:

* ``"generic"`` (label and probability maps): every level after the first is marked "reduced resolution"
  (NewSubfileType 1), as the TIFF standard has it. OpenSlide reads it as ``generic-tiff`` (and reports
  ``openslide.mpp-x``), QuPath opens it, and tifffile/pathseg read it back as a pyramid.
* ``"aperio"`` (synthetic whole-slide images): level 0, an optional stripped thumbnail page, then the other
  levels, none marked reduced, as in an Aperio SVS file; with a description starting ``Aperio ... |MPP = <mpp>``
  OpenSlide reads it as ``aperio`` and tifffile as an SVS series (tifffile stops at a page marked reduced).

The pixels come from either

* an array (numpy, zarr, or any object with ``shape`` and 2-D slicing) of level 0, (H, W) or (H, W, 3):
  each level is produced tile by tile by nearest-neighbour subsampling of level 0 with step 2^k (labels must
  not be averaged), so only one tile is in memory at a time; or
* a renderer ``render(level, x, y, w, h)`` that draws the window of a level in that level's own pixels (a
  synthetic slide renders each level at its own MPP), with the level sizes given as ``shapes``.

Label maps are written as *palette* images (:func:`write_label_pyramid`): pixel values stay class indices
(read them back with tifffile to get the classes), and viewers show the class colours from the colour map.

Example:
    >>> write_label_pyramid("labels.tif", labels_zarr, mpp=0.5, colors=[[230, 230, 230], [220, 40, 60]])
    >>> write_pyramid("slide.tif", lambda k, x, y, w, h: rgb_at(k, x, y, w, h), mpp=0.5, channels=3,
    ...               shapes=[(4096, 4096), (2048, 2048)], layout="aperio", description="Aperio ...|MPP = 0.5")

Shape:
    source (H, W) or (H, W, C) uint8; a renderer returns (h, w) or (h, w, C) uint8.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pathseg.errors import ConfigError
from pathseg.io.files import atomic_path

#: ``render(level, x, y, w, h) -> (h, w[, C]) uint8``: a window of one level, in that level's pixels.
Renderer = Callable[[int, int, int, int, int], np.ndarray]

LAYOUTS = ("generic", "aperio")


def level_shapes(height: int, width: int, tile: int) -> list[tuple[int, int]]:
    """(H, W) of each level: halve (rounding up) until the level fits in one tile."""
    shapes = [(height, width)]
    while max(shapes[-1]) > tile:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


def subsampler(source: Any) -> Renderer:
    """A renderer over level 0 ``source``: level k is ``source[::2^k, ::2^k]`` (nearest, never averaged)."""
    H0, W0 = source.shape[:2]

    def render(level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        step = 2 ** level
        y0, x0 = y * step, x * step
        y1, x1 = min((y + h) * step, H0), min((x + w) * step, W0)
        return np.asarray(source[y0:y1:step, x0:x1:step]) if step > 1 else np.asarray(source[y0:y1, x0:x1])

    return render


def tile_stream(shape: tuple[int, int], tile: int, render: Callable[[int, int, int, int], np.ndarray], *,
                threads: int = 1) -> Iterator[np.ndarray]:
    """Full ``tile`` x ``tile`` tiles of a (H, W) level in row-major order, from ``render(x, y, w, h)``; edge
    tiles are zero-padded (TIFF tiles are full size). ``threads`` > 1 renders ahead on a pool (numpy releases
    the GIL) with a bounded look-ahead, so memory stays a few tiles; the order is the same either way."""
    height, width = shape

    def job(tx: int, ty: int) -> np.ndarray:
        w, h = min(tile, width - tx), min(tile, height - ty)
        t = render(tx, ty, w, h)
        if t.shape[:2] != (tile, tile):
            pad = np.zeros((tile, tile) + t.shape[2:], t.dtype)
            pad[:t.shape[0], :t.shape[1]] = t
            t = pad
        return t

    coords = [(tx, ty) for ty in range(0, height, tile) for tx in range(0, width, tile)]
    if threads <= 1:
        for xy in coords:
            yield job(*xy)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        pending: deque = deque()
        for xy in coords:
            pending.append(pool.submit(job, *xy))
            if len(pending) > 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def palette(colors: Sequence[Sequence[int]]) -> np.ndarray:
    """A (3, 256) uint16 TIFF colour map: class i gets colors[i], other values black."""
    cmap = np.zeros((3, 256), np.uint16)
    for i, c in enumerate(colors[:256]):
        cmap[:, i] = np.asarray(c[:3], np.uint16) * 257
    return cmap


def write_pyramid(path: str | os.PathLike, source: Any, *, mpp: float, tile: int = 512,
                  shapes: Sequence[tuple[int, int]] | None = None, channels: int | None = None,
                  colormap: np.ndarray | None = None, description: str | None = None,
                  compression: str | None = "zlib", compression_level: int | None = None,
                  layout: str = "generic", thumbnail: np.ndarray | None = None,
                  thumbnail_description: str | None = None, threads: int = 1) -> Path:
    """Write a uint8 image as a tiled pyramidal BigTIFF at ``path`` (atomically); returns ``path``.

    ``source``: level 0 as an array, or a :data:`Renderer` (then ``shapes`` is required). ``shapes``: (H, W)
    of each level, each half the one before (default :func:`level_shapes`); level k is written with an MPP of
    ``mpp * 2**k``. ``channels``: samples per pixel (default: the array's third axis, else 1; 3 is RGB).
    ``colormap`` (3, 256) uint16 makes it a palette image; otherwise it is greyscale or RGB.
    ``compression``: a tifffile codec name ("zlib", "zstd", "jpeg", None), ``compression_level`` its level
    (JPEG: quality). ``layout``: "generic" or "aperio" (see the module docstring); ``thumbnail`` (aperio only)
    is written as a stripped page after level 0 with ``thumbnail_description``. ``threads``: renderer threads.

    Example:
        >>> write_pyramid("probs.tif", probs_uint8, mpp=0.5, description="pathseg probability|MPP = 0.5")
    """
    import tifffile

    if tile % 16 or tile < 16:
        raise ConfigError(f"pyramid TIFF tiles must be a multiple of 16 px, got {tile}")
    if not mpp > 0:
        raise ConfigError(f"pyramid TIFF: mpp must be > 0 µm/px, got {mpp}")
    if layout not in LAYOUTS:
        raise ConfigError(f"pyramid TIFF layout must be one of {list(LAYOUTS)}, got {layout!r}")
    if thumbnail is not None and layout != "aperio":
        raise ConfigError("a thumbnail page belongs to the 'aperio' layout; pass layout='aperio' or no thumbnail")
    if callable(source) and not hasattr(source, "shape"):
        if shapes is None:
            raise ConfigError("write_pyramid: a renderer source needs shapes=[(H, W) of each level]")
        render: Renderer = source
        channels = channels or 1
    else:
        if shapes is None:
            shapes = level_shapes(*source.shape[:2], tile)
        render = subsampler(source)
        channels = channels or (int(source.shape[2]) if len(source.shape) > 2 else 1)
    shapes = [tuple(int(v) for v in s) for s in shapes]
    if colormap is not None:
        photometric: dict[str, Any] = dict(photometric="palette", colormap=colormap)
    else:
        photometric = dict(photometric="rgb" if channels == 3 else "minisblack")
    comp = None if compression in (None, "none") else compression
    cargs = {"level": compression_level} if compression_level is not None else None
    path = Path(path)
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
            for level, (h, w) in enumerate(shapes):
                res = 1e4 / (mpp * 2 ** level)  # pixels per centimetre
                kw: dict[str, Any] = dict(
                    shape=(h, w) if channels == 1 else (h, w, channels), dtype=np.uint8, tile=(tile, tile),
                    compression=comp, compressionargs=cargs, resolution=(res, res), resolutionunit="CENTIMETER",
                    metadata=None, **photometric,
                )
                if layout == "generic":
                    kw["subfiletype"] = 0 if level == 0 else 1
                if level == 0 and description:
                    kw["description"] = description
                tiles = tile_stream((h, w), tile, lambda x, y, w_, h_, level=level: render(level, x, y, w_, h_),
                                    threads=threads)
                tw.write(tiles, **kw)
                if level == 0 and thumbnail is not None:
                    tw.write(thumbnail, compression=comp, compressionargs=cargs, metadata=None,
                             description=thumbnail_description, **photometric)
    return path


def write_label_pyramid(path: str | os.PathLike, labels: Any, *, mpp: float, colors: Sequence[Sequence[int]],
                        class_names: Sequence[str] | None = None, tile: int = 512) -> Path:
    """A label map (class indices) as a palette pyramidal TIFF with the class colours."""
    desc = None
    if class_names is not None:
        classes = ", ".join(f"{i}={n}" for i, n in enumerate(class_names))
        desc = f"pathseg label map; classes: {classes}; MPP = {mpp:g}"
    return write_pyramid(path, labels, mpp=mpp, tile=tile, colormap=palette(colors), description=desc)


def read_level0(path: str | os.PathLike) -> np.ndarray:
    """Read level 0 of a pyramid written here (class indices for label maps)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return tif.series[0].levels[0].asarray()


__all__ = ["LAYOUTS", "Renderer", "level_shapes", "palette", "read_level0", "subsampler", "tile_stream",
           "write_label_pyramid", "write_pyramid"]
