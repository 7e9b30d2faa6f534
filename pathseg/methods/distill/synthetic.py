"""Synthetic classified cells for tests and benchmarks, with tool-like weak labels.

Nuclei come from :func:`pathseg.data.synth.render_region` (its ``nuclei_type`` per pixel); the cell
classes are ``CELL_CLASSES`` = background, tumour, lymphocyte, fibroblast (apoptotic fragments are
left out). Two kinds of weak labels:

* by appearance, as a QuPath object classifier makes them (:func:`tool_labels`): every nucleus is measured
  as QuPath's cell detection measures it (:func:`nucleus_measurements`: area, eccentricity, hematoxylin
  OD mean and std, by colour deconvolution), and a linear discriminant (:class:`ToolClassifier`) fitted on
  a few clicked cells per class from one stain centre classifies them all. Its errors follow where the
  classes' measurements overlap and where the other centres' stains shift them; nothing sets them by hand.
  :func:`cell_population` renders images until every class has enough nuclei (the expert pools of the
  distillation benchmark).
* by fiat, for unit tests (:func:`confuse`): a share of each class moved to the classes it is most often
  mistaken for (``WEAK_CONFUSION``), scaled to a target rate.
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
    (apoptotic) are removed from the instance map. Image ``i`` is from stain centre ``i % 3``.
    """
    ds = SyntheticHE(n_images=n_images, size=size, seed=seed, task="tissue", split=split, mpp=mpp)
    return [_cells_of(ds, i) for i in range(len(ds))]


def _cells_of(ds: SyntheticHE, i: int) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    x, y = ds._origins[i]
    r = render_region(x, y, ds.size, ds.size, seed=ds.seed, centre=i % ds.n_centres, mpp=ds.mpp)
    ids, inv = np.unique(r["instances"], return_inverse=True)
    inst = inv.reshape(r["instances"].shape).astype(np.int32)
    if ids[0] != 0:
        inst += 1
    n = int(inst.max())
    kind = np.zeros(n + 1, np.int64)
    kind[inst.ravel()] = r["nuclei_type"].ravel()
    type_to_class = {NUCLEUS_TYPES.index(c): k for k, c in enumerate(CELL_CLASSES) if c in NUCLEUS_TYPES}
    cls = np.array([type_to_class.get(int(t), -1) for t in kind[1:]], np.int64)
    keep = np.concatenate([[False], cls >= 0])
    lut = np.zeros(n + 1, np.int32)
    lut[keep] = np.arange(1, keep.sum() + 1, dtype=np.int32)
    return ds.ids[i], r["image"], lut[inst], cls[cls >= 0]


def cell_population(per_class: int, *, size: int = 512, seed: int = 0, split: str = "train", mpp: float = 0.5,
                    max_images: int = 2000) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """Images of :func:`synthetic_cells` (the same ids and pixels), as many as it takes for every class of
    ``CELL_CLASSES[1:]`` to have at least ``per_class`` nuclei (fibroblasts, the rarest, decide).

    Raises:
        DataError: ``max_images`` images hold too few nuclei of some class.
    """
    from pathseg.errors import DataError

    ds = SyntheticHE(n_images=max_images, size=size, seed=seed, task="tissue", split=split, mpp=mpp)
    out, counts = [], np.zeros(len(CELL_CLASSES), np.int64)
    for i in range(len(ds)):
        item = _cells_of(ds, i)
        out.append(item)
        counts += np.bincount(item[3], minlength=len(CELL_CLASSES))
        if counts[1:].min() >= per_class:
            return out
    raise DataError(f"synthetic cells ({split}, seed {seed}): {max_images} images of {size} px hold only "
                    f"{dict(zip(CELL_CLASSES[1:], counts[1:].tolist()))} nuclei; ask for fewer per class "
                    "or raise max_images")


# ------------------------------------------------------------------------------ weak labels by appearance
MEASUREMENTS = ("area", "eccentricity", "hematoxylin_od_mean", "hematoxylin_od_std")


