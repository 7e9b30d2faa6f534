"""Reading and rasterising region annotations: Aperio ImageScope XML and QuPath GeoJSON.

Two pixel conventions, one per format, each matching how the format's own tools draw:

* **Aperio XML** vertices are pixel indices (X = column, Y = row, possibly non-integer).
  :func:`rasterize_polygons` fills each polygon *including its outline* with Pillow's
  ``ImageDraw.polygon``, the same rule ImageScope exports and the released MoNuSeg binary masks use.
* **GeoJSON** (QuPath) coordinates are continuous: pixel ``(r, c)`` covers ``[c, c+1) x [r, r+1)``.
  :func:`rasterize_geojson` sets a pixel when its centre ``(c + 0.5, r + 0.5)`` lies inside the
  geometry (even-odd rule over the exterior and its holes), so areas are preserved and holes stay open.

Writing: :func:`write_geojson` (a FeatureCollection, atomically); the slide engine makes the features
(:func:`pathseg.inference.writers.label_polygons`).

Example:
    >>> polys, mpp = read_aperio_xml("TCGA-2Z-A9J9-01A-01-TS1.xml")  # doctest: +SKIP
    >>> instances = rasterize_polygons(polys, (1000, 1000))          # doctest: +SKIP
    >>> feats = read_geojson("slide.geojson")                         # doctest: +SKIP
    >>> mask = rasterize_geojson(feats, (512, 512), ["background", "tumour"], downsample=16)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pathseg.errors import DataError

__all__ = [
    "read_aperio_xml",
    "rasterize_polygons",
    "read_geojson",
    "rasterize_geojson",
    "fill_polygon",
    "write_geojson",
]


# --------------------------------------------------------------------------------------------------
# Aperio ImageScope XML
# --------------------------------------------------------------------------------------------------
def read_aperio_xml(path: str | os.PathLike) -> tuple[list[np.ndarray], float | None]:
    """Read every ``Region`` polygon of an Aperio ImageScope XML file.

    Only ``Annotations/Annotation/Regions/Region`` elements are read (``RegionAttributeHeaders`` and
    other siblings are skipped), over all ``Annotation`` layers, in file order. The resolution is the
    root attribute ``MicronsPerPixel``; it is ``None`` when absent, empty or not positive.

    Shape:
        returns a list of float64 arrays ``(N_i, 2)`` with columns ``(x, y)`` = (column, row) in
        pixels, and ``mpp`` (µm/px) or ``None``.

    Raises:
        DataError: the file is missing, is not XML, or a vertex has no numeric ``X``/``Y``.

    Example:
        >>> polys, mpp = read_aperio_xml("TCGA-2Z-A9J9-01A-01-TS1.xml")  # doctest: +SKIP
        >>> len(polys), mpp  # doctest: +SKIP
        (575, 0.2527)
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found; check the path or the dataset root")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise DataError(f"{path}: not a readable Aperio XML file ({e}); re-export it from ImageScope") from e
    mpp: float | None = None
    raw = root.get("MicronsPerPixel")
    if raw:
        try:
            value = float(raw)
            mpp = value if value > 0 and math.isfinite(value) else None
        except ValueError:
            mpp = None
    polys: list[np.ndarray] = []
    for region in root.iter("Region"):  # exact tag: RegionAttributeHeaders is never matched
        pts = []
        for v in region.iter("Vertex"):
            try:
                pts.append((float(v.get("X", "")), float(v.get("Y", ""))))
            except ValueError as e:
                raise DataError(
                    f"{path}: Region Id={region.get('Id')} has a vertex without numeric X/Y ({v.attrib}); "
                    "fix or re-export the annotation"
                ) from e
        polys.append(np.asarray(pts, dtype=np.float64).reshape(-1, 2))
    return polys, mpp


