"""Per-slide outputs, each written atomically: class polygons (QuPath GeoJSON), overlay thumbnail,
tissue composition CSV and the JSON run record. (The label pyramid is :mod:`pathseg.io.pyramid`.)

GeoJSON follows what QuPath imports and exports: a ``FeatureCollection`` of ``Feature``s, one per
connected region, each a ``Polygon`` (with holes) in **level-0 pixel coordinates** of the slide,
with ``properties = {"objectType": "annotation", "classification": {"name": ..., "color": [r, g, b]}}``
(``"detection"`` for cells). Polygons follow the pixel edges (pixel ``(r, c)`` covers ``[c, c+1) x [r, r+1)``),
are valid per shapely and never empty; :func:`rasterize_features` inverts them.

A slide's outputs are written in memory that does not grow with the slide: :func:`write_label_geojson`
polygonises the label map strip by strip (:func:`map_strips`) and joins the regions that cross strip borders,
with the polygons of :func:`label_polygons` on the whole map; :class:`LabelLevels` feeds the label pyramid
each level from the one before; :func:`overlay_image` blends in bands.

Example:
    >>> feats = label_polygons(labels, class_names, colors, scale=2.0)   # map px -> level-0 px
    >>> write_geojson(out / "slide.geojson", feats)
    >>> write_label_geojson(out / "slide.geojson", map_strips(labels_zarr), class_names, colors)  # same polygons
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import sys
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pathseg.io.annotations import write_geojson  # noqa: F401  (re-exported: the slide outputs write with it)
from pathseg.io.files import write_image, write_json, write_text

#: Polygonise the finest label level whose side is at most this (memory for the contour search).
MAX_POLYGON_SIDE = 8192


#: Default ``--min-area``: regions smaller than this (µm²) are left out of the GeoJSON -- a few pixels of
#: noise at 0.5 µm/px, far below a small lymphocyte nucleus (about 20 µm²).
DEFAULT_MIN_AREA_UM2 = 10.0


def _polygons_of(geom: Any) -> list[Any]:
    from shapely.geometry import GeometryCollection, MultiPolygon, Polygon

    if isinstance(geom, Polygon):
        return [] if geom.is_empty else [geom]
    if isinstance(geom, (MultiPolygon, GeometryCollection)):
        return [p for g in geom.geoms for p in _polygons_of(g)]
    return []  # points and lines have no area


def _outlined_classes(class_names: Sequence[str], include_background: bool, object_type: str) -> tuple[list[str], list[int]]:
    """(names, classes to outline) of the GeoJSON writers: all but the class named "background" (class 0 when
    none has that name) unless ``include_background``."""
    if object_type not in ("annotation", "detection"):
        raise ValueError(f"object_type must be 'annotation' or 'detection', got {object_type!r}")
    names = [str(n) for n in class_names]
    skip = names.index("background") if "background" in names else 0
    return names, [k for k in range(len(names)) if include_background or k != skip]


def _feature_id(id_prefix: str, k: int, n: int) -> str:
    """The id of the n-th feature of the file (class k): the same in every run of the same slide and model."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"pathseg:{id_prefix}:{k}:{n}"))


def _feature_properties(object_type: str, name: str, color: Sequence[int]) -> dict[str, Any]:
    """A feature's QuPath properties: object type, class name and colour, unlocked."""
    return {"objectType": object_type, "classification": {"name": name, "color": [int(c) for c in color[:3]]},
            "isLocked": False}


def label_polygons(labels: np.ndarray, class_names: Sequence[str], colors: Sequence[Sequence[int]], *,
                   scale: float = 1.0, include_background: bool = False, simplify: float = 0.0,
                   min_area: float = 0.0, multipolygon: bool = False, object_type: str = "annotation",
                   id_prefix: str = "") -> list[dict[str, Any]]:
    """Each class's connected regions as QuPath GeoJSON features, valid and non-empty.

    Regions are traced along the pixel edges by GDAL's polygonizer (``rasterio.features.shapes``, 4-connected:
    pixels that touch only at a corner are separate regions, so every polygon is valid): pixel ``(r, c)`` covers
    ``[c, c+1) x [r, r+1)``, the convention of :func:`pathseg.io.annotations.rasterize_geojson`, which inverts
    this exactly. Coordinates are scaled by ``scale`` into level-0 pixels. With ``simplify=0`` and
    ``min_area=0`` a class's polygon areas sum to its pixel count times ``scale``².

    Args:
        labels: (H, W) class map.
        scale: level-0 pixels per map pixel.
        include_background: also outline the class named "background" (class 0 when none has that name).
        simplify: topology-preserving simplification tolerance in map pixels (0: every corner kept); a polygon
            that simplification makes invalid is mended by ``make_valid``.
        min_area: leave out polygons under this area, in level-0 px² (holes are not filled).
        multipolygon: one MultiPolygon feature per class instead of one Polygon per region.
        object_type: QuPath's ``objectType``: "annotation" (regions) or "detection" (cells, nuclei).

    Shape:
        labels (H, W) integer -> list of Feature dicts.
    """
    from affine import Affine
    from rasterio import features as rio_features
    from shapely.geometry import MultiPolygon, mapping, shape

    names, outlined = _outlined_classes(class_names, include_background, object_type)
    labels = np.ascontiguousarray(labels)
    if labels.dtype not in (np.uint8, np.int16, np.uint16, np.int32):
        labels = labels.astype(np.int32)
    wanted = np.isin(labels, outlined)
    by_class: dict[int, list[Any]] = {}
    if wanted.any():
        for geom, value in rio_features.shapes(labels, mask=wanted, connectivity=4,
                                               transform=Affine.scale(float(scale))):
            poly = shape(geom)
            if simplify > 0:
                poly = make_valid_simplified(poly, simplify * scale)
            by_class.setdefault(int(value), []).extend(
                p for p in _polygons_of(poly) if p.area > 0 and p.area >= min_area)
    feats: list[dict[str, Any]] = []
    for k in sorted(by_class):
        polys = by_class[k]
        if not polys:
            continue
        for g in ([MultiPolygon(polys)] if multipolygon else polys):
            feats.append({"type": "Feature", "id": _feature_id(id_prefix, k, len(feats)),
                          "geometry": _rounded(mapping(g)),
                          "properties": _feature_properties(object_type, names[k], colors[k])})
    return feats