def nucleus_measurements(image: np.ndarray, instances: np.ndarray, mpp: float = 0.5) -> np.ndarray:
    """QuPath-style nucleus measurements, one row per instance 1..N, columns ``MEASUREMENTS``:
    area in µm², eccentricity ``sqrt(1 - λ_min / λ_max)`` of the pixel coordinates' covariance, and the
    mean and standard deviation over the nucleus of the hematoxylin concentration from colour deconvolution
    with Ruifrok & Johnston's vectors (:func:`pathseg.transforms.stain.rgb_to_hed`, as QuPath's default H&E).

    Shape:
        image (H, W, 3) uint8, instances (H, W) int -> float64 (N, 4).
    """
    from scipy import ndimage as ndi

    from pathseg.transforms.stain import rgb_to_hed

    n = int(instances.max()) if instances.size else 0
    if n == 0:
        return np.zeros((0, len(MEASUREMENTS)))
    idx = np.arange(1, n + 1)
    yy, xx = np.indices(instances.shape, dtype=np.float64)
    one = np.ones(instances.shape)
    area = ndi.sum(one, instances, idx)
    mx, my = ndi.mean(xx, instances, idx), ndi.mean(yy, instances, idx)
    sxx = ndi.mean(xx * xx, instances, idx) - mx * mx
    syy = ndi.mean(yy * yy, instances, idx) - my * my
    sxy = ndi.mean(xx * yy, instances, idx) - mx * my
    half_tr, det = (sxx + syy) / 2, sxx * syy - sxy * sxy
    disc = np.sqrt(np.maximum(half_tr * half_tr - det, 0.0))
    lmax, lmin = half_tr + disc, np.maximum(half_tr - disc, 0.0)
    ecc = np.sqrt(np.clip(1.0 - lmin / np.maximum(lmax, 1e-12), 0.0, 1.0))
    od = rgb_to_hed(image)[..., 0]
    h_mean = ndi.mean(od, instances, idx)
    h_std = np.sqrt(np.maximum(ndi.mean(od * od, instances, idx) - h_mean * h_mean, 0.0))
    return np.stack([area * mpp * mpp, ecc, h_mean, h_std], 1)


class ToolClassifier:
    """A linear discriminant on standardised measurements (equal priors, pooled covariance with a small
    ridge): the kind of object classifier a QuPath user trains from a few clicked cells.

    ``predict(X) = argmax_c  x·Σ⁻¹μ_c − ½ μ_c·Σ⁻¹μ_c``.
    """

    def __init__(self, ridge: float = 1e-3) -> None:
        self.ridge = float(ridge)

    def fit(self, X: np.ndarray, y: np.ndarray) -> "ToolClassifier":
        self.classes = np.unique(y)
        self.mu0, self.sd0 = X.mean(0), X.std(0) + 1e-12
        Z = (X - self.mu0) / self.sd0
        self.means = np.stack([Z[y == c].mean(0) for c in self.classes])
        resid = np.concatenate([Z[y == c] - m for c, m in zip(self.classes, self.means)])
        cov = resid.T @ resid / max(1, len(resid) - len(self.classes)) + self.ridge * np.eye(Z.shape[1])
        self.W = np.linalg.solve(cov, self.means.T)  # Σ⁻¹ μ_c, one column per class
        self.b = -0.5 * np.einsum("cd,dc->c", self.means, self.W)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes[np.argmax(((X - self.mu0) / self.sd0) @ self.W + self.b, 1)]


