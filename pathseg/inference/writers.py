"""Per-slide outputs, each written atomically: class polygons (QuPath GeoJSON), overlay thumbnail,
tissue composition CSV and the JSON run record. (The label pyramid is :mod:`pathseg.io.pyramid`.)

GeoJSON follows what QuPath imports and exports: a ``FeatureCollection`` of ``Feature``s, one per
connected region, each a ``Polygon`` (with holes) in **level-0 pixel coordinates** of the slide,
with ``properties = {"objectType": "annotation", "classification": {"name": ..., "color": [r, g, b]}}``
(``"detection"`` for cells). Polygons follow the pixel edges (pixel ``(r, c)`` covers ``[c, c+1) x [r, r+1)``),
are valid per shapely and never empty; :func:`rasterize_features` inverts them.

Example:
    >>> feats = label_polygons(labels, class_names, colors, scale=2.0)   # map px -> level-0 px
    >>> write_geojson(out / "slide.geojson", feats)
"""

from __future__ import annotations

import csv
import io
import os
import platform
import sys
import uuid
from collections.abc import Sequence
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

    if object_type not in ("annotation", "detection"):
        raise ValueError(f"object_type must be 'annotation' or 'detection', got {object_type!r}")
    names = [str(n) for n in class_names]
    skip = names.index("background") if "background" in names else 0
    labels = np.ascontiguousarray(labels)
    if labels.dtype not in (np.uint8, np.int16, np.uint16, np.int32):
        labels = labels.astype(np.int32)
    wanted = np.isin(labels, [k for k in range(len(names)) if include_background or k != skip])
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
        color = [int(c) for c in colors[k][:3]]
        for g in ([MultiPolygon(polys)] if multipolygon else polys):
            feats.append({
                "type": "Feature",
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"pathseg:{id_prefix}:{k}:{len(feats)}")),
                "geometry": _rounded(mapping(g)),
                "properties": {
                    "objectType": object_type,
                    "classification": {"name": names[k], "color": color},
                    "isLocked": False,
                },
            })
    return feats


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


def overlay_image(rgb: np.ndarray, labels: np.ndarray, colors: Sequence[Sequence[int]], *, alpha: float = 0.45,
                  skip_background: bool = True) -> np.ndarray:
    """Blend class colours over ``rgb`` (same size); class 0 left untinted when ``skip_background``.

    Shape:
        rgb (H, W, 3) uint8, labels (H, W) -> (H, W, 3) uint8.
    """
    lut = np.asarray([list(c[:3]) for c in colors], np.float32)
    col = lut[np.clip(labels, 0, len(lut) - 1)]
    a = np.full(labels.shape, alpha, np.float32)
    if skip_background:
        a[labels == 0] = 0
    out = rgb.astype(np.float32) * (1 - a[..., None]) + col * a[..., None]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


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
    return write_image(path, with_legend(img, class_names, colors) if class_names else img)


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
