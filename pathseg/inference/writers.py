"""Per-slide outputs, each written atomically: class polygons (QuPath GeoJSON), overlay thumbnail,
tissue composition CSV and the JSON run record. (The label pyramid is :mod:`pathseg.io.pyramid`.)

GeoJSON follows what QuPath imports and exports: a ``FeatureCollection`` of ``Feature``s, one per
connected region, each a ``Polygon`` (with holes) in **level-0 pixel coordinates** of the slide,
with ``properties = {"objectType": "annotation", "classification": {"name": ..., "color": [r, g, b]}}``.
Vertices are the centres of the region's boundary pixels; :func:`rasterize_features` inverts this.

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

from pathseg.io.files import write_image, write_json, write_text

#: Polygonise the finest label level whose side is at most this (memory for the contour search).
MAX_POLYGON_SIDE = 8192


def _ring(points: np.ndarray, scale: float, ox: float = 0.0, oy: float = 0.0) -> list[list[float]]:
    """cv2 contour (N, 1, 2) in map pixels -> closed ring of level-0 coordinates (pixel centres)."""
    p = points.reshape(-1, 2).astype(np.float64)
    if len(p) < 3:  # a 1-2 point contour (a pixel or a thin line): its pixel squares' bounding box
        x0, y0 = p.min(0) - 0.5
        x1, y1 = p.max(0) + 0.5
        p = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    xy = (p + 0.5) * scale + np.array([ox, oy])
    ring = [[round(float(x), 3), round(float(y), 3)] for x, y in xy]
    ring.append(ring[0])
    return ring


def label_polygons(labels: np.ndarray, class_names: Sequence[str], colors: Sequence[Sequence[int]], *,
                   scale: float = 1.0, include_background: bool = False, simplify: float = 0.0,
                   id_prefix: str = "") -> list[dict[str, Any]]:
    """Polygons of each class's connected regions as QuPath GeoJSON features.

    Args:
        labels: (H, W) class map.
        scale: level-0 pixels per map pixel.
        include_background: also outline class 0.
        simplify: Douglas-Peucker tolerance in map pixels (0 keeps every corner: exact round trip).

    Shape:
        labels (H, W) integer -> list of Feature dicts.
    """
    import cv2

    feats: list[dict[str, Any]] = []
    for k, name in enumerate(class_names):
        if k == 0 and not include_background:
            continue
        mask = (labels == k).astype(np.uint8)
        if not mask.any():
            continue
        contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        if hierarchy is None:
            continue
        hier = hierarchy[0]
        color = [int(c) for c in colors[k][:3]]
        for i, cnt in enumerate(contours):
            if hier[i][3] != -1:  # a hole; added with its parent
                continue
            if simplify > 0:
                cnt = cv2.approxPolyDP(cnt, simplify, True)
            rings = [_ring(cnt, scale)]
            child = hier[i][2]
            while child != -1:
                h = contours[child]
                if simplify > 0:
                    h = cv2.approxPolyDP(h, simplify, True)
                if len(h) >= 3:
                    rings.append(_ring(h, scale))
                child = hier[child][0]
            feats.append({
                "type": "Feature",
                "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"pathseg:{id_prefix}:{k}:{len(feats)}")),
                "geometry": {"type": "Polygon", "coordinates": rings},
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": str(name), "color": color},
                    "isLocked": False,
                },
            })
    return feats


def write_geojson(path: str | os.PathLike, features: list[dict[str, Any]]) -> Path:
    import json

    text = json.dumps({"type": "FeatureCollection", "features": features}, separators=(",", ":"))
    return write_text(path, text + "\n")


def rasterize_features(features: list[dict[str, Any]], class_names: Sequence[str], shape: tuple[int, int], *,
                       scale: float = 1.0) -> np.ndarray:
    """Inverse of :func:`label_polygons`: paint each feature's class into an (H, W) map (0 elsewhere).

    Polygon boundaries are painted (they pass through the region's boundary pixels); holes are
    cleared inside their boundary.
    """
    import cv2

    index = {n: i for i, n in enumerate(class_names)}
    out = np.zeros(shape, np.uint8)
    for f in features:
        k = index[f["properties"]["classification"]["name"]]
        rings = [np.round(np.asarray(r, np.float64)[:-1] / scale - 0.5).astype(np.int32)
                 for r in f["geometry"]["coordinates"]]
        m = np.zeros(shape, np.uint8)
        cv2.fillPoly(m, [rings[0]], 1)
        if len(rings) > 1:
            cv2.fillPoly(m, rings[1:], 0)
            cv2.polylines(m, rings[1:], True, 1)
        out[m > 0] = k
    return out


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


def write_overlay(path: str | os.PathLike, rgb: np.ndarray, labels: np.ndarray,
                  colors: Sequence[Sequence[int]]) -> Path:
    import cv2

    if labels.shape != rgb.shape[:2]:
        labels = cv2.resize(labels.astype(np.uint8), (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_NEAREST)
    return write_image(path, overlay_image(rgb, labels, colors))


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


def write_composition_csv(path: str | os.PathLike, rows: list[dict[str, Any]], *, mpp: float) -> Path:
    buf = io.StringIO()
    fields = ["class_id", "class_name", "pixels", "area_mm2", "fraction", "fraction_tissue", "mpp"]
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        r = dict(r, mpp=mpp)
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
