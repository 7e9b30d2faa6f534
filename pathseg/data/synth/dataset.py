"""The synthetic dataset (:class:`SyntheticHE`, registered as ``synthetic``) and its files on disk."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from pathseg.data.base import DATASETS, SegmentationDataset
from pathseg.data.synth.noise import _hash2, _key, _noise_points, _unit
from pathseg.data.synth.nuclei import NUCLEUS_TYPES
from pathseg.data.synth.render import render_region
from pathseg.data.synth.tissue import CLASS_NAMES, _class_map, render_mask
from pathseg.errors import ConfigError
from pathseg.sample import Sample, make_sample

_SPLITS = {"train": 0, "val": 1, "test": 2}
_STRIDE = 4096  # px between image origins: far apart relative to the 280 µm class fields


def _relabel(instances: np.ndarray) -> np.ndarray:
    ids, inv = np.unique(instances, return_inverse=True)
    out = inv.reshape(instances.shape).astype(np.int32)
    if ids[0] != 0:
        out += 1
    return out


@DATASETS.register("synthetic")
class SyntheticHE(SegmentationDataset):
    """Synthetic H&E tiles from :func:`render_region`: no files, deterministic, multi-centre.

    ``task="tissue"``: 5-class mask (``CLASS_NAMES``), ``labels`` = which classes are present.
    ``task="nuclei"``: 2-class mask (background, nucleus), ``instances`` 1..N, ``labels`` = which
    nucleus types (tumour, lymphocyte, fibroblast, apoptotic) are present.
    Image ``i`` comes from centre ``i % n_centres`` (``meta["source"] = "centre-<k>"``). The splits
    draw from disjoint bands of the virtual slide, and each image's region is chosen so it is not
    mostly bare glass.

    Example:
        >>> ds = SyntheticHE(n_images=4, size=64)
        >>> s = ds[0]; s["image"].shape, s["meta"]["source"]
        ((64, 64, 3), 'centre-0')
    """

    name = "synthetic"
    class_names = CLASS_NAMES
    download_hint = "The synthetic dataset needs no files."

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        *,
        n_images: int = 24,
        size: int = 256,
        seed: int = 0,
        task: str = "tissue",
        n_centres: int = 3,
        mpp: float = 0.5,
        split: str = "train",
    ) -> None:
        if task not in ("tissue", "nuclei"):
            raise ConfigError(f"synthetic: task must be 'tissue' or 'nuclei', got {task!r}")
        if split not in _SPLITS:
            raise ConfigError(f"synthetic: split must be one of {list(_SPLITS)}, got {split!r}")
        if n_images < 1 or size < 8 or n_centres < 1 or not mpp > 0:
            raise ConfigError(
                f"synthetic: need n_images ≥ 1, size ≥ 8, n_centres ≥ 1 and mpp > 0; "
                f"got n_images={n_images}, size={size}, n_centres={n_centres}, mpp={mpp}"
            )
        self.root = None  # type: ignore[assignment]
        self.n_images, self.size, self.seed, self.task = int(n_images), int(size), int(seed), task
        self.n_centres, self.mpp, self.split = int(n_centres), float(mpp), split
        self.class_names = list(CLASS_NAMES) if task == "tissue" else ["background", "nucleus"]
        self.label_names = list(CLASS_NAMES) if task == "tissue" else NUCLEUS_TYPES[1:]
        self.ids = [f"synthetic-{split}-{i:04d}" for i in range(self.n_images)]
        self.sources = [f"centre-{i % self.n_centres}" for i in range(self.n_images)]
        self._origins = [self._origin(i) for i in range(self.n_images)]

    def _origin(self, i: int) -> tuple[int, int]:
        band = _SPLITS[self.split] * (1 << 21)
        key = _key(self.seed, 41, _SPLITS[self.split])
        for attempt in range(32):
            h = _hash2(key, np.array([i]), np.array([attempt]))
            x = int(i * _STRIDE + _unit(h, 1)[0] * (_STRIDE - self.size))
            y = int(band + attempt * _STRIDE + _unit(h, 2)[0] * (_STRIDE - self.size))
            # keep regions that are not mostly bare glass (checked on a coarse 8x8 grid)
            pts = (np.arange(8) + 0.5) * self.size / 8
            pu, pv = np.meshgrid((x + pts) * self.mpp, (y + pts) * self.mpp)
            _, glass = _class_map(_noise_points, pu.ravel(), pv.ravel(), self.seed)
            if glass.mean() < 0.5:
                break
        return x, y

    def labels(self, i: int) -> np.ndarray:
        """Image-level labels of image ``i`` without rendering its pixels (tissue task)."""
        if self.task == "nuclei":
            return self.load(i)["labels"]
        x, y = self._origins[i]
        mask = render_mask(x, y, self.size, self.size, seed=self.seed, mpp=self.mpp)
        return np.isin(np.arange(len(CLASS_NAMES)), np.unique(mask)).astype(np.float32)

    def load(self, i: int) -> Sample:
        x, y = self._origins[i]
        centre = i % self.n_centres
        r = render_region(x, y, self.size, self.size, seed=self.seed, centre=centre, mpp=self.mpp)
        if self.task == "tissue":
            mask = r["mask"]
            instances = _relabel(r["instances"])  # nuclei come with the tissue task too
            labels = np.isin(np.arange(len(CLASS_NAMES)), np.unique(mask)).astype(np.float32)
        else:
            instances = _relabel(r["instances"])
            mask = (instances > 0).astype(np.int64)
            labels = np.isin(np.arange(1, len(NUCLEUS_TYPES)), np.unique(r["nuclei_type"])).astype(np.float32)
        return make_sample(
            r["image"], mask, id=self.ids[i], instances=instances, labels=labels,
            source=f"centre-{centre}", mpp=self.mpp, num_classes=self.num_classes,
        )


def write_synthetic_images(
    out_dir: str | os.PathLike, n: int = 24, size: int = 256, seed: int = 0, task: str = "tissue"
) -> Path:
    """Write a :class:`SyntheticHE` train split as files, each written atomically.

    Layout: ``images/<id>.png`` (RGB), ``masks/<id>.png`` (8-bit class index),
    ``instances/<id>.png`` (16-bit nucleus ids 1..N), ``labels.csv`` (``id`` then one 0/1 column
    per label name, plus ``source``). Returns ``out_dir``.
    """
    from pathseg.io.files import write_image, write_text

    out = Path(out_dir)
    ds = SyntheticHE(n_images=n, size=size, seed=seed, task=task)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", *ds.label_names, "source"])
    for i in range(len(ds)):
        s = ds[i]
        sid = s["meta"]["id"]
        write_image(out / "images" / f"{sid}.png", s["image"])
        write_image(out / "masks" / f"{sid}.png", s["mask"].astype(np.uint8))
        inst = s["instances"]
        if inst.max() > 65535:
            raise ConfigError(f"{sid}: {inst.max()} nuclei do not fit a 16-bit instance PNG; use a smaller size")
        write_image(out / "instances" / f"{sid}.png", inst.astype(np.uint16))
        w.writerow([sid, *[int(x) for x in s["labels"]], s["meta"]["source"]])
    write_text(out / "labels.csv", buf.getvalue())
    return out
