"""Stitching tile probabilities into zarr maps on disk, in bounded memory, resumable.

Each tile's probabilities are cropped to the tile's kept box (:attr:`Tile.keep`), weighted (``mean``:
uniform, so overlapping tiles are averaged per pixel; ``gaussian``: a Gaussian centred on the tile,
sigma = tile/8) and added to an accumulator of shape (K+1, H, W) (K weighted probability sums and the
weight sum). The output is cut into chunks; as soon as every tile touching a chunk has been added, the
chunk is *finalised*: probabilities = sums / weights, labels = argmax, per-class pixel counts kept, and
the accumulator chunk dropped.

Where the accumulator lives: only the chunks still open (about one row of tiles) exist at any time.
:meth:`Stitcher.plan` counts the most that will be open at once; when they fit in ``memory_budget`` bytes
(256 MB by default: every slide without overlap, and 50% overlap up to about 16k px wide) they are numpy
arrays in memory, otherwise chunks of a zarr array ``acc`` on disk, as in earlier versions. Both give the
same sums, in the same order, so the outputs are the same bit for bit; memory is only faster (no
uncompressed 4 MB chunk written and read back per tile). The accumulator never has to outlive a crash
(see Resume), so memory loses nothing. Per-chunk class counts are kept in memory and written at each
checkpoint.

Resume. Tiles are added in index order and :meth:`Stitcher.checkpoint` records how many are done. On
restart (:meth:`Stitcher.plan`) the accumulator chunks that tiles still to do will touch are cleared,
and the done tiles that touch them are queued again before the rest: a crash between two checkpoints
costs about one row of tiles, never a wrong sum.

Outside every kept box (no tissue, tiles skipped) the label is 0 and the probabilities are 0.

Example:
    >>> st = Stitcher(work / "stitch.zarr", tiles, (W, H), num_classes=3, tile=512)
    >>> for i in st.plan(st.load_progress()):
    ...     st.add(i, probs_of_tile_i)          # (K, 512, 512)
    >>> st.checkpoint(); st.labels[:]            # (H, W) uint8 class map

Shape:
    add(index, probs (K, tile, tile) float32); labels (H, W) uint8; probs (K, H, W) uint8 or float32.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from pathseg.errors import ConfigError
from pathseg.io.files import write_json
from pathseg.io.tiling import Tile
from pathseg.registry import Registry

BLENDS: Registry = Registry("blend")

#: Default bytes of open accumulator chunks held in memory (see the module docstring).
MEMORY_BUDGET = 256 * 2**20


def first_argmax(p: np.ndarray) -> np.ndarray:
    """``p.argmax(0)`` as uint8 for (K, h, w) scores, K <= 256, by K - 1 whole-array comparisons (numpy's
    argmax over the leading axis walks each pixel's K strided values, several times slower); ties go to the
    first class, as argmax (scores are never NaN here: probabilities over weights > 0)."""
    lab = np.zeros(p.shape[1:], np.uint8)
    best = p[0].copy()
    for k in range(1, p.shape[0]):
        better = p[k] > best
        lab[better] = k
        np.maximum(best, p[k], out=best)
    return lab


def _uniform(tile: int) -> np.ndarray:
    return np.ones((tile, tile), np.float32)


def _gaussian(tile: int, sigma_scale: float = 1 / 8) -> np.ndarray:
    c = (tile - 1) / 2
    g = np.exp(-0.5 * ((np.arange(tile) - c) / (tile * sigma_scale)) ** 2)
    w = np.outer(g, g).astype(np.float32)
    return np.maximum(w / w.max(), 1e-3)


BLENDS.register("mean", _uniform)
BLENDS.register("gaussian", _gaussian)


class Stitcher:
    """Accumulate tiles into zarr arrays under ``store`` (a folder) and finalise chunk by chunk.

    Args:
        store: folder of the zarr group (created; reused on resume when ``key`` matches).
        tiles: the grid (:func:`pathseg.io.tiling.grid_tiles`), indexed 0..n-1 in processing order.
        size: (W, H) of the output in pixels.
        num_classes: K.
        tile: tile side in pixels.
        blend: "mean" or "gaussian".
        probabilities: also keep per-class probability maps.
        prob_dtype: "uint8" (0..255) or "float32".
        key: identifies the run; a store made with another key is discarded.
        memory_budget: bytes the open accumulator chunks may take in memory, beyond which they go to disk
            (None: :data:`MEMORY_BUDGET`).
    """

    def __init__(self, store: str | os.PathLike, tiles: list[Tile], size: tuple[int, int], num_classes: int, *,
                 tile: int, blend: str = "mean", probabilities: bool = False, prob_dtype: str = "uint8",
                 chunk: int | None = None, key: str = "", memory_budget: int | None = None) -> None:
        import zarr

        if prob_dtype not in ("uint8", "float32"):
            raise ConfigError(f"prob_dtype must be 'uint8' or 'float32', got {prob_dtype!r}")
        self.store = Path(store)
        self.tiles, self.K, self.tile = tiles, int(num_classes), int(tile)
        self.W, self.H = size
        self.weight = BLENDS.get(blend)(self.tile)
        self.unit_weight = bool((self.weight == 1).all())
        self.blend = blend
        self.C = int(chunk or 256)
        self.key = key
        self.progress_path = self.store.parent / (self.store.name + ".progress.json")
        prev = self._read_progress()
        fresh = prev is None or prev.get("key") != key or not self.store.exists()
        if fresh:
            if self.store.exists():
                shutil.rmtree(self.store)
            if self.progress_path.exists():
                self.progress_path.unlink()
            g = zarr.open_group(str(self.store), mode="w")
            C, K = self.C, self.K
            g.create_array("labels", shape=(self.H, self.W), chunks=(C, C), dtype="u1", fill_value=0)
            ny, nx = -(-self.H // C), -(-self.W // C)
            g.create_array("counts", shape=(ny, nx, K), chunks=(1, nx, K), dtype="i8", fill_value=0)
            if probabilities:
                g.create_array("probs", shape=(K, self.H, self.W), chunks=(1, C, C), dtype=prob_dtype, fill_value=0)
            g.attrs["key"] = key
        g = zarr.open_group(str(self.store), mode="r+")
        self.group = g
        self.labels, self.counts = g["labels"], g["counts"]
        self.acc = g.get("acc")  # the on-disk accumulator (see memory_budget)
        self.probs = g.get("probs")
        self._counts = np.asarray(self.counts[:])  # written to the store at each checkpoint
        self.memory_budget = MEMORY_BUDGET if memory_budget is None else int(memory_budget)
        self._open: dict[tuple[int, int], np.ndarray] = {}  # in-memory accumulator chunks
        self.in_memory = True
        # chunk -> tiles whose kept box touches it, and tile -> chunks
        self.chunk_tiles: dict[tuple[int, int], list[int]] = defaultdict(list)
        self.tile_chunks: list[list[tuple[int, int]]] = []
        for t in tiles:
            x0, y0, x1, y1 = t.out_box
            cs = [(cy, cx) for cy in range(y0 // self.C, (y1 - 1) // self.C + 1)
                  for cx in range(x0 // self.C, (x1 - 1) // self.C + 1)]
            self.tile_chunks.append(cs)
            for c in cs:
                self.chunk_tiles[c].append(t.index)
        self.pending: dict[tuple[int, int], int] = {}
        self.n_done = 0

    # -- progress -----------------------------------------------------------------------------------
    def _read_progress(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.progress_path.read_text())
        except (OSError, ValueError):
            return None

    def load_progress(self) -> int:
        """How many tiles (in index order) were done at the last checkpoint (0 for a fresh store)."""
        p = self._read_progress()
        return int(p["n_done"]) if p and p.get("key") == self.key else 0

    def checkpoint(self, n_done: int | None = None) -> None:
        """Record that tiles [0, n_done) are added and their finished chunks finalised."""
        if n_done is not None:
            self.n_done = n_done
        self.counts[...] = self._counts  # before the record that vouches for them
        write_json(self.progress_path, {"key": self.key, "n_done": self.n_done, "n_tiles": len(self.tiles)})

    # -- planning -----------------------------------------------------------------------------------
    def plan(self, n_done: int = 0) -> list[int]:
        """Tile indices to run, in order: done tiles to redo for open chunks, then tiles [n_done, n)."""
        self.n_done = n_done
        remaining = range(n_done, len(self.tiles))
        dirty = {c for i in remaining for c in self.tile_chunks[i]}
        redo = sorted({i for c in dirty for i in self.chunk_tiles[c] if i < n_done})
        for c in dirty:
            self.pending[c] = len(self.chunk_tiles[c])
        order = redo + list(remaining)
        self.in_memory = self.peak_open_bytes(order) <= self.memory_budget
        self._open.clear()
        if self.in_memory:
            if self.acc is not None:  # an earlier run's on-disk accumulator: not used by this one
                del self.group["acc"]
                self.acc = None
        else:
            if self.acc is None:
                C, K = self.C, self.K
                self.acc = self.group.create_array("acc", shape=(K + 1, self.H, self.W), chunks=(K + 1, C, C),
                                                   dtype="f4", fill_value=0.0, compressors=None)
            for c in dirty:
                self._clear(c)
        return order

    def peak_open_bytes(self, order: list[int]) -> int:
        """Bytes of the most accumulator chunks open at once when tiles are added in ``order``."""
        left = dict(self.pending)
        is_open: set[tuple[int, int]] = set()
        peak = 0
        for i in order:
            for c in self.tile_chunks[i]:
                if c not in left:
                    continue
                is_open.add(c)
                left[c] -= 1
            peak = max(peak, len(is_open))
            for c in self.tile_chunks[i]:
                if left.get(c) == 0:
                    is_open.discard(c)
                    del left[c]
        return peak * (self.K + 1) * self.C * self.C * 4

    def _chunk_slice(self, c: tuple[int, int]) -> tuple[slice, slice]:
        cy, cx = c
        return slice(cy * self.C, min((cy + 1) * self.C, self.H)), slice(cx * self.C, min((cx + 1) * self.C, self.W))

    def _clear(self, c: tuple[int, int]) -> None:
        ys, xs = self._chunk_slice(c)
        self.acc[:, ys, xs] = 0.0  # an all-zero chunk is deleted (write_empty_chunks=False)

    # -- adding -------------------------------------------------------------------------------------
    def add(self, index: int, probs: np.ndarray | None) -> None:
        """Add tile ``index``'s probabilities (K, tile, tile); ``None`` marks a tile that failed to read."""
        t = self.tiles[index]
        if probs is not None:
            kx0, ky0, kx1, ky1 = t.keep
            w = self.weight[ky0:ky1, kx0:kx1]
            p = np.asarray(probs, np.float32)[:, ky0:ky1, kx0:kx1]
            x0, y0, x1, y1 = t.out_box
            c = self._sole_chunk(index)
            if c is not None:  # the tile alone fills a chunk with weight 1: its probabilities are the mean
                self._write_final(c, p, None)
                del self.pending[c]
                return
            if self.in_memory:
                self._add_in_memory(index, p * w, w, (x0, y0))
            else:
                region = self.acc[:, y0:y1, x0:x1]
                region[: self.K] += p * w
                region[self.K] += w
                self.acc[:, y0:y1, x0:x1] = region
        for c in self.tile_chunks[index]:
            if c not in self.pending:  # chunk already final (not in this run's plan)
                continue
            self.pending[c] -= 1
            if self.pending[c] == 0:
                self._finalise(c)
                del self.pending[c]

    def _sole_chunk(self, index: int) -> tuple[int, int] | None:
        """The chunk tile ``index`` covers exactly, when no other tile adds to it and the blend weight is 1
        (no overlap, chunk = tile, mean blending: the usual whole-slide run). Accumulating it would compute
        (0 + p * 1) / 1 = p, so the tile's probabilities are written as they are."""
        if not (self.in_memory and self.unit_weight) or len(self.tile_chunks[index]) != 1:
            return None
        c = self.tile_chunks[index][0]
        if self.pending.get(c) != 1 or c in self._open:
            return None
        ys, xs = self._chunk_slice(c)
        x0, y0, x1, y1 = self.tiles[index].out_box
        return c if (y0, y1, x0, x1) == (ys.start, ys.stop, xs.start, xs.stop) else None

    def _add_in_memory(self, index: int, pw: np.ndarray, w: np.ndarray, origin: tuple[int, int]) -> None:
        """Add a tile's weighted probabilities ``pw`` (K, h, w) and weights to the open chunks they cover."""
        x0, y0 = origin
        h, wd = w.shape
        for c in self.tile_chunks[index]:
            if c not in self.pending:  # final already (done before a resume): nothing to add to
                continue
            ys, xs = self._chunk_slice(c)
            a = self._open.get(c)
            if a is None:
                a = self._open[c] = np.zeros((self.K + 1, ys.stop - ys.start, xs.stop - xs.start), np.float32)
            # the overlap of the tile's box and the chunk, in chunk and in tile coordinates
            cy0, cy1 = max(y0, ys.start), min(y0 + h, ys.stop)
            cx0, cx1 = max(x0, xs.start), min(x0 + wd, xs.stop)
            dst = (slice(cy0 - ys.start, cy1 - ys.start), slice(cx0 - xs.start, cx1 - xs.start))
            src = (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0))
            a[(slice(0, self.K),) + dst] += pw[(slice(None),) + src]
            a[(self.K,) + dst] += w[src]

    def _finalise(self, c: tuple[int, int]) -> None:
        ys, xs = self._chunk_slice(c)
        if self.in_memory:
            a = self._open.pop(c, None)
            if a is None:  # no tile of this chunk could be read
                a = np.zeros((self.K + 1, ys.stop - ys.start, xs.stop - xs.start), np.float32)
        else:
            a = np.asarray(self.acc[:, ys, xs])
        wsum = a[self.K]
        valid = wsum > 0
        every = bool(valid.all())  # no overlap, every pixel in tissue: the common case, no masking needed
        p = a[: self.K] / (wsum if every else np.where(valid, wsum, 1.0))
        self._write_final(c, p, None if every else valid)
        if not self.in_memory:
            self.acc[:, ys, xs] = 0.0

    def _write_final(self, c: tuple[int, int], p: np.ndarray, valid: np.ndarray | None) -> None:
        """Labels, class counts and (if kept) probabilities of chunk ``c`` from its mean probabilities ``p``;
        ``valid`` marks the pixels some tile covered (None: all of them)."""
        ys, xs = self._chunk_slice(c)
        lab = first_argmax(p)
        if valid is not None:
            lab[~valid] = 0
        self.labels[ys, xs] = lab
        self._counts[c[0], c[1]] = np.bincount((lab if valid is None else lab[valid]).ravel(),
                                               minlength=self.K)[: self.K]
        if self.probs is not None:
            if self.probs.dtype == np.uint8:
                self.probs[:, ys, xs] = np.round(p * 255).astype(np.uint8)
            else:
                self.probs[:, ys, xs] = p

    @property
    def finished(self) -> bool:
        return not self.pending

    def class_counts(self) -> np.ndarray:
        """Pixels per class over every finalised chunk (pixels no tile covered are not counted)."""
        return self._counts.reshape(-1, self.K).sum(0)

    def drop_accumulator(self) -> None:
        """Remove the (empty) accumulator once the run is complete."""
        self.counts[...] = self._counts
        self._open.clear()
        acc_dir = self.store / "acc"
        if acc_dir.exists():
            shutil.rmtree(acc_dir)
        if self.progress_path.exists():
            self.progress_path.unlink()
