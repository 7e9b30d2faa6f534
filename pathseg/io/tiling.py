"""Tile grids over a slide at a target resolution, restricted to tissue, and paired two-resolution sampling.

Resolution lives in one checked dataclass, :class:`TilingConfig` (tile size, overlap, MPP, the
tissue fraction a tile needs), validated when built -- like TIAToolbox's ``IOSegmentorConfig``.

Coordinates. A grid is laid in *output pixels* at ``config.mpp``: the slide is ``W x H`` there
(:meth:`SlideReader.size_at`). Tiles start at multiples of the stride; the last row and column are
shifted back to end on the slide's edge, so every tile lies inside the slide when the slide is at
least one tile wide (a smaller slide gets one tile, padded white). Each :class:`Tile` carries its
output-pixel box and its level-0 origin, so it can be read with ``slide.read_region``.

Stitching keeps only the inner part of each tile (``Tile.keep``): ``trim`` pixels are dropped on every
side that is not on the slide's edge, so pixels whose receptive field was cut by the tile border never
reach the output. ``trim`` defaults to a quarter of the overlap, which still leaves neighbours
overlapping (by half the overlap) for averaging.

Paired sampling (:class:`PairSpec`, :func:`paired_grid`): one context tile at a coarse MPP and a
``k x k`` block of aligned target tiles at a fine MPP centred inside it (e.g. 1 context : 4 or 16
targets), for HookNet-style models and the self-supervised methods. Context tiles at the slide's
border extend past it and are padded white.

Concentric context geometry (:func:`context_start`, :func:`reflect_index`): where the context region of a
target crop starts and how indices past an image's edge are mirrored -- shared by HookNet's training pairs
(:mod:`pathseg.data.context`) and its whole-image inference (:meth:`pathseg.models.hooknet.HookNet.segment`).

Example:
    >>> cfg = TilingConfig(tile=512, overlap=0.5, mpp=0.5, min_tissue=0.1)
    >>> tiles = grid_tiles(slide, cfg, tissue=detect_tissue(slide))
    >>> img = slide.read_region(tiles[0].x0, tiles[0].y0, cfg.tile, cfg.tile, mpp=cfg.mpp)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from pathseg.errors import ConfigError


@dataclass(frozen=True)
class TilingConfig:
    """Tile size (px), overlap (fraction of the tile), MPP of the tiles, and tissue filtering.

    Args:
        tile: tile side in pixels at ``mpp`` (the model input size).
        overlap: fraction of the tile shared with the next tile, in [0, 1). 0.5 is the published
            protocol for stitching.
        mpp: resolution of the tiles and of the stitched output, in µm per pixel.
        min_tissue: skip tiles whose tissue fraction is below this, in [0, 1].
        trim: pixels dropped at inner tile borders when stitching; None = a quarter of the overlap.
    """

    tile: int = 512
    overlap: float = 0.5
    mpp: float = 0.5
    min_tissue: float = 0.05
    trim: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.tile, (int, np.integer)) or self.tile < 16:
            raise ConfigError(f"tile must be an integer of at least 16 px, got {self.tile!r}")
        if not (0.0 <= self.overlap < 1.0):
            raise ConfigError(
                f"overlap must be a fraction in [0, 1) of the tile (0.5 = half a tile), got {self.overlap!r}")
        if not (isinstance(self.mpp, (int, float)) and self.mpp > 0 and math.isfinite(self.mpp)):
            raise ConfigError(f"mpp must be a positive number of microns per pixel (0.5 at 20x), got {self.mpp!r}")
        if not (0.0 <= self.min_tissue <= 1.0):
            raise ConfigError(f"min_tissue must be a fraction in [0, 1], got {self.min_tissue!r}")
        if self.stride < 1:
            raise ConfigError(
                f"tile {self.tile} with overlap {self.overlap} leaves a stride below 1 px; lower the overlap")
        if self.trim is not None and not (0 <= self.trim <= (self.tile - self.stride) // 2):
            raise ConfigError(
                f"trim {self.trim} px would leave gaps between tiles: with tile {self.tile} and stride {self.stride} "
                f"it must be in [0, {(self.tile - self.stride) // 2}]"
            )

    @property
    def stride(self) -> int:
        return self.tile - int(round(self.tile * self.overlap))

    @property
    def trim_px(self) -> int:
        return self.trim if self.trim is not None else (self.tile - self.stride) // 4


@dataclass(frozen=True)
class Tile:
    """One tile: ``index`` in the grid, output-pixel box (x, y, size), level-0 origin, and the kept box.

    ``keep`` = (kx0, ky0, kx1, ky1) in tile pixels: the part written when stitching.
    """

    index: int
    row: int
    col: int
    x: int
    y: int
    size: int
    x0: float
    y0: float
    keep: tuple[int, int, int, int] = field(default=(0, 0, 0, 0))

    @property
    def out_box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) in output pixels of the kept region."""
        kx0, ky0, kx1, ky1 = self.keep
        return self.x + kx0, self.y + ky0, self.x + kx1, self.y + ky1