def fit_tool(items: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], *, clicks: int = 10,
             features: tuple[str, ...] = MEASUREMENTS, train_centre: int = 0, n_centres: int = 3, seed: int = 0,
             mpp: float = 0.5) -> ToolClassifier:
    """A :class:`ToolClassifier` fitted on ``clicks`` cells per class drawn at random from the images of stain
    centre ``train_centre`` among ``items`` (from :func:`synthetic_cells`, whose image ``k`` is from centre
    ``k % n_centres``), on the measurement columns ``features``."""
    cols = [MEASUREMENTS.index(f) for f in features]
    xs, ys = [], []
    for k, (_, im, inst, cls) in enumerate(items):
        if k % n_centres == train_centre:
            xs.append(nucleus_measurements(im, inst, mpp)[:, cols]), ys.append(cls)
    if not xs:
        raise ValueError(f"fit_tool: no image of centre {train_centre} among {len(items)} images")
    px, py = np.concatenate(xs), np.concatenate(ys)
    rng = np.random.default_rng(seed)
    pick = np.concatenate([rng.choice(np.flatnonzero(py == c), size=min(clicks, int((py == c).sum())), replace=False)
                           for c in range(1, len(CELL_CLASSES)) if (py == c).any()])
    tool = ToolClassifier().fit(px[pick], py[pick])
    tool.features, tool.clicks, tool.train_centre, tool.mpp = tuple(features), int(clicks), int(train_centre), mpp
    return tool


def tool_labels(items: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], tool: ToolClassifier
                ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Weak labels of every nucleus of ``items`` from a tool made by :func:`fit_tool`.

    Returns ``({image id: class per nucleus}, info)`` with ``info["confusion"]`` (rows: true class 1..K-1,
    columns: weak class 0..K-1) and ``info["error"]``, the share of nuclei whose weak label is wrong.
    """
    cols = [MEASUREMENTS.index(f) for f in tool.features]
    weak = {}
    for i, im, inst, cls in items:
        m = nucleus_measurements(im, inst, tool.mpp)[:, cols]
        weak[i] = tool.predict(m).astype(np.int64) if len(m) else np.zeros(0, np.int64)
    truth = np.concatenate([c for *_, c in items])
    w = np.concatenate([weak[i] for i, *_ in items])
    k = len(CELL_CLASSES)
    conf = np.zeros((k, k), np.int64)
    np.add.at(conf, (truth, w), 1)
    return weak, {"confusion": conf[1:].tolist(), "error": float((w != truth).mean()), "clicks": tool.clicks,
                  "features": list(tool.features), "train_centre": tool.train_centre}


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
                          points: bool = False, weak_clicks: int | None = None) -> dict[str, Any]:
    """Write ``images/*.png``, ``instances/*.png`` and QuPath GeoJSON cells in ``truth/``, ``weak/``,
    ``expert/`` (a random ``expert_fraction`` of the cells, true classes); ``points`` writes point
    annotations (centroids) for the weak labels instead of outlines.

    Weak labels: with ``weak_clicks``, by appearance (:func:`fit_tool` on that many clicked cells per class of
    the written images' stain centre 0, then :func:`tool_labels`; the result's ``"weak_error"`` is the share
    it got wrong); otherwise :func:`confuse` at ``weak_rate``."""
    from pathseg.io.files import write_image

    from .instances import instance_centroids
    from .matching import UNKNOWN, cells_to_features
    from pathseg.io.annotations import write_geojson

    out = Path(out)
    rng = np.random.default_rng(seed + 1)
    items = synthetic_cells(n_images, size, seed=seed, split=split)
    by_tool, info = (None, {})
    if weak_clicks is not None:
        by_tool, info = tool_labels(items, fit_tool(items, clicks=weak_clicks, seed=seed))
    for image_id, image, inst, cls in items:
        write_image(out / "images" / f"{image_id}.png", image)
        write_image(out / "instances" / f"{image_id}.png", inst.astype(np.uint16))
        weak = (by_tool[image_id] if by_tool is not None else
                confuse(cls, weak_rate, seed=seed + zlib.crc32(image_id.encode()) % 100000))
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
    return {"out": str(out), "classes": CELL_CLASSES, **({"weak_error": info["error"]} if info else {})}
