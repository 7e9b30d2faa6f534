"""The cell bank (per-nucleus patches and labels, one ``.npz``) and the dataset that serves it to the driver.

:class:`CellBank` holds, for every nucleus of a set of images: its patches (``size`` px at each of
``scales``), the image id, nucleus id, centroid, and up to three label vectors, each -1 where unknown:
``weak`` (from a tool, e.g. a QuPath classifier), ``expert`` (few, trusted) and ``truth`` (for evaluation
only). :mod:`pathseg.methods.distill.bank` builds banks from images and QuPath exports.

Dataset ``cell_bank`` (``data.dataset: cell_bank``) serves the patches of one bank scale. Each sample is
``{"image": (S, S, 3) uint8 patch, "labels": (C,) float32 target}``, the target a one-hot class, or for
``labels: teacher`` the teacher's softened probabilities ``softmax(z / temperature)`` (a method training on
hard labels takes their argmax). Splits:

========  =================================================================================================
train     the cells of ``bank`` whose ``labels`` (weak | expert | truth) are known, or those listed in
          ``cells`` (a ``.npy`` of bank indices); ``labels: teacher``: every cell (or ``cells``), with the
          logits in ``targets`` (a ``.npy`` (N, C) over the whole bank)
holdout   the cells listed in ``holdout`` (a ``.npy`` of bank indices), with the same labels: held-out cells
          to choose a setting on, never the evaluation set
eval      the cells of ``eval_bank`` with a known ``truth`` label, else with a known ``expert`` label
========  =================================================================================================

Example config (one classifier on weak labels; ``pathseg distill`` writes such configs for every stage)::

    data: {dataset: cell_bank, options: {bank: bank.npz, labels: weak, eval_bank: test_bank.npz},
           val_split: eval, train_transforms: [{name: rotate90}, {name: flip, vertical: 0.0}]}
    model: {name: rccnet, options: {dropout: 0.5, in_size: 32}}
    method: {name: cell_classifier}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pathseg.data.base import DATASETS, SegmentationDataset
from pathseg.errors import ConfigError, DataError
from pathseg.sample import Sample, make_sample


@dataclass
class CellBank:
    """Per-nucleus patches and labels (see the module docstring).

    Shape:
        patches uint8 (N, len(scales), size, size, 3); weak/expert/truth int64 (N,) (-1 = unknown);
        image_ids (N,) str; nucleus_ids int64 (N,) (ids in that image's instance map); centroids (N, 2).
    """

    patches: np.ndarray
    class_names: list[str]
    scales: list[float]
    image_ids: np.ndarray
    nucleus_ids: np.ndarray
    centroids: np.ndarray
    weak: np.ndarray
    expert: np.ndarray
    truth: np.ndarray

    def __len__(self) -> int:
        return int(self.patches.shape[0])

    def save(self, path: str | Path) -> Path:
        from pathseg.io.files import atomic_path

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, patches=self.patches, class_names=np.array(self.class_names),
                                    scales=np.array(self.scales, np.float64), image_ids=self.image_ids.astype(str),
                                    nucleus_ids=self.nucleus_ids, centroids=self.centroids, weak=self.weak,
                                    expert=self.expert, truth=self.truth)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "CellBank":
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: cell bank not found; build one with `pathseg cell-bank`")
        z = np.load(path, allow_pickle=False)
        return cls(patches=z["patches"], class_names=[str(c) for c in z["class_names"]],
                   scales=[float(s) for s in z["scales"]], image_ids=z["image_ids"], nucleus_ids=z["nucleus_ids"],
                   centroids=z["centroids"], weak=z["weak"], expert=z["expert"], truth=z["truth"])

    @classmethod
    def concat(cls, banks: Sequence["CellBank"]) -> "CellBank":
        b0 = banks[0]
        cat = lambda k: np.concatenate([getattr(b, k) for b in banks])  # noqa: E731
        return cls(patches=cat("patches"), class_names=b0.class_names, scales=b0.scales, image_ids=cat("image_ids"),
                   nucleus_ids=cat("nucleus_ids"), centroids=cat("centroids"), weak=cat("weak"),
                   expert=cat("expert"), truth=cat("truth"))

    def subset(self, idx: np.ndarray) -> "CellBank":
        return CellBank(patches=self.patches[idx], class_names=self.class_names, scales=self.scales,
                        image_ids=self.image_ids[idx], nucleus_ids=self.nucleus_ids[idx],
                        centroids=self.centroids[idx], weak=self.weak[idx], expert=self.expert[idx],
                        truth=self.truth[idx])

    def scale_index(self, scale: float) -> int:
        for i, s in enumerate(self.scales):
            if abs(s - scale) < 1e-9:
                return i
        raise ConfigError(f"the cell bank has patches at scales {self.scales}, not {scale}; rebuild it with that "
                          "scale or pick one of those")


LABELS = ("weak", "expert", "truth", "teacher")
SPLITS = ("train", "holdout", "eval")
_BANKS: dict[tuple[str, int, int], CellBank] = {}  # the banks read last, by (path, mtime, size)


def read_bank(path: str | Path) -> CellBank:
    """:meth:`CellBank.load`, kept in memory for the next split of the same run (the two newest files)."""
    p = Path(path)
    if not p.is_file():
        return CellBank.load(p)  # its error
    st = p.stat()
    key = (str(p.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _BANKS:
        while len(_BANKS) >= 2:
            _BANKS.pop(next(iter(_BANKS)))
        _BANKS[key] = CellBank.load(p)
    return _BANKS[key]


def _indices(path: str | None, n: int, what: str) -> np.ndarray | None:
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data.options.{what}: {p} not found; expected a .npy of cell-bank indices")
    idx = np.asarray(np.load(p), np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise DataError(f"data.options.{what}: {p} lists cells outside the bank's 0..{n - 1}")
    return idx


@DATASETS.register("cell_bank")
class CellBankDataset(SegmentationDataset):
    """The patches and labels of a :class:`~.bank.CellBank` (see the module docstring).

    Shape:
        sample["image"] uint8 (S, S, 3); sample["labels"] float32 (C,) summing to 1.
    """

    name = "cell_bank"
    eval_batch_size = 256  # fixed-size patches: validation runs them in batches, not one by one

    def __init__(self, split: str = "train", *, bank: str, labels: str = "weak", cells: str | None = None,
                 holdout: str | None = None, eval_bank: str | None = None, targets: str | None = None,
                 temperature: float = 1.0, scale: float = 1.0) -> None:
        if labels not in LABELS:
            raise ConfigError(f"data.options.labels: expected one of {', '.join(LABELS)}, got {labels!r}")
        if split not in SPLITS:
            raise ConfigError(f"dataset cell_bank: no split {split!r}; its splits are {', '.join(SPLITS)}")
        if labels == "teacher" and targets is None:
            raise ConfigError("data.options.targets: labels=teacher needs the teacher's logits (.npy, one row per "
                              "bank cell), e.g. teacher_logits.npy written by `pathseg distill`")
        self.root = Path(bank)
        self.split = split
        src = read_bank(eval_bank if split == "eval" else bank) if (split != "eval" or eval_bank) else None
        if src is None:
            raise ConfigError("dataset cell_bank: split 'eval' needs data.options.eval_bank (a cell bank with truth "
                              "or expert labels)")
        self.class_names = list(src.class_names)
        k = len(self.class_names)
        si = src.scale_index(float(scale))
        if split == "eval":
            kind = "truth" if (src.truth >= 0).any() else "expert"
            idx = np.flatnonzero(getattr(src, kind) >= 0)
            target = _one_hot(getattr(src, kind)[idx], k)
        else:
            idx = _indices(holdout if split == "holdout" else cells, len(src), "holdout" if split == "holdout"
                           else "cells")
            if split == "holdout" and idx is None:
                raise ConfigError("dataset cell_bank: split 'holdout' needs data.options.holdout (a .npy of bank "
                                  "indices)")
            if labels == "teacher":
                logits = np.load(targets)
                if logits.shape != (len(src), k):
                    raise DataError(f"data.options.targets: {targets} holds {logits.shape}, expected one row of "
                                    f"{k} logits per bank cell ({len(src)}, {k})")
                idx = np.arange(len(src)) if idx is None else idx
                z = logits[idx].astype(np.float64) / float(temperature)
                z = np.exp(z - z.max(1, keepdims=True))
                target = (z / z.sum(1, keepdims=True)).astype(np.float32)
            else:
                vec = getattr(src, labels)
                idx = np.flatnonzero(vec >= 0) if idx is None else idx[vec[idx] >= 0]
                target = _one_hot(vec[idx], k)
        self.index = idx
        self.patches = src.patches[idx, si]
        self.targets = target
        self.ids = [f"{a}:{b}" for a, b in zip(src.image_ids[idx], src.nucleus_ids[idx])]

    def load(self, i: int) -> Sample:
        return make_sample(self.patches[i], None, id=self.ids[i], labels=self.targets[i])


def _one_hot(classes: np.ndarray, k: int) -> np.ndarray:
    return np.eye(k, dtype=np.float32)[np.asarray(classes, np.int64)]


__all__ = ["CellBank", "CellBankDataset", "read_bank"]