def axis_starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile starts along one axis: 0, stride, ..., with the last shifted to end at ``length``."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def grid_tiles(slide, config: TilingConfig, *, tissue=None, slide_mpp: float | None = None,
               dimensions: tuple[int, int] | None = None) -> list[Tile]:
    """The tile grid over ``slide`` at ``config.mpp``; tiles under ``config.min_tissue`` are dropped.

    ``slide`` is a SlideReader (or None with ``slide_mpp`` and level-0 ``dimensions`` given).
    ``tissue`` is a :class:`pathseg.io.tissue.TissueMask`, or None to keep every tile.
    """
    mpp0 = slide_mpp if slide_mpp is not None else slide._need_mpp()
    w0, h0 = dimensions if dimensions is not None else slide.dimensions
    s = config.mpp / mpp0  # level-0 px per output px
    W, H = max(1, math.ceil(w0 / s - 1e-6)), max(1, math.ceil(h0 / s - 1e-6))
    t, trim = config.tile, config.trim_px
    xs, ys = axis_starts(W, t, config.stride), axis_starts(H, t, config.stride)
    tiles: list[Tile] = []
    for r, y in enumerate(ys):
        for c, x in enumerate(xs):
            if tissue is not None and config.min_tissue > 0:
                if tissue.box_fraction(x * s, y * s, t * s, t * s) < config.min_tissue:
                    continue
            kx0 = 0 if c == 0 else trim
            ky0 = 0 if r == 0 else trim
            kx1 = min(t, W - x) if c == len(xs) - 1 else t - trim
            ky1 = min(t, H - y) if r == len(ys) - 1 else t - trim
            tiles.append(Tile(len(tiles), r, c, x, y, t, x * s, y * s, (kx0, ky0, kx1, ky1)))
    return tiles


def output_size(slide, mpp: float) -> tuple[int, int]:
    """(width, height) of the stitched output at ``mpp`` (same rounding as :func:`grid_tiles`)."""
    s = mpp / slide._need_mpp()
    w0, h0 = slide.dimensions
    return max(1, math.ceil(w0 / s - 1e-6)), max(1, math.ceil(h0 / s - 1e-6))


