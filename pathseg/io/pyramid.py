"""Tiled pyramidal TIFF writer for label maps and probability maps, streamed tile by tile.

The file is a BigTIFF with one tiled page per level (level 0 first, then each level halved, as
"reduced resolution" pages), deflate-compressed, with the MPP in the resolution tags (centimetre
unit). OpenSlide reads it as ``generic-tiff`` (and reports ``openslide.mpp-x``), QuPath opens it, and
tifffile/pathseg read it back as a pyramid.

Label maps are written as *palette* images: pixel values stay class indices (read them back with
tifffile to get the classes), and viewers show the class colours from the colour map.

Memory: the source is any 2-D array that supports slicing (numpy, zarr); each level is produced tile
by tile from level 0 by nearest-neighbour subsampling (labels must not be averaged), so only one tile
is in memory at a time.

Example:
    >>> write_label_pyramid("labels.tif", labels_zarr, mpp=0.5, colors=[[230, 230, 230], [220, 40, 60]])

Shape:
    source (H, W) uint8.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pathseg.io.files import atomic_path


def level_shapes(height: int, width: int, tile: int) -> list[tuple[int, int]]:
    """(H, W) of each level: halve until the level fits in one tile."""
    shapes = [(height, width)]
    while max(shapes[-1]) > tile:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


def _tiles(source: Any, level: int, shape: tuple[int, int], tile: int) -> Iterator[np.ndarray]:
    """Tiles of ``level`` (row-major), each (tile, tile), by subsampling level 0 with step 2**level."""
    step = 2 ** level
    H0, W0 = source.shape[-2:]
    h, w = shape
    for ty in range(0, h, tile):
        for tx in range(0, w, tile):
            y0, x0 = ty * step, tx * step
            y1, x1 = min((ty + tile) * step, H0), min((tx + tile) * step, W0)
            block = np.asarray(source[y0:y1:step, x0:x1:step]) if step > 1 else np.asarray(source[y0:y1, x0:x1])
            out = np.zeros((tile, tile), dtype=block.dtype)
            out[:block.shape[0], :block.shape[1]] = block
            yield out


def palette(colors: Sequence[Sequence[int]]) -> np.ndarray:
    """A (3, 256) uint16 TIFF colour map: class i gets colors[i], other values black."""
    cmap = np.zeros((3, 256), np.uint16)
    for i, c in enumerate(colors[:256]):
        cmap[:, i] = np.asarray(c[:3], np.uint16) * 257
    return cmap


def write_pyramid(path: str | os.PathLike, source: Any, *, mpp: float, tile: int = 512,
                  colormap: np.ndarray | None = None, description: str | None = None,
                  compression: str = "zlib") -> Path:
    """Write a 2-D uint8 array as a tiled pyramidal BigTIFF at ``path`` (atomically).

    ``colormap`` (3, 256) uint16 makes it a palette image; otherwise it is greyscale.
    """
    import tifffile

    if tile % 16:
        raise ValueError(f"TIFF tiles must be a multiple of 16 px, got {tile}")
    H, W = source.shape[-2:]
    shapes = level_shapes(H, W, tile)
    path = Path(path)
    with atomic_path(path) as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
            for level, shape in enumerate(shapes):
                res = 1e4 / (mpp * 2 ** level)  # pixels per centimetre
                kw: dict[str, Any] = dict(
                    shape=shape, dtype=np.uint8, tile=(tile, tile), compression=compression,
                    resolution=(res, res), resolutionunit="CENTIMETER",
                    subfiletype=0 if level == 0 else 1, metadata=None,
                )
                if colormap is not None:
                    kw.update(photometric="palette", colormap=colormap)
                else:
                    kw.update(photometric="minisblack")
                if level == 0 and description:
                    kw["description"] = description
                tw.write(_tiles(source, level, shape, tile), **kw)
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
