"""QuPath cell annotations <-> segmented nuclei: import, matching, and GeoJSON export.

Import (:func:`read_cells`): a QuPath GeoJSON export of detections or cells (``FeatureCollection``,
a bare list of ``Feature`` objects, or one ``Feature``). Each feature gives one cell with its class
``properties.classification.name`` (features without a class are skipped) and a geometry:
``nucleusGeometry`` when present (QuPath cell objects carry it beside the cell boundary), else
``geometry``; a ``Point``/``MultiPoint`` (a point annotation) or a ``Polygon``/``MultiPolygon``.
Coordinates are pixels of the image (level 0), divided by ``downsample``.

Matching (:func:`match_cells`), per segmented nucleus:

* a polygon annotation claims the nucleus it overlaps most, when that overlap is at least
  ``min_overlap`` of the nucleus's or the polygon's area (pixel rule of
  :func:`pathseg.io.annotations.fill_polygon`);
* a point annotation claims the nucleus under it, else the nucleus whose centroid is nearest, within
  ``max_distance`` px;
* a nucleus claimed more than once takes the claim with the largest overlap (points count as
  overlap 1.0, i.e. a point inside a nucleus wins);
* a nucleus nobody claims is unknown (:data:`UNKNOWN`, -1), never ``background``: expert
  annotations are sparse, so an unannotated nucleus is usually a real cell nobody looked at.
  An unknown label is never a training target; "background" is a class only where an annotation says so.

Export (:func:`cells_to_features`): one QuPath ``detection`` per nucleus, the nucleus outline as a
``Polygon`` (vertices at the centres of its boundary pixels, :func:`_ring`),
``properties.classification = {"name", "color"}`` and ``measurements`` with the class probability.
Nuclei of unknown class (-1) are never written; those of the class named ``background`` only when
asked (``include_background``), whatever its index in the class list.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pathseg.errors import DataError

BACKGROUND = "background"
#: the class of a nucleus no annotation claims (the cell bank's "unknown"; training ignores it)
UNKNOWN = -1


@dataclass
class Cell:
    """One annotated cell: its class name and geometry (shapely, image pixels)."""

    name: str
    geometry: Any

    @property
    def is_point(self) -> bool:
        return self.geometry.geom_type in ("Point", "MultiPoint")


def read_cells(path: str | os.PathLike, *, downsample: float = 1.0) -> list[Cell]:
    """Classified cells of a QuPath GeoJSON export (see the module docstring).

    Shape:
        returns ``[Cell(name, shapely geometry), ...]`` in file order.

    Example:
        >>> cells = read_cells("weak/image-01.geojson")  # doctest: +SKIP
        >>> cells[0].name, cells[0].geometry.geom_type  # doctest: +SKIP
        ('Tumor', 'Polygon')
    """
    from shapely import affinity
    from shapely.geometry import shape

    from pathseg.io.annotations import _class_name, geojson_features

    path = Path(path)
    items = geojson_features(path, what="cell annotations",
                             hint="export them from QuPath (File > Export objects as GeoJSON, detections or cells)")
    cells: list[Cell] = []
    for n, feat in enumerate(items):
        if not isinstance(feat, dict):
            continue
        props = feat.get("properties") or {}
        name = _class_name(props)
        geo = feat.get("nucleusGeometry") or props.get("nucleusGeometry") or feat.get("geometry")
        if name is None or not geo:
            continue
        try:
            geom = shape(geo)
        except Exception as e:  # shapely raises several types for malformed coordinates
            raise DataError(f"{path}: feature {n} has a malformed geometry ({e}); fix or re-export it") from e
        if geom.is_empty or geom.geom_type not in ("Point", "MultiPoint", "Polygon", "MultiPolygon"):
            continue
        if downsample != 1.0:
            geom = affinity.scale(geom, 1 / downsample, 1 / downsample, origin=(0, 0))
        cells.append(Cell(name, geom))
    return cells


def match_cells(
    instances: np.ndarray,
    cells: Sequence[Cell],
    class_names: Sequence[str],
    *,
    min_overlap: float = 0.3,
    max_distance: float = 6.0,
    strict: bool = True,
) -> np.ndarray:
    """Class index of every segmented nucleus 1..N from annotated cells (rules: module docstring).

    A nucleus no annotation claims gets :data:`UNKNOWN` (-1). An annotation class not in
    ``class_names`` raises (``strict``) or is skipped.

    Shape:
        instances (H, W) int (0 = none, 1..N) -> int64 (N,) in -1..len(class_names)-1; entry i is nucleus i+1.

    Example:
        >>> from shapely.geometry import Point
        >>> inst = np.zeros((8, 8), np.int32); inst[1:4, 1:4] = 1; inst[5:8, 5:8] = 2
        >>> match_cells(inst, [Cell("tumour", Point(2.5, 2.5))], ["background", "tumour"]).tolist()
        [1, -1]
    """
    from pathseg.io.annotations import _geom_rings, fill_polygon

    from .instances import instance_centroids

    index = {c: i for i, c in enumerate(class_names)}
    n = int(instances.max()) if instances.size else 0
    labels = np.full(n, UNKNOWN, np.int64)
    best = np.zeros(n, np.float64)
    if n == 0:
        return labels
    h, w = instances.shape
    area = np.bincount(instances.ravel(), minlength=n + 1).astype(np.float64)
    cent = instance_centroids(instances)
    for cell in cells:
        if cell.name not in index:
            if strict:
                raise DataError(f"annotation class {cell.name!r} is not one of {list(class_names)}; add it to the "
                                "class list or pass strict=False to skip it")
            continue
        k = index[cell.name]
        if cell.is_point:
            pts = [cell.geometry] if cell.geometry.geom_type == "Point" else list(cell.geometry.geoms)
            for p in pts:
                x, y = p.x, p.y
                r, c = int(np.floor(y)), int(np.floor(x))
                j = int(instances[r, c]) if 0 <= r < h and 0 <= c < w else 0
                score = 1.0
                if j == 0:
                    d = np.hypot(cent[:, 0] - (y - 0.5), cent[:, 1] - (x - 0.5))
                    jj = int(np.argmin(d))
                    if d[jj] > max_distance:
                        continue
                    j, score = jj + 1, 0.5 - d[jj] / (2 * max_distance + 1e-9)  # in (0, 0.5): below any hit
                if score > best[j - 1]:
                    best[j - 1], labels[j - 1] = score, k
            continue
        x0, y0, x1, y1 = cell.geometry.bounds
        r0, c0 = max(0, int(np.floor(y0)) - 1), max(0, int(np.floor(x0)) - 1)
        r1, c1 = min(h, int(np.ceil(y1)) + 1), min(w, int(np.ceil(x1)) + 1)
        if r1 <= r0 or c1 <= c0:
            continue
        filled = np.zeros((r1 - r0, c1 - c0), bool)
        for rings in _geom_rings(cell.geometry, 1.0):
            filled |= fill_polygon([rg - np.array([c0, r0]) for rg in rings], filled.shape)
        if not filled.any():
            continue
        hits = np.bincount(instances[r0:r1, c0:c1][filled], minlength=n + 1)
        hits[0] = 0
        j = int(np.argmax(hits))
        if hits[j] == 0:
            continue
        score = hits[j] / min(area[j], float(filled.sum()))  # overlap / smaller area
        if score >= min_overlap and score > best[j - 1]:
            best[j - 1], labels[j - 1] = score, k
    return labels


def _ring(points: np.ndarray, scale: float, ox: float = 0.0, oy: float = 0.0) -> list[list[float]]:
    """cv2 contour (N, 1, 2) in map pixels -> closed ring of output coordinates through the pixel centres.

    A 1-2 point contour (one pixel or a thin line) becomes its pixel squares' bounding box.
    """
    p = points.reshape(-1, 2).astype(np.float64)
    if len(p) < 3:
        x0, y0 = p.min(0) - 0.5
        x1, y1 = p.max(0) + 0.5
        p = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    xy = (p + 0.5) * scale + np.array([ox, oy])
    ring = [[round(float(x), 3), round(float(y), 3)] for x, y in xy]
    ring.append(ring[0])
    return ring


def cells_to_features(
    instances: np.ndarray,
    classes: np.ndarray,
    class_names: Sequence[str],
    *,
    colors: Sequence[Sequence[int]] | None = None,
    probabilities: np.ndarray | None = None,
    scale: float = 1.0,
    offset: tuple[float, float] = (0.0, 0.0),
    include_background: bool = False,
    background: str = BACKGROUND,
    object_type: str = "detection",
    id_prefix: str = "",
) -> list[dict[str, Any]]:
    """QuPath GeoJSON features, one per nucleus of known class (see the module docstring).

    Args:
        classes: class index per nucleus 1..N (entry i = nucleus i+1); :data:`UNKNOWN` (-1) is not written.
        probabilities: optional (N,) confidence of that class, written as a measurement.
        scale, offset: output coordinates = (map pixel centre) * scale + offset (level-0 pixels).
        include_background: also write nuclei of the class named ``background`` (matched by name,
            not index: ``["other", "immune", "muscle", "background"]`` drops index 3 only; a class list
            without that name drops nothing).
        background: that class's name.

    Shape:
        instances (H, W) int, classes (N,) int -> list of N' ≤ N Feature dicts.

    Example:
        >>> inst = np.zeros((8, 8), np.int32); inst[1:4, 1:4] = 1; inst[5:8, 5:8] = 2
        >>> feats = cells_to_features(inst, np.array([0, 1]), ["other", "background"])
        >>> [f["properties"]["classification"]["name"] for f in feats]
        ['other']
    """
    import cv2

    from pathseg.models.checkpoint import default_colors

    colors = colors or default_colors(len(class_names))
    feats: list[dict[str, Any]] = []
    n = int(instances.max()) if instances.size else 0
    if len(classes) != n:
        raise DataError(f"cells_to_features: {len(classes)} classes for {n} nuclei; pass one class per nucleus")
    from scipy import ndimage as ndi

    classes = np.asarray(classes, np.int64)
    if classes.size and (classes.min() < UNKNOWN or classes.max() >= len(class_names)):
        raise DataError(f"cells_to_features: class indices must be in -1..{len(class_names) - 1} for classes "
                        f"{list(class_names)}, got {int(classes.min())}..{int(classes.max())}")
    skip = {UNKNOWN} | (set() if include_background else {i for i, c in enumerate(class_names) if c == background})
    boxes = ndi.find_objects(instances.astype(np.int32))
    for j, box in enumerate(boxes):
        if box is None:
            continue
        k = int(classes[j])
        if k in skip:
            continue
        sub = (instances[box] == j + 1).astype(np.uint8)
        contours, _ = cv2.findContours(np.pad(sub, 1), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        if not contours:
            continue
        cnt = max(contours, key=cv2.contourArea)
        ox = offset[0] + (box[1].start - 1) * scale
        oy = offset[1] + (box[0].start - 1) * scale
        props: dict[str, Any] = {
            "objectType": object_type,
            "classification": {"name": str(class_names[k]), "color": [int(c) for c in colors[k][:3]]},
            "isLocked": False,
        }
        if probabilities is not None:
            props["measurements"] = {"probability": round(float(probabilities[j]), 4)}
        feats.append({
            "type": "Feature",
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"pathseg:cell:{id_prefix}:{j + 1}")),
            "geometry": {"type": "Polygon", "coordinates": [_ring(cnt, scale, ox, oy)]},
            "properties": props,
        })
    return feats
