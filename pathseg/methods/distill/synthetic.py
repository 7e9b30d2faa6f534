"""Synthetic classified cells for tests and benchmarks, with tool-like weak labels.

Nuclei come from :func:`pathseg.data.synth.render_region` (its ``nuclei_type`` per pixel); the cell
classes are ``CELL_CLASSES`` = background, tumour, lymphocyte, fibroblast (apoptotic fragments are
left out). Weak labels imitate a tool that confuses specific classes, not a uniform flip:
:func:`confuse` moves a share of each class to the classes it is most often mistaken for
(``WEAK_CONFUSION``: fibroblast <-> tumour mostly, lymphocyte -> tumour, scaled to a target rate).
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np

from pathseg.data.synth import NUCLEUS_TYPES, SyntheticHE, render_region

CELL_CLASSES = ["background", "tumour", "lymphocyte", "fibroblast"]

# rows: true class (tumour, lymphocyte, fibroblast); columns: the share of that class's errors per wrong class
WEAK_CONFUSION = {
    "tumour": {"fibroblast": 0.7, "lymphocyte": 0.3},
    "lymphocyte": {"tumour": 0.8, "fibroblast": 0.2},
    "fibroblast": {"tumour": 0.9, "lymphocyte": 0.1},
}
# relative error rate per true class (the tool is worst on fibroblasts, best on lymphocytes)
WEAK_CLASS_RATE = {"tumour": 0.8, "lymphocyte": 0.6, "fibroblast": 1.8}


def synthetic_cells(n_images: int, size: int, *, seed: int = 0, split: str = "train", mpp: float = 0.5
                    ) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """``(id, image, instances, class per nucleus)`` for synthetic tissue images.

    Nuclei of the types in ``CELL_CLASSES`` are kept (instances renumbered 1..N); other nuclei
    (apoptotic) are removed from the instance map.
    """
    ds = SyntheticHE(n_images=n_images, size=size, seed=seed, task="tissue", split=split, mpp=mpp)
    out = []
    type_to_class = {NUCLEUS_TYPES.index(c): i for i, c in enumerate(CELL_CLASSES) if c in NUCLEUS_TYPES}
    for i in range(len(ds)):
        x, y = ds._origins[i]
        r = render_region(x, y, size, size, seed=seed, centre=i % ds.n_centres, mpp=mpp)
        ids, inv = np.unique(r["instances"], return_inverse=True)
        inst = inv.reshape(r["instances"].shape).astype(np.int32)
        if ids[0] != 0:
            inst += 1
        n = int(inst.max())
        kind = np.zeros(n + 1, np.int64)
        kind[inst.ravel()] = r["nuclei_type"].ravel()
        cls = np.array([type_to_class.get(int(t), -1) for t in kind[1:]], np.int64)
        keep = np.concatenate([[False], cls >= 0])
        lut = np.zeros(n + 1, np.int32)
        lut[keep] = np.arange(1, keep.sum() + 1, dtype=np.int32)
        out.append((ds.ids[i], r["image"], lut[inst], cls[cls >= 0]))
    return out


def confuse(labels: np.ndarray, rate: float, *, seed: int = 0, class_names=CELL_CLASSES) -> np.ndarray:
    """Weak labels: about ``rate`` of the labels changed, by class confusion (``WEAK_CONFUSION``).

    Each true class c flips with probability ``rate · WEAK_CLASS_RATE[c] / mean rate`` (clipped to
    0.95), to a wrong class drawn from ``WEAK_CONFUSION[c]``. Background stays background.
    """
    rng = np.random.default_rng(seed)
    out = labels.copy()
    present = [c for c in WEAK_CLASS_RATE if (labels == class_names.index(c)).any()]
    counts = {c: int((labels == class_names.index(c)).sum()) for c in present}
    total = sum(counts.values()) or 1
    mean_rate = sum(WEAK_CLASS_RATE[c] * counts[c] for c in present) / total
    for c in present:
        k = class_names.index(c)
        idx = np.flatnonzero(labels == k)
        p = min(0.95, rate * WEAK_CLASS_RATE[c] / mean_rate)
        flip = idx[rng.random(idx.size) < p]
        targets = list(WEAK_CONFUSION[c])
        probs = np.array([WEAK_CONFUSION[c][t] for t in targets])
        out[flip] = np.array([class_names.index(t) for t in targets])[rng.choice(len(targets), flip.size, p=probs)]
    return out


def write_synthetic_cells(out: str | Path, n_images: int = 4, size: int = 256, *, seed: int = 0,
                          split: str = "train", weak_rate: float = 0.2, expert_fraction: float = 0.3,
                          points: bool = False) -> dict[str, Any]:
    """Write ``images/*.png``, ``instances/*.png`` and QuPath GeoJSON cells in ``truth/``, ``weak/``,
    ``expert/`` (a random ``expert_fraction`` of the cells, true classes); ``points`` writes point
    annotations (centroids) for the weak labels instead of outlines."""
    from pathseg.io.files import write_image

    from .instances import instance_centroids
    from .matching import UNKNOWN, cells_to_features
    from pathseg.io.annotations import write_geojson

    out = Path(out)
    rng = np.random.default_rng(seed + 1)
    for image_id, image, inst, cls in synthetic_cells(n_images, size, seed=seed, split=split):
        write_image(out / "images" / f"{image_id}.png", image)
        write_image(out / "instances" / f"{image_id}.png", inst.astype(np.uint16))
        weak = confuse(cls, weak_rate, seed=seed + zlib.crc32(image_id.encode()) % 100000)
        write_geojson(out / "truth" / f"{image_id}.geojson", cells_to_features(inst, cls, CELL_CLASSES))
        if points:
            cent = instance_centroids(inst)
            feats = [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [float(c[1] + 0.5),
                                                                                       float(c[0] + 0.5)]},
                      "properties": {"objectType": "annotation", "classification": {"name": CELL_CLASSES[w]}}}
                     for c, w in zip(cent, weak) if w > 0]
            write_geojson(out / "weak" / f"{image_id}.geojson", feats)
        else:
            write_geojson(out / "weak" / f"{image_id}.geojson", cells_to_features(inst, weak, CELL_CLASSES))
        chosen = cls.copy()
        chosen[rng.random(cls.size) >= expert_fraction] = UNKNOWN  # not written: the expert did not look at it
        write_geojson(out / "expert" / f"{image_id}.geojson", cells_to_features(inst, chosen, CELL_CLASSES))
    return {"out": str(out), "classes": CELL_CLASSES}