# -- GeoJSON of a whole slide, strip by strip ---------------------------------------------------------

#: Pixels of the label map per strip of :func:`map_strips`: :func:`write_label_geojson` holds about 20 bytes
#: per pixel of one strip while it polygonises it, whatever the slide's size (measured: +94 MB at 2M px).
POLYGON_STRIP_PIXELS = 2 * 2**20


def map_strips(labels: Any, step: int = 1, *, pixels: int | None = None) -> Iterator[np.ndarray]:
    """``labels[::step, ::step]`` as consecutive row strips of about ``pixels`` pixels each (default
    :data:`POLYGON_STRIP_PIXELS`), read one at a time (``labels``: numpy, zarr or anything 2-D that slices).

    Shape:
        labels (H, W) -> strips (h_i, ceil(W / step)), sum of h_i = ceil(H / step).
    """
    H, W = labels.shape[:2]
    h, w = -(-H // step), -(-W // step)
    rows = max(1, (pixels or POLYGON_STRIP_PIXELS) // max(w, 1))
    for r in range(0, h, rows):
        yield np.asarray(labels[r * step:min((r + rows) * step, H):step, ::step])


def _components(strip: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """4-connected regions of equal class in ``strip``, classes with ``wanted[k]`` only.

    Returns (ids (h, w) int32: 0 where no wanted class, else 1..n), and per id (arrays of n + 1, entry 0 unused)
    its class, its pixels and the strip row below its last.
    """
    import cv2

    ids = np.zeros(strip.shape, np.int32)
    classes, areas, bottoms = [np.zeros(1, np.int64)], [np.zeros(1, np.int64)], [np.zeros(1, np.int64)]
    n = 0
    present = np.flatnonzero(np.bincount(strip.ravel())) if strip.dtype == np.uint8 else np.unique(strip)
    for k in present:
        if not 0 <= k < len(wanted) or not wanted[k]:
            continue
        m, lab, stats, _ = cv2.connectedComponentsWithStats((strip == k).view(np.uint8), connectivity=4,
                                                            ltype=cv2.CV_32S)
        if n:
            inside = lab > 0
            lab += n
            np.copyto(ids, lab, where=inside)
        else:
            ids = lab  # the first class: its ids as they are (0 elsewhere)
        classes.append(np.full(m - 1, k, np.int64))
        areas.append(stats[1:, cv2.CC_STAT_AREA].astype(np.int64))
        bottoms.append((stats[1:, cv2.CC_STAT_TOP] + stats[1:, cv2.CC_STAT_HEIGHT]).astype(np.int64))
        n += m - 1
    return ids, np.concatenate(classes), np.concatenate(areas), np.concatenate(bottoms)


def _canonical_ring(a: np.ndarray, shell: bool) -> np.ndarray:
    """One ring (n, 2), open, of an axis-aligned polygon as GDAL traces it: no vertex on a straight edge, the
    start at its top-left vertex (least y, then x), a shell heading down (+y) from there, a hole right (+x)."""
    while len(a) > 4:
        d_in = np.sign(a - np.roll(a, 1, axis=0))
        d_out = np.sign(np.roll(a, -1, axis=0) - a)
        redundant = (d_in == d_out).all(1) | (d_in == 0).all(1)
        if not redundant.any():
            break
        a = a[~redundant]
    start = int(np.lexsort((a[:, 0], a[:, 1]))[0])
    a = np.roll(a, -start, axis=0)
    nxt = a[1]
    heads_down = nxt[0] == a[0, 0] and nxt[1] > a[0, 1]
    heads_right = nxt[1] == a[0, 1] and nxt[0] > a[0, 0]
    if (shell and not heads_down) or (not shell and not heads_right):
        a = np.concatenate([a[:1], a[:0:-1]])
    return np.concatenate([a, a[:1]])


def _simple_rings(ring: np.ndarray) -> list[np.ndarray]:
    """An open ring (n, 2) cut at every vertex it passes twice into rings that pass each vertex once.

    A walk may pinch a hole into the shell at a vertex where they touch; GDAL writes the two as separate
    rings (an OGC-valid polygon whose hole touches its shell at one point), so they are cut apart here.

    The walk keeps a stack of vertices; at a vertex already on the stack, the stretch above it (from it to the
    top) is a ring of its own and leaves the stack. Only the vertices the ring passes more than once can close a
    stretch, so the stack is kept as ranges of ``ring``'s indices and the walk visits those vertices only: memory
    is a few bytes a vertex, not a Python object per vertex (a region across a whole slide has millions).
    """
    n = len(ring)
    if n == 0:
        return []
    _, inv, counts = np.unique(ring + 0.0, axis=0, return_inverse=True, return_counts=True)  # + 0.0: -0.0 is 0.0
    inv = inv.reshape(-1)
    events = np.flatnonzero(counts[inv] > 1)
    if not len(events):
        return [ring] if n >= 3 else []
    segs: list[list[int]] = []  # the stack, as [start, end) ranges of ring indices, bottom first
    size = 0  # vertices on the stack
    where: dict[int, int] = {}  # repeated vertex (its id in inv) -> its position on the stack
    order: list[tuple[int, int]] = []  # (position, vertex id) of ``where``, positions increasing
    out: list[np.ndarray] = []

    def push(s: int, e: int) -> None:
        nonlocal size
        if e > s:
            if segs and segs[-1][1] == s:
                segs[-1][1] = e
            else:
                segs.append([s, e])
            size += e - s

    def pop_from(k: int) -> np.ndarray:
        """Ring indices of stack positions k.. (removed: the stack keeps positions < k)."""
        nonlocal size
        parts = []
        while size > k:
            s, e = segs[-1]
            start = size - (e - s)
            if start >= k:
                parts.append(np.arange(s, e))
                segs.pop()
                size = start
            else:
                parts.append(np.arange(s + k - start, e))
                segs[-1][1] = s + k - start
                size = k
        return np.concatenate(parts[::-1])

    prev = 0
    for i in events.tolist():
        push(prev, i)
        prev = i + 1
        v = int(inv[i])
        k = where.get(v)
        if k is None:
            where[v] = size
            order.append((size, v))
            push(i, i + 1)
            continue
        loop = pop_from(k)  # from the first pass of v to the top
        push(int(loop[0]), int(loop[0]) + 1)  # v itself stays
        while order and order[-1][0] > k:
            del where[order.pop()[1]]
        if len(loop) >= 3:
            out.append(ring[loop])
    push(prev, n)
    if size >= 3:
        out.append(ring[pop_from(0)])
    return out


def _join_pieces(pieces: list[list[np.ndarray]], lines: np.ndarray) -> list[list[list[float]]]:
    """The polygon of one region from its pieces, polygons of pixel edges that meet only along the horizontal
    ``lines`` (strip borders), all traced with the region on the same side (as GDAL does).

    The pieces' rings are cut where they run along a line; the stretches on the lines are split at every vertex
    on that line, a stretch walked both ways (by the pieces on either side) is dropped, and what is left is
    followed into rings; at a vertex where the region touches itself across a corner, the walk turns so as to
    keep the region on the same side (4-connectivity, as GDAL). Then the rings are written as GDAL traces them
    (:func:`_canonical_ring`): the shell (the ring through the top-left vertex) and the holes by their starts.
    Time and memory are linear in the vertices.
    """
    rings: list[np.ndarray] = []  # rings off the lines: kept whole
    chains: list[np.ndarray] = []  # stretches between two runs along a line, first and last vertex on the line
    runs: list[tuple[float, float, float]] = []  # (y, x from, x to) along a line
    for piece in pieces:
        for ring in piece:
            a = np.asarray(ring, np.float64)[:-1]
            b = np.roll(a, -1, axis=0)
            along = (a[:, 1] == b[:, 1]) & np.isin(a[:, 1], lines)
            idx = np.flatnonzero(along)
            if not len(idx):
                rings.append(a)
                continue
            n = len(a)
            a = np.roll(a, -(idx[0] + 1), axis=0)  # now the ring starts where a run along a line ends
            start = 0
            for e in np.sort((idx - idx[0] - 1) % n).tolist():  # run e: from vertex e to e + 1
                if e > start:  # the stretch from the last run's end to this run's start
                    chains.append(a[start:e + 1])
                p, q = a[e], a[(e + 1) % n]
                runs.append((float(p[1]), float(p[0]), float(q[0])))
                start = e + 1
    # split the runs at every vertex on their line, drop the pieces walked both ways
    stops: dict[float, np.ndarray] = {}
    for y in {r[0] for r in runs}:
        xs = [r[1] for r in runs if r[0] == y] + [r[2] for r in runs if r[0] == y]
        stops[y] = np.unique(xs)
    unit: dict[tuple[float, float, float], int] = {}
    for y, x0, x1 in runs:
        s = stops[y]
        i0, i1 = np.searchsorted(s, [x0, x1])
        pts = s[i0:i1 + 1] if i0 <= i1 else s[i1:i0 + 1][::-1]
        for u, v in zip(pts[:-1].tolist(), pts[1:].tolist()):
            back = (y, v, u)
            if unit.get(back):
                unit[back] -= 1
            else:
                unit[(y, u, v)] = unit.get((y, u, v), 0) + 1
    edges: list[np.ndarray] = list(chains)
    edges += [np.array([[u, y], [v, y]]) for (y, u, v), n in unit.items() for _ in range(n)]
    out: dict[tuple[float, float], list[int]] = {}
    for i, e in enumerate(edges):
        out.setdefault((float(e[0, 0]), float(e[0, 1])), []).append(i)
    used = [False] * len(edges)
    for first in range(len(edges)):
        if used[first]:
            continue
        parts, i = [], first
        while not used[i]:
            used[i] = True
            e = edges[i]
            parts.append(e[:-1])
            end = (float(e[-1, 0]), float(e[-1, 1]))
            options = [j for j in out.get(end, []) if not used[j] or j == first]
            if len(options) > 1:  # the region touches itself at this corner: keep it on the same side
                d_in = e[-1] - e[-2]
                turn = [d_in[0] * (edges[j][1, 1] - edges[j][0, 1]) - d_in[1] * (edges[j][1, 0] - edges[j][0, 0])
                        for j in options]
                options = [options[int(np.argmax(turn))]]
            if not options:
                raise RuntimeError("pathseg: a region's pieces did not close into rings; this is a bug, "
                                   "please report it")
            i = options[0]
        rings.extend(_simple_rings(np.concatenate(parts)))
    tops = [np.lexsort((r[:, 0], r[:, 1]))[0] for r in rings]
    shell = min(range(len(rings)), key=lambda k: (rings[k][tops[k], 1], rings[k][tops[k], 0]))
    holes = sorted((_canonical_ring(r, False) for k, r in enumerate(rings) if k != shell),
                   key=lambda h: (h[0, 1], h[0, 0]))
    return [_canonical_ring(rings[shell], True), *holes]


@dataclass
class _Region:
    """A region cut by strip borders: its pieces (lists of rings, (n, 2) arrays) until its last strip is done."""

    cls: int
    pixels: int
    bottom: int
    pieces: list[Any]


def strip_polygons(strips: Iterable[np.ndarray], wanted: Sequence[int], *, scale: float = 1.0,
                   min_pixels: float = 0.0) -> Iterator[tuple[int, Any, int]]:
    """The 4-connected regions of a label map given as consecutive row strips (top to bottom), as
    ``(class, rings, pixels)``, with the polygons :func:`label_polygons` gets from the whole map.

    Each strip is polygonised by GDAL on its own; a region that crosses strip borders is kept as pieces until
    its last strip, then its pieces are joined (:func:`_join_pieces`) and its rings written as GDAL traces them,
    so it is the polygon of the whole map, vertex for vertex. Regions come strip by strip, each strip's in the
    order of their last row; memory is one strip and the regions still open (16 bytes a vertex), and while a
    region is joined and written, about 160 bytes a vertex of it for that moment (no Python object per vertex).

    Args:
        strips: (h_i, W) integer arrays, the map's rows in order.
        wanted: the classes to outline.
        scale: coordinates are map pixels times this, computed as GDAL does (exact for whole numbers).
        min_pixels: regions of fewer pixels may be left out (a speed-up; callers filter by area anyway).

    Shape:
        rings: the polygon's closed rings, shell first then holes, each an (n, 2) array or a sequence of
            (x, y) (GeoJSON coordinate order).
    """
    from affine import Affine
    from rasterio import features as rio_features

    lut = np.zeros(max(list(wanted) + [0]) + 1, bool)
    lut[list(wanted)] = True
    s = float(scale)
    parent: dict[int, int] = {}
    regions: dict[int, _Region] = {}
    lines: list[float] = []  # the strip borders so far, in output coordinates

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    y0, base = 0, 0
    prev_ids = prev_row = None
    it = iter(strips)
    cur = next(it, None)
    while cur is not None:
        nxt = next(it, None)
        strip = np.ascontiguousarray(cur)
        if strip.dtype != np.uint8:
            strip = strip.astype(np.int32)  # cv2 and GDAL: uint8 or int32
        last = nxt is None
        ids, classes, areas, bottoms = _components(strip, lut)
        border = np.zeros(len(classes), bool)
        if prev_ids is not None:
            border[ids[0]] = True
        if not last:
            border[ids[-1]] = True
        border[0] = False
        keep = np.ones(len(classes), bool)
        keep[0] = False
        if min_pixels > 0:
            keep &= border | (areas >= min_pixels)
        done: list[tuple[int, int, Any, int]] = []  # (row below the last, class, rings, pixels)
        mask = keep[ids]
        if mask.any():
            for geom, value in rio_features.shapes(ids, mask=mask, connectivity=4,
                                                   transform=Affine(s, 0.0, 0.0, 0.0, s, y0 * s)):
                i = int(value)
                if border[i]:
                    g = base + i
                    parent[g] = g
                    regions[g] = _Region(int(classes[i]), int(areas[i]), y0 + int(bottoms[i]),
                                         [[np.asarray(r, np.float64) for r in geom["coordinates"]]])
                else:
                    done.append((y0 + int(bottoms[i]), int(classes[i]), geom["coordinates"], int(areas[i])))
        if prev_ids is not None:  # join the pieces that meet across the border above this strip
            same = (prev_ids > 0) & (ids[0] > 0) & (prev_row == strip[0])
            if same.any():
                for a, b in np.unique(np.stack([prev_ids[same], ids[0][same].astype(np.int64) + base], 1), axis=0):
                    ra, rb = find(int(a)), find(int(b))
                    if ra != rb:
                        parent[rb] = ra
                        r, o = regions[ra], regions.pop(rb)
                        r.pixels += o.pixels
                        r.bottom = max(r.bottom, o.bottom)
                        r.pieces += o.pieces
        if not last:
            row = ids[-1].astype(np.int64)
            prev_ids = np.where(row > 0, row + base, 0)
            prev_row = strip[-1].copy()
            open_ids = [int(g) for g in np.unique(prev_ids[prev_ids > 0])]
            still_open = {find(g) for g in open_ids}
        else:
            open_ids, still_open = [], set()
        for root in [r for r in regions if r not in still_open]:
            reg = regions.pop(root)
            if len(reg.pieces) == 1:  # touches a border but crosses none: GDAL's own polygon
                rings = reg.pieces[0]
            else:
                rings = _join_pieces(reg.pieces, np.asarray(lines))
            done.append((reg.bottom, reg.cls, rings, reg.pixels))
        parent = {g: find(g) for g in open_ids}
        parent.update({r: r for r in still_open})
        done.sort(key=lambda d: d[0])  # stable: this strip's own regions keep GDAL's order
        for _, k, rings, pixels in done:
            yield k, rings, pixels
        base += len(classes)
        y0 += strip.shape[0]
        lines.append(y0 * s)
        cur = nxt


#: Vertices of a ring turned into JSON text at a time (:func:`_rings_text`).
TEXT_CHUNK = 1 << 12


def _rings_text(rings: Sequence[Any], scale: float | None = None, ndigits: int = 3) -> str:
    """``json.dumps(coordinates, separators=(",", ":"))`` of a polygon's closed rings, each an (n, 2) array or
    a sequence of (x, y); with ``scale``, the coordinates times ``scale`` rounded to ``ndigits`` (as
    :func:`_rounded`). A ring is converted ``TEXT_CHUNK`` vertices at a time, so no Python list of the whole
    ring is ever built (a region across a slide has millions of vertices)."""
    sep = (",", ":")
    out = []
    for r in rings:
        a = np.asarray(r, np.float64)
        pieces = []
        for i in range(0, len(a), TEXT_CHUNK):
            c = a[i:i + TEXT_CHUNK]
            if scale is not None:
                c = [[round(x, ndigits), round(y, ndigits)] for x, y in (c * scale).tolist()]
            else:
                c = c.tolist()
            pieces.append(json.dumps(c, separators=sep)[1:-1])
        out.append("[" + ",".join(pieces) + "]")
    return "[" + ",".join(out) + "]"


def write_label_geojson(path: str | os.PathLike, strips: Iterable[np.ndarray], class_names: Sequence[str],
                        colors: Sequence[Sequence[int]], *, scale: float = 1.0, include_background: bool = False,
                        simplify: float = 0.0, min_area: float = 0.0, multipolygon: bool = False,
                        object_type: str = "annotation", id_prefix: str = "",
                        properties: dict[str, Any] | None = None) -> Path:
    """The QuPath GeoJSON of :func:`label_polygons` and :func:`pathseg.io.annotations.write_geojson`, from
    a label map given as row strips (top to bottom), in memory bounded by a strip (see :func:`strip_polygons`).

    The polygons (vertex for vertex), their classes and properties are those of the whole map, and the
    features come class by class as there; within a class they come strip by strip, so on a map of more than
    one strip the order of the features (and which polygon gets which position-numbered id) can differ from
    the whole-map writer's. A map in one strip gives that writer's very file. Regions under ``min_area`` that lie
    inside one strip are left out before GDAL traces them (``simplify=0``: a region's area is its pixels x
    ``scale``², so the output is the same). Each polygon is written as it is finished, into a temporary file per
    class, and the file is put together at the end (atomically). Arguments as :func:`label_polygons`;
    ``properties`` go on the collection.

    Example:
        >>> write_label_geojson("s.geojson", map_strips(labels_zarr, 2), ["background", "tumour"],
        ...                     [[0, 0, 0], [220, 40, 60]], scale=2.0, properties={"pathseg_run_id": run_id})

    Shape:
        strips: (h_i, W) integer arrays -> the GeoJSON at ``path``.
    """
    import tempfile

    from shapely.geometry import Polygon, mapping

    from pathseg.io.files import atomic_path

    names, wanted = _outlined_classes(class_names, include_background, object_type)
    s = float(scale)
    exact = simplify == 0 and s.is_integer()  # GDAL's coordinates are final: whole numbers, rounding keeps them
    path = Path(path)
    sep = (",", ":")
    # a region of fewer pixels than this is under min_area whatever its outline (simplify=0: area = pixels x s²)
    min_pixels = min_area / (s * s) * (1 - 1e-9) if simplify == 0 and min_area > 0 else 0.0
    parts: dict[int, Any] = {}  # class -> temporary file of its polygons' coordinates, one a line
    try:
        for k, rings, pixels in strip_polygons(strips, wanted, scale=s if exact else 1.0, min_pixels=min_pixels):
            if simplify == 0:
                if pixels * s * s < min_area * (1 + 1e-9):  # near the threshold: the area as label_polygons has it
                    scaled = rings if exact else [np.asarray(r, np.float64) * s for r in rings]
                    if not Polygon(scaled[0], scaled[1:]).area >= min_area:
                        continue
                texts = [_rings_text(rings) if exact else _rings_text(rings, scale=s)]
            else:
                if not exact:
                    rings = [np.asarray(r, np.float64) * s for r in rings]
                geom = make_valid_simplified(Polygon(rings[0], rings[1:]), simplify * s)
                polys = [p for p in _polygons_of(geom) if p.area > 0 and p.area >= min_area]
                texts = [json.dumps(_rounded(mapping(p))["coordinates"], separators=sep) for p in polys]
            if not texts:
                continue
            f = parts.get(k)
            if f is None:
                f = parts[k] = tempfile.TemporaryFile("w+", dir=path.parent if path.parent.is_dir() else None)
            for t in texts:
                f.write(t + "\n")
        with atomic_path(path) as tmp, open(tmp, "w") as out:
            out.write('{"type":"FeatureCollection","features":[')
            n = 0
            for k in sorted(parts):
                f = parts[k]
                f.seek(0)
                props = json.dumps(_feature_properties(object_type, names[k], colors[k]), separators=sep)
                lines = (line.rstrip("\n") for line in f)
                for i, c in enumerate(lines):
                    if multipolygon and i:  # one feature, its polygons streamed into it
                        out.write("," + c)
                        continue
                    fid = json.dumps(_feature_id(id_prefix, k, n))
                    head = ("," if n else "") + '{"type":"Feature","id":' + fid + ',"geometry":'
                    if multipolygon:
                        out.write(head + '{"type":"MultiPolygon","coordinates":[' + c)
                    else:
                        out.write(head + '{"type":"Polygon","coordinates":' + c + '},"properties":' + props + "}")
                    n += 1
                if multipolygon:
                    out.write(']},"properties":' + props + "}")
            out.write("]")
            if properties:
                out.write(',"properties":' + json.dumps(properties, separators=sep))
            out.write("}\n")
    finally:
        for f in parts.values():
            f.close()
    return path


# -- label pyramid levels, each from the one before ---------------------------------------------------

class _BlockFile:
    """A 2-D array in a temporary file as square blocks of ``block`` px, one read or write call per block: the
    operating system's page cache holds it, not this process. Writes must be whole blocks at block corners (the
    right and bottom edges may be short)."""

    def __init__(self, shape: tuple[int, int], dtype: Any, block: int, folder: str | os.PathLike | None) -> None:
        import tempfile

        self.shape, self.dtype, self.B = tuple(shape), np.dtype(dtype), int(block)
        self.nbx = -(-self.shape[1] // self.B)
        self.size = self.B * self.B * self.dtype.itemsize
        self.file = tempfile.TemporaryFile(dir=folder)

    def write(self, y: int, x: int, block: np.ndarray) -> bool:
        B = self.B
        h, w = block.shape
        if y % B or x % B or not (h == B or y + h == self.shape[0]) or not (w == B or x + w == self.shape[1]):
            return False
        full = np.zeros((B, B), self.dtype)
        full[:h, :w] = block
        os.pwrite(self.file.fileno(), full.tobytes(), ((y // B) * self.nbx + x // B) * self.size)
        return True

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        B = self.B
        out = np.empty((y1 - y0, x1 - x0), self.dtype)
        for by in range(y0 // B, -(-y1 // B)):
            for bx in range(x0 // B, -(-x1 // B)):
                raw = os.pread(self.file.fileno(), self.size, (by * self.nbx + bx) * self.size)
                blk = np.frombuffer(raw, self.dtype).reshape(B, B)
                ys, xs = max(y0, by * B), max(x0, bx * B)
                ye, xe = min(y1, (by + 1) * B), min(x1, (bx + 1) * B)
                out[ys - y0:ye - y0, xs - x0:xe - x0] = blk[ys - by * B:ye - by * B, xs - bx * B:xe - bx * B]
        return out

    def close(self) -> None:
        self.file.close()


class LabelLevels:
    """A level-0 label map (zarr or numpy) for :func:`pathseg.io.pyramid.write_label_pyramid` that serves level k,
    ``labels[y0:y1:2^k, x0:x1:2^k]``, from level k itself, kept as level k-1 was read (``level_{k-1}[::2, ::2]``,
    which is ``labels[::2^k, ::2^k]`` exactly). Each level then costs one read of a map a quarter the size of the
    one before instead of a pass over all of level 0, and the pyramid is the same bit for bit.

    Levels larger than ``memory_bytes`` are kept in a temporary file in ``folder`` (blocks of ``block`` px,
    aligned with the pyramid's tiles); smaller ones in memory. A level that was not read whole before the next
    is asked for (another reading order) comes from ``labels`` as before.

    Shape:
        labels (H, W) -> ``self[ys, xs]`` (len(ys), len(xs)) for slices with a step 2^k.
    """

    def __init__(self, labels: Any, folder: str | os.PathLike | None = None, *, memory_bytes: int = 8 * 2**20,
                 block: int = 256) -> None:
        self.labels, self.folder, self.memory_bytes, self.block = labels, folder, int(memory_bytes), int(block)
        self.shape = tuple(labels.shape)
        self.dtype = np.dtype(labels.dtype)
        self.levels: dict[int, Any] = {}
        self.filled: dict[int, int] = {}  # level -> pixels written into it (-1: a write that could not be kept)

    def level_shape(self, k: int) -> tuple[int, int]:
        return -(-self.shape[0] // 2 ** k), -(-self.shape[1] // 2 ** k)

    def _complete(self, k: int) -> bool:
        return self.filled.get(k, 0) == int(np.prod(self.level_shape(k)))

    def _keep(self, k: int, y: int, x: int, block: np.ndarray) -> None:
        if k not in self.levels:
            h, w = self.level_shape(k)
            in_memory = self.folder is None or h * w * self.dtype.itemsize <= self.memory_bytes
            self.levels[k] = np.zeros((h, w), self.dtype) if in_memory else \
                _BlockFile((h, w), self.dtype, self.block, self.folder)
            self.filled[k] = 0
        store = self.levels[k]
        if self.filled[k] < 0:
            return
        if isinstance(store, np.ndarray):
            store[y:y + block.shape[0], x:x + block.shape[1]] = block
        elif not store.write(y, x, block):
            self.filled[k] = -1
            return
        self.filled[k] += block.size

    def __getitem__(self, idx: tuple[slice, slice]) -> np.ndarray:
        ys, xs = idx
        step = ys.step or 1
        if (xs.step or 1) != step or step & (step - 1) or (ys.start or 0) % step or (xs.start or 0) % step:
            return np.asarray(self.labels[ys, xs])
        k = step.bit_length() - 1
        y0, x0 = (ys.start or 0) // step, (xs.start or 0) // step
        h, w = len(range(*ys.indices(self.shape[0]))), len(range(*xs.indices(self.shape[1])))
        if k == 0:
            block = np.asarray(self.labels[ys, xs])
        elif self._complete(k):
            store = self.levels[k]
            block = store[y0:y0 + h, x0:x0 + w].copy() if isinstance(store, np.ndarray) else \
                store.read(y0, y0 + h, x0, x0 + w)
        else:
            return np.asarray(self.labels[ys, xs])
        if not self._complete(k + 1):  # level k+1 = level k at its even rows and columns
            oy, ox = y0 % 2, x0 % 2
            half = block[oy::2, ox::2]
            if half.size:
                self._keep(k + 1, (y0 + 1) // 2, (x0 + 1) // 2, half)
        return block

    def close(self) -> None:
        """Drop the levels kept (their temporary files go with them)."""
        for store in self.levels.values():
            if isinstance(store, _BlockFile):
                store.close()
        self.levels.clear()
        self.filled.clear()


def make_valid_simplified(geom: Any, tolerance: float) -> Any:
    """``geom`` simplified (topology preserved), mended again if simplification made it invalid."""
    from shapely import make_valid

    g = geom.simplify(tolerance, preserve_topology=True)
    return g if g.is_valid else make_valid(g)


def _rounded(geometry: dict[str, Any], ndigits: int = 3) -> dict[str, Any]:
    """A GeoJSON geometry mapping with coordinates as lists rounded to ``ndigits``."""
    def walk(c: Any) -> Any:
        if isinstance(c, (tuple, list)) and c and isinstance(c[0], (int, float)):
            return [round(float(v), ndigits) for v in c[:2]]
        return [walk(x) for x in c]

    return {"type": geometry["type"], "coordinates": walk(geometry["coordinates"])}


def rasterize_features(features: list[dict[str, Any]], class_names: Sequence[str], shape: tuple[int, int], *,
                       scale: float = 1.0) -> np.ndarray:
    """Inverse of :func:`label_polygons`: paint each feature's class into an (H, W) map (0 elsewhere), by the
    pixel-centre rule of :func:`pathseg.io.annotations.rasterize_geojson`."""
    from shapely.geometry import shape as to_shape

    from pathseg.io.annotations import rasterize_geojson

    feats = [(to_shape(f["geometry"]), f["properties"]["classification"]["name"]) for f in features]
    return rasterize_geojson(feats, shape, class_names, downsample=scale).astype(np.uint8)


def colorize(labels: np.ndarray, colors: Sequence[Sequence[int]]) -> np.ndarray:
    """Class-index map (H, W) -> RGB (H, W, 3) with one colour per class; values past the palette are black."""
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(colors)] = np.asarray([list(c[:3]) for c in colors], np.uint8)
    return lut[np.asarray(labels).astype(np.uint8)]


#: Rows blended at a time by :func:`overlay_image`.
OVERLAY_BAND_ROWS = 256
#: zlib level of the overlay PNG: a preview, written on every slide run (see :func:`write_overlay`).
OVERLAY_PNG_LEVEL = 1


def overlay_image(rgb: np.ndarray, labels: np.ndarray, colors: Sequence[Sequence[int]], *, alpha: float = 0.45,
                  skip_background: bool = True) -> np.ndarray:
    """Blend class colours over ``rgb`` (same size); class 0 left untinted when ``skip_background``.

    Shape:
        rgb (H, W, 3) uint8, labels (H, W) -> (H, W, 3) uint8.
    """
    lut = np.asarray([list(c[:3]) for c in colors], np.float32)
    labels = np.asarray(labels)
    out = np.empty(labels.shape + (3,), np.uint8)
    for y in range(0, labels.shape[0], OVERLAY_BAND_ROWS):  # in bands: a few float copies of a band, not the image
        band = slice(y, y + OVERLAY_BAND_ROWS)
        lab = labels[band]
        col = lut[np.clip(lab, 0, len(lut) - 1)]
        a = np.full(lab.shape, alpha, np.float32)
        if skip_background:
            a[lab == 0] = 0
        blend = rgb[band].astype(np.float32) * (1 - a[..., None]) + col * a[..., None]
        out[band] = np.clip(blend + 0.5, 0, 255).astype(np.uint8)
    return out


def legend(class_names: Sequence[str], colors: Sequence[Sequence[int]], width: int, *,
           row_height: int = 22) -> np.ndarray:
    """A white strip ``width`` px wide naming each class beside a swatch of its colour, wrapped into rows.

    Shape:
        -> (rows * row_height, width, 3) uint8.
    """
    import cv2

    font, fscale, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1
    items, x, rows = [], 6, 0
    for name, color in zip(class_names, colors):
        tw = cv2.getTextSize(str(name), font, fscale, thick)[0][0]
        need = 14 + 4 + tw + 14
        if x + need > width and x > 6:
            rows, x = rows + 1, 6
        items.append((rows, x, str(name), [int(c) for c in color[:3]]))
        x += need
    strip = np.full(((rows + 1) * row_height, width, 3), 255, np.uint8)
    for r, x0, name, color in items:
        y = r * row_height
        cv2.rectangle(strip, (x0, y + 4), (x0 + 14, y + 18), color, -1)
        cv2.rectangle(strip, (x0, y + 4), (x0 + 14, y + 18), (0, 0, 0), 1)
        cv2.putText(strip, name, (x0 + 18, y + 16), font, fscale, (0, 0, 0), thick, cv2.LINE_AA)
    return strip


def with_legend(rgb: np.ndarray, class_names: Sequence[str], colors: Sequence[Sequence[int]]) -> np.ndarray:
    """``rgb`` with a class-colour :func:`legend` below it (at least 240 px wide, padded white)."""
    width = max(rgb.shape[1], 240)
    img = rgb if rgb.shape[1] == width else np.pad(rgb, ((0, 0), (0, width - rgb.shape[1]), (0, 0)),
                                                   constant_values=255)
    return np.concatenate([img, legend(class_names, colors, width)], axis=0)


def write_overlay(path: str | os.PathLike, rgb: np.ndarray, labels: np.ndarray, colors: Sequence[Sequence[int]],
                  class_names: Sequence[str] | None = None) -> Path:
    """The overlay of ``labels`` on ``rgb`` (labels resized to it), with a legend when ``class_names`` are given."""
    import cv2

    if labels.shape != rgb.shape[:2]:
        labels = cv2.resize(labels.astype(np.uint8), (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_NEAREST)
    img = overlay_image(rgb, labels, colors)
    return write_image(path, with_legend(img, class_names, colors) if class_names else img,
                       png_level=OVERLAY_PNG_LEVEL)


def composition_rows(counts: Sequence[int], class_names: Sequence[str], mpp: float) -> list[dict[str, Any]]:
    """Area (mm²) and fractions per class from pixel counts at ``mpp`` (µm/px).

    ``fraction``: of all predicted pixels; ``fraction_tissue``: of the pixels not in class 0.
    """
    counts = np.asarray(counts, np.int64)
    total = int(counts.sum())
    tissue = int(counts[1:].sum())
    px_mm2 = (mpp / 1000.0) ** 2
    rows = []
    for k, name in enumerate(class_names):
        n = int(counts[k]) if k < len(counts) else 0
        rows.append({
            "class_id": k,
            "class_name": name,
            "pixels": n,
            "area_mm2": n * px_mm2,
            "fraction": n / total if total else 0.0,
            "fraction_tissue": (n / tissue if tissue else 0.0) if k > 0 else "",
        })
    return rows


def write_composition_csv(path: str | os.PathLike, rows: list[dict[str, Any]], *, mpp: float,
                          run_id: str | None = None) -> Path:
    """One row per class; a ``run_id`` column when given (the slide run that made it)."""
    buf = io.StringIO()
    fields = ["class_id", "class_name", "pixels", "area_mm2", "fraction", "fraction_tissue", "mpp"]
    fields += ["run_id"] if run_id else []
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        r = dict(r, mpp=mpp, **({"run_id": run_id} if run_id else {}))
        r["area_mm2"] = f"{r['area_mm2']:.6f}"
        r["fraction"] = f"{r['fraction']:.6f}"
        if r["fraction_tissue"] != "":
            r["fraction_tissue"] = f"{r['fraction_tissue']:.6f}"
        w.writerow(r)
    return write_text(path, buf.getvalue())


def versions() -> dict[str, str]:
    """Versions of the packages that shape the output (for the run record), read without importing them."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for dist in ("pathseg", "torch", "numpy", "onnxruntime", "openslide-python", "openslide-bin", "tifffile",
                 "imagecodecs", "zarr", "opencv-python-headless", "segmentation-models-pytorch"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return out


def write_run_record(path: str | os.PathLike, record: dict[str, Any]) -> Path:
    return write_json(path, record)