def rasterize_polygons(polys: Sequence[np.ndarray], shape: tuple[int, int], *, relabel: bool = True) -> np.ndarray:
    """Draw polygons into an instance map: polygon ``k`` (0-based) gets id ``k + 1``.

    Filling follows Pillow's ``ImageDraw.polygon`` (outline pixels included, vertices are pixel
    indices, non-integer vertices allowed), as ImageScope-derived masks do. **Overlaps: the later
    polygon wins** (drawn last), which is deterministic and keeps file order meaningful. A polygon
    covered entirely by later ones, or with no vertex, leaves no pixel; with ``relabel=True`` (default)
    the surviving ids are renumbered ``1..K`` in drawing order, so ``K = instances.max()`` is the
    number of objects actually present.

    Shape:
        ``polys``: sequence of ``(N_i, 2)`` arrays of ``(x, y)``; ``shape``: ``(H, W)``;
        returns int32 ``(H, W)``, 0 = background.

    Example:
        >>> sq = np.array([[1, 1], [3, 1], [3, 3], [1, 3]], float)
        >>> int((rasterize_polygons([sq], (5, 5)) == 1).sum())
        9
    """
    from PIL import Image, ImageDraw

    h, w = int(shape[0]), int(shape[1])
    canvas = Image.new("I", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    for k, p in enumerate(polys):
        p = np.asarray(p, dtype=np.float64).reshape(-1, 2)
        if len(p) == 0:
            continue
        xy = [(float(x), float(y)) for x, y in p]
        if len(xy) == 1:
            draw.point(xy, fill=k + 1)
        else:
            draw.polygon(xy, fill=k + 1)
    inst = np.asarray(canvas, dtype=np.int32)
    if relabel and inst.any():
        ids, inverse = np.unique(inst, return_inverse=True)  # ids sorted; 0 first when present
        offset = 0 if ids[0] == 0 else 1
        inst = (inverse.reshape(inst.shape) + offset).astype(np.int32)
    return inst


# --------------------------------------------------------------------------------------------------
# QuPath GeoJSON
# --------------------------------------------------------------------------------------------------
def _class_name(props: dict[str, Any] | None) -> str | None:
    """QuPath stores the class as ``properties.classification.name`` (older exports: a plain string)."""
    if not props:
        return None
    cls = props.get("classification")
    if isinstance(cls, dict):
        name = cls.get("name")
        if name is None and isinstance(cls.get("names"), list):  # QuPath 0.4+ derived classes
            name = ": ".join(str(n) for n in cls["names"])
        return None if name is None else str(name)
    if isinstance(cls, str):
        return cls
    return None


def geojson_features(path: Path, *, what: str = "GeoJSON file", hint: str = "re-export it") -> list[Any]:
    """The Feature dicts of a GeoJSON file: a FeatureCollection, a list of Features (older QuPath),
    one Feature, or a bare geometry (wrapped as a Feature). Raises DataError naming the file."""
    if not path.is_file():
        raise DataError(f"{path}: {what} not found; {hint}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid GeoJSON ({e}); re-export it") from e
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        return data.get("features") or []
    if isinstance(data, list):
        return data
    if isinstance(data, dict) and data.get("type") == "Feature":
        return [data]
    if isinstance(data, dict) and "coordinates" in data:
        return [{"type": "Feature", "geometry": data, "properties": {}}]
    raise DataError(f"{path}: expected a GeoJSON FeatureCollection or a list of Features")


def read_geojson(path: str | os.PathLike) -> list[tuple[Any, str | None]]:
    """Read polygonal features from a GeoJSON file (QuPath export or any FeatureCollection).

    Accepts a ``FeatureCollection``, a bare list of ``Feature`` objects (older QuPath), a single
    ``Feature`` or a bare geometry. ``Polygon`` and ``MultiPolygon`` (holes included) are kept; the
    polygonal parts of a ``GeometryCollection`` are kept; points and lines (no area) are skipped.
    The class is ``properties.classification.name`` (``None`` when unclassified).

    Shape:
        returns ``[(shapely Polygon | MultiPolygon, class name | None), ...]`` in file order.

    Raises:
        DataError: missing file, invalid JSON, or a geometry shapely cannot build.

    Example:
        >>> feats = read_geojson("TCGA-xx.geojson")  # doctest: +SKIP
        >>> feats[0][1]  # doctest: +SKIP
        'Tumor'
    """
    from shapely.geometry import GeometryCollection, MultiPolygon, Polygon, shape

    path = Path(path)
    items = geojson_features(path, what="GeoJSON file", hint="export annotations from QuPath (File > Export objects)")

    out: list[tuple[Any, str | None]] = []
    for n, feat in enumerate(items):
        if not isinstance(feat, dict) or not feat.get("geometry"):
            continue
        try:
            geom = shape(feat["geometry"])
        except Exception as e:  # shapely raises several types for malformed coordinates
            raise DataError(f"{path}: feature {n} has a malformed geometry ({e}); fix or re-export it") from e
        if isinstance(geom, GeometryCollection):
            parts = [g for g in geom.geoms if isinstance(g, (Polygon, MultiPolygon))]
            if not parts:
                continue
            polys = [p for g in parts for p in (g.geoms if isinstance(g, MultiPolygon) else [g])]
            geom = MultiPolygon(polys)
        if not isinstance(geom, (Polygon, MultiPolygon)) or geom.is_empty:
            continue
        out.append((geom, _class_name(feat.get("properties"))))
    return out


def fill_polygon(rings: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask of pixels whose centre lies inside ``rings`` (even-odd rule; holes are rings too).

    Pixel ``(r, c)`` is inside when ``(c + 0.5, r + 0.5)`` is inside; a centre exactly on an edge
    follows the half-open scanline rule (left/top edges in, right/bottom out). Exact, no
    anti-aliasing; the cost is proportional to rows x edges of the polygon's bounding box.

    Shape:
        ``rings``: ``(N_i, 2)`` arrays of ``(x, y)`` (closing vertex optional); returns bool ``(H, W)``.

    Example:
        >>> sq = np.array([[0, 0], [4, 0], [4, 4], [0, 4]], float)
        >>> int(fill_polygon([sq], (6, 6)).sum())
        16
    """
    h, w = int(shape[0]), int(shape[1])
    out = np.zeros((h, w), dtype=bool)
    edges = []
    for ring in rings:
        ring = np.asarray(ring, dtype=np.float64).reshape(-1, 2)
        if len(ring) < 3:
            continue
        nxt = np.roll(ring, -1, axis=0)
        edges.append(np.concatenate([ring, nxt], axis=1))
    if not edges or h == 0 or w == 0:
        return out
    e = np.concatenate(edges)
    e = e[e[:, 1] != e[:, 3]]  # horizontal edges never cross a scanline
    if not len(e):
        return out
    x0, y0, x1, y1 = e.T
    r_lo = max(0, int(math.floor(min(y0.min(), y1.min()) - 0.5)))
    r_hi = min(h, int(math.ceil(max(y0.max(), y1.max()) + 0.5)))
    if r_lo >= r_hi:
        return out
    ymin, ymax = np.minimum(y0, y1), np.maximum(y0, y1)
    slope = (x1 - x0) / (y1 - y0)
    chunk = max(1, 4_000_000 // len(e))
    for start in range(r_lo, r_hi, chunk):
        rows = np.arange(start, min(r_hi, start + chunk))
        yc = rows[:, None] + 0.5
        hit = (ymin[None] <= yc) & (yc < ymax[None])
        xs = np.where(hit, x0[None] + (yc - y0[None]) * slope[None], np.inf)
        xs.sort(axis=1)
        ncross = hit.sum(axis=1)
        diff = np.zeros((len(rows), w + 1), dtype=np.int32)
        for k in range(0, int(ncross.max(initial=0)) - 1, 2):
            valid = ncross > k + 1
            if not valid.any():
                break
            ri = np.nonzero(valid)[0]
            # columns c with xa <= c + 0.5 < xb
            c0 = np.clip(np.ceil(xs[ri, k] - 0.5), 0, w).astype(np.int64)
            c1 = np.clip(np.ceil(xs[ri, k + 1] - 0.5), 0, w).astype(np.int64)
            keep = c1 > c0
            np.add.at(diff, (ri[keep], c0[keep]), 1)
            np.add.at(diff, (ri[keep], c1[keep]), -1)
        out[rows] = np.cumsum(diff[:, :w], axis=1) > 0
    return out


def _geom_rings(geom: Any, scale: float) -> list[list[np.ndarray]]:
    """Per polygon part, its exterior and hole rings as ``(N, 2)`` arrays divided by ``scale``."""
    from shapely.geometry import MultiPolygon

    parts = geom.geoms if isinstance(geom, MultiPolygon) else [geom]
    out = []
    for p in parts:
        if p.is_empty:
            continue
        rings = [np.asarray(p.exterior.coords)[:, :2] / scale]
        rings += [np.asarray(r.coords)[:, :2] / scale for r in p.interiors]
        out.append(rings)
    return out


def rasterize_geojson(
    features: Sequence[tuple[Any, str | None]],
    shape: tuple[int, int],
    class_names: Sequence[str],
    downsample: float = 1.0,
    background: int = 0,
    *,
    skip_unknown: bool = False,
    source: str | os.PathLike = "",
) -> np.ndarray:
    """Paint features into a class-index mask (later features win where they overlap).

    ``features`` is what :func:`read_geojson` returns. Coordinates are level-0 pixels and are divided by
    ``downsample`` (e.g. 16 for a mask at 1/16 of the slide). Each feature's class name is looked up in
    ``class_names`` (the index is the mask value). Unannotated pixels get ``background``: 0 (class 0,
    e.g. "background") for exhaustive annotations, or 255 (``IGNORE_INDEX``) for sparse ones. Holes are
    respected: a pixel in a hole keeps whatever lies beneath it. Pixel rule: see :func:`fill_polygon`.

    Shape:
        returns int64 ``(H, W)`` for ``shape = (H, W)``.

    Raises:
        DataError: a feature's class is not in ``class_names`` (unless ``skip_unknown``), naming ``source``.

    Example:
        >>> from shapely.geometry import Polygon
        >>> f = [(Polygon([(0, 0), (4, 0), (4, 4), (0, 4)], [[(1, 1), (3, 1), (3, 3), (1, 3)]]), "tumour")]
        >>> int(rasterize_geojson(f, (4, 4), ["background", "tumour"]).sum())
        12
    """
    if downsample <= 0:
        raise DataError(f"downsample must be > 0, got {downsample}")
    index = {name: i for i, name in enumerate(class_names)}
    mask = np.full((int(shape[0]), int(shape[1])), background, dtype=np.int64)
    where = f"{source}: " if source else ""
    for geom, name in features:
        if name not in index:
            if skip_unknown:
                continue
            raise DataError(
                f"{where}annotation class {name!r} is not in the class map {list(class_names)}; "
                "add it to class_names or pass skip_unknown=True"
            )
        for rings in _geom_rings(geom, float(downsample)):
            mask[fill_polygon(rings, mask.shape)] = index[name]
    return mask


def write_geojson(path: str | os.PathLike, features: list[dict[str, Any]], *,
                  properties: dict[str, Any] | None = None) -> Path:
    """A FeatureCollection of ``features``; ``properties`` (e.g. the run id) go on the collection itself."""
    import json

    fc: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    if properties:
        fc["properties"] = properties
    from pathseg.io.files import write_text

    return write_text(path, json.dumps(fc, separators=(",", ":")) + "\n")
