"""Dataset ``pseudo_masks``: MLPS pseudo masks on disk, read back into training (Han et al., MedIA 2022).

``pathseg pseudo-masks`` (:func:`pathseg.methods.weak.pseudo.write_pseudo_masks`) writes, for every training
patch, one 8-bit label map per Grad-CAM layer (class index; 255 = ignore)::

    out/<layer>/<patch id>.png     layer in mid/late/final (:data:`LAYERS`)
    out/pseudo_masks.json          class names, layers, classifier checkpoint, count

:class:`PseudoMaskDataset` wraps the dataset the masks were written from; its training split returns the patch
with the three layers' masks packed into the one ``mask`` array (so every paired transform moves them together,
nearest-neighbour)::

    packed = final + 256 · late + 65536 · mid            (:func:`pack_masks` / :func:`unpack_masks`)

A pixel that is ``IGNORE_INDEX`` in the final layer is ignored in all three (white glass is shared, and a crop's
padding fills ``IGNORE_INDEX`` = 255 + 0 + 0). Other splits pass through unchanged. It lives in the data layer so
the dataset registry lists it whatever was imported first; :func:`score_pseudo_masks` compares the masks on disk
with a dataset's true masks.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from pathseg.data.base import DATASETS, SegmentationDataset
from pathseg.errors import DataError
from pathseg.sample import IGNORE_INDEX, Sample, make_sample

LAYERS = ("mid", "late", "final")
"""The Grad-CAM depths of MLPS, and the folders their pseudo masks are written to."""
INDEX_FILE = "pseudo_masks.json"


def pack_masks(mid: np.ndarray, late: np.ndarray, final: np.ndarray) -> np.ndarray:
    """Pack three label maps (values 0..255) into one int64 map (see module docstring)."""
    return final.astype(np.int64) + 256 * late.astype(np.int64) + 65536 * mid.astype(np.int64)


def unpack_masks(packed: Any, ignore_index: int = IGNORE_INDEX) -> dict[str, Any]:
    """Inverse of :func:`pack_masks`; pixels ignored in ``final`` are ignored in every layer.

    Shape: packed (B, H, W) int64 -> {"mid", "late", "final"}: (B, H, W) int64.
    """
    final, late, mid = packed % 256, (packed // 256) % 256, packed // 65536
    ignored = final == ignore_index
    return {k: v.masked_fill(ignored, ignore_index) for k, v in (("mid", mid), ("late", late), ("final", final))}


# -- reading --------------------------------------------------------------------------------------
@DATASETS.register("pseudo_masks")
class PseudoMaskDataset(SegmentationDataset):
    """A dataset whose training masks are MLPS pseudo masks (packed, see the module docstring).

    Options:
        masks: the folder ``pathseg pseudo-masks`` wrote.
        dataset, options: the dataset the masks were written from (its registered name and options).
    """

    name = "pseudo_masks"
    download_hint = "Write the masks first: pathseg pseudo-masks --checkpoint <phase 1 model.ckpt> ..."

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train", *, masks: str,
                 dataset: str, options: dict[str, Any] | None = None) -> None:
        import pathseg.data.patch_labels  # noqa: F401

        opts = dict(options or {})
        if root is not None:
            opts["root"] = root
        self.base = DATASETS.get(dataset)(split=split, **opts)
        self.split, self.root, self.masks = split, getattr(self.base, "root", None), Path(masks)
        self.class_names = list(self.base.class_names)
        self.ids = list(self.base.ids)
        self.sources = list(getattr(self.base, "sources", [""] * len(self.ids)))
        self.eval_batch_size = getattr(self.base, "eval_batch_size", 1)  # other splits are the base's samples
        if split == "train":
            if not (self.masks / INDEX_FILE).is_file():
                raise DataError(f"{self.masks}: no {INDEX_FILE}; {self.download_hint}")
            missing = [i for i in self.ids[:1000] if not (self.masks / "final" / f"{i}.png").exists()]
            if missing:
                raise DataError(f"{self.masks}: no pseudo mask for {len(missing)} patches (first {missing[0]}); "
                                "run pathseg pseudo-masks again with the same data options (it resumes)")

    def load(self, i: int) -> Sample:
        s = self.base[i]
        if self.split != "train":
            return s
        from pathseg.io.files import read_image

        sid = self.ids[i]
        layers = [read_image(self.masks / layer / f"{sid}.png", mode=None) for layer in LAYERS]
        if layers[0].shape != s["image"].shape[:2]:
            raise DataError(f"{self.masks}/mid/{sid}.png: size {layers[0].shape} differs from the patch "
                            f"{s['image'].shape[:2]}; the masks were written from other data options")
        packed = pack_masks(*layers)
        return make_sample(s["image"], packed, id=sid, labels=s["labels"], source=s["meta"].get("source", ""),
                           mpp=s["meta"].get("mpp"), path=s["meta"].get("path", ""))


def score_pseudo_masks(dataset: SegmentationDataset, masks: str | os.PathLike,
                       layers: tuple[str, ...] = LAYERS) -> dict[str, dict[str, Any]]:
    """Every metric of each layer's pseudo masks against the dataset's true masks, one confusion matrix per layer.

    ``dataset``: the dataset the masks were written from (its samples' ``meta["id"]`` name the files).
    Returns ``{layer: metrics}`` (:func:`pathseg.metrics.confusion.metrics_from_confusion` keys: mIoU, accuracy,
    ``IoU/<class>``, ...).
    """
    from pathseg.io.files import read_image
    from pathseg.metrics import SegmentationMetrics

    folder = Path(masks)
    out = {}
    for layer in layers:
        m = SegmentationMetrics(len(dataset.class_names), class_names=list(dataset.class_names))
        for i in range(len(dataset)):
            s = dataset[i]
            path = folder / layer / f"{s['meta']['id']}.png"
            if not path.is_file():
                raise DataError(f"{path}: no pseudo mask for patch {s['meta']['id']!r}; write them with "
                                "`pathseg pseudo-masks` from this dataset")
            m.update(s["mask"], read_image(path, mode=None))
        out[layer] = m.compute()
    return out