# ------------------------------------------------------------------------------------------------
# Paired two-resolution sampling
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PairSpec:
    """One context tile at ``context_mpp`` holding ``per_side**2`` target tiles at ``target_mpp``.

    The target block (per_side x target_size px at target_mpp) is centred in the context tile and must
    fit inside it. Example: context 512 px at 2 µm/px (1024 µm) with 4 x 4 targets of 256 px at
    1 µm/px (4 x 256 µm = 1024 µm) -> 1 context : 16 targets.
    """

    context_size: int = 512
    context_mpp: float = 2.0
    target_size: int = 256
    target_mpp: float = 0.5
    per_side: int = 2
    min_tissue: float = 0.05

    def __post_init__(self) -> None:
        for name in ("context_size", "target_size", "per_side"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if not (self.context_mpp > 0 and self.target_mpp > 0):
            raise ConfigError("context_mpp and target_mpp must be positive microns per pixel")
        if self.context_mpp < self.target_mpp:
            raise ConfigError(
                f"the context must be at a coarser resolution than the targets: context_mpp {self.context_mpp} "
                f"< target_mpp {self.target_mpp}; swap them"
            )
        if self.block_um > self.context_um * 1.0001:
            fit = int(self.context_um // (self.target_size * self.target_mpp))
            raise ConfigError(
                f"{self.per_side}x{self.per_side} targets of {self.target_size} px at {self.target_mpp} µm/px span "
                f"{self.block_um:g} µm, more than the context tile ({self.context_size} px at {self.context_mpp} µm/px "
                f"= {self.context_um:g} µm); use per_side <= {fit} or a larger context"
            )
        if not (0.0 <= self.min_tissue <= 1.0):
            raise ConfigError(f"min_tissue must be a fraction in [0, 1], got {self.min_tissue!r}")

    @property
    def context_um(self) -> float:
        return self.context_size * self.context_mpp

    @property
    def block_um(self) -> float:
        return self.per_side * self.target_size * self.target_mpp


@dataclass(frozen=True)
class TilePair:
    """Level-0 origins of the context tile and of its targets (row-major), and the targets' offsets in
    context pixels (where each target's top-left corner falls inside the context tile)."""

    index: int
    context_origin: tuple[float, float]
    target_origins: tuple[tuple[float, float], ...]
    target_offsets: tuple[tuple[float, float], ...]


def paired_grid(slide, spec: PairSpec, *, tissue=None) -> list[TilePair]:
    """Context/target pairs tiling the slide: target blocks do not overlap and cover the slide;
    each context tile is centred on its block (padded where it passes the slide's edge)."""
    mpp0 = slide._need_mpp()
    w0, h0 = slide.dimensions
    block0 = spec.block_um / mpp0  # level-0 px
    ctx0 = spec.context_um / mpp0
    tgt0 = spec.target_size * spec.target_mpp / mpp0
    margin = (ctx0 - block0) / 2
    pairs: list[TilePair] = []
    for by in np.arange(0, h0, block0):
        for bx in np.arange(0, w0, block0):
            if tissue is not None and spec.min_tissue > 0:
                if tissue.box_fraction(bx, by, block0, block0) < spec.min_tissue:
                    continue
            cx, cy = float(bx - margin), float(by - margin)
            origins, offsets = [], []
            for i in range(spec.per_side):
                for j in range(spec.per_side):
                    ox, oy = float(bx + j * tgt0), float(by + i * tgt0)
                    origins.append((ox, oy))
                    offsets.append(((ox - cx) * mpp0 / spec.context_mpp, (oy - cy) * mpp0 / spec.context_mpp))
            pairs.append(TilePair(len(pairs), (cx, cy), tuple(origins), tuple(offsets)))
    return pairs


def read_pair(slide, spec: PairSpec, pair: TilePair) -> dict[str, np.ndarray]:
    """Read one pair: ``{"context": (Sc, Sc, 3), "targets": (k*k, St, St, 3), "offsets": (k*k, 2)}`` uint8/float."""
    ctx = slide.read_region(*pair.context_origin, spec.context_size, spec.context_size, mpp=spec.context_mpp)
    k, t = spec.per_side, spec.target_size  # the k x k targets tile one block: read it once and cut it (row-major)
    block = slide.read_region(*pair.target_origins[0], k * t, k * t, mpp=spec.target_mpp)
    tg = block.reshape(k, t, k, t, 3).swapaxes(1, 2).reshape(k * k, t, t, 3)
    return {"context": ctx, "targets": tg, "offsets": np.asarray(pair.target_offsets, np.float32)}


def iter_pairs(slide, spec: PairSpec, *, tissue=None) -> Iterator[dict[str, np.ndarray]]:
    """Read every pair of :func:`paired_grid` in turn."""
    for pair in paired_grid(slide, spec, tissue=tissue):
        yield read_pair(slide, spec, pair)


# ---------------------------------------------------------------------------------------------------------
# concentric context geometry (HookNet training pairs in pathseg.data.context, whole-image inference in
# pathseg.models.hooknet): index arithmetic only, so the model needs neither the datasets nor the trainer


def reflect_index(idx: np.ndarray, n: int) -> np.ndarray:
    """Map pixel indices (any integers) into ``0..n-1`` by mirror reflection about the edge pixels.

    The same indexing as ``numpy.pad(a, p, mode="reflect")`` for any pad width (period ``2(n-1)``).

    Shape: idx (...,) int -> (...,) int64.

    Example:
        >>> reflect_index(np.arange(-3, 7), 4).tolist()
        [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]
    """
    idx = np.asarray(idx, dtype=np.int64)
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    m = np.abs(idx) % period
    return np.where(m >= n, period - m, m)


def context_start(y0: int, size: int, ratio: int) -> int:
    """First full-resolution row (or column) of the context region around the target ``[y0, y0+size)``."""
    return y0 + size // 2 - size * ratio // 2
