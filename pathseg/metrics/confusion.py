"""Segmentation metrics from one confusion matrix: computed once, read many ways.

``cm[t, p]`` counts pixels whose true class is ``t`` and predicted class is ``p``. Pixels whose
target is the ignore index, or that a ``valid`` mask excludes from scoring (e.g. LUAD white
background), are not counted.

Per class c, with TP = cm[c, c], FP = column sum − TP, FN = row sum − TP:
    IoU_c  = TP / (TP + FP + FN)
    Dice_c = 2 TP / (2 TP + FP + FN)
    mIoU   = mean_c IoU_c                      (over classes present in target or prediction)
    FwIoU  = Σ_c (n_c / N) IoU_c               (n_c = true pixels of class c)
    Dice_macro = mean_c Dice_c,  Dice_micro = 2 ΣTP / (2 ΣTP + ΣFP + ΣFN)
    accuracy = ΣTP / N
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pathseg.sample import IGNORE_INDEX


def confusion_matrix(
    target: np.ndarray,
    pred: np.ndarray,
    num_classes: int,
    *,
    ignore_index: int = IGNORE_INDEX,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """Confusion matrix of int64, shape (num_classes, num_classes).

    Shape:
        target, pred, valid: any identical shape; ``valid`` is boolean (True = scored).

    Example:
        >>> confusion_matrix(np.array([0, 1, 1]), np.array([0, 1, 0]), 2)
        array([[1, 0],
               [1, 1]])
    """
    target = np.asarray(target).reshape(-1)
    pred = np.asarray(pred).reshape(-1)
    if target.shape != pred.shape:
        raise ValueError(f"target has {target.size} pixels but prediction has {pred.size}")
    keep = target != ignore_index
    if valid is not None:
        keep &= np.asarray(valid, dtype=bool).reshape(-1)
    t = target[keep].astype(np.int64)
    p = pred[keep].astype(np.int64)
    if t.size and (t.max() >= num_classes or t.min() < 0):
        raise ValueError(f"target holds class {int(t.max())}, outside 0..{num_classes - 1}")
    if p.size and (p.max() >= num_classes or p.min() < 0):
        raise ValueError(f"prediction holds class {int(p.max())}, outside 0..{num_classes - 1}")
    return np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, num_classes)


@dataclass
class SegmentationMetrics:
    """Accumulates a confusion matrix over batches and reads every metric from it.

    Example:
        >>> m = SegmentationMetrics(2, class_names=["bg", "nucleus"])
        >>> m.update(np.array([0, 1, 1, 1]), np.array([0, 1, 1, 0]))
        >>> round(m.compute()["mIoU"], 4)
        0.5833
    """

    num_classes: int
    class_names: list[str] | None = None
    ignore_index: int = IGNORE_INDEX
    cm: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.cm = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        if self.class_names is None:
            self.class_names = [str(i) for i in range(self.num_classes)]

    def reset(self) -> None:
        self.cm[:] = 0

    def update(self, target, pred, valid=None) -> None:
        """Add a batch. Accepts numpy arrays or torch tensors of class indices."""
        self.cm += confusion_matrix(_np(target), _np(pred), self.num_classes, ignore_index=self.ignore_index,
                                    valid=None if valid is None else _np(valid))

    def compute(self) -> dict[str, float | list[float]]:
        return metrics_from_confusion(self.cm, self.class_names)


def metrics_from_confusion(cm: np.ndarray, class_names: list[str] | None = None) -> dict:
    """All metrics from a confusion matrix (see module docstring for the formulas).

    Classes absent from both target and prediction get IoU/Dice NaN and are left out of the means.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    n = cm.sum()
    support = cm.sum(1)
    present = (tp + fp + fn) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(present, tp / (tp + fp + fn), np.nan)
        dice = np.where(present, 2 * tp / (2 * tp + fp + fn), np.nan)
    names = class_names or [str(i) for i in range(len(tp))]
    out: dict = {
        "mIoU": float(np.nanmean(iou)) if present.any() else float("nan"),
        "FwIoU": float(np.nansum(support / n * np.nan_to_num(iou))) if n else float("nan"),
        "Dice": float(np.nanmean(dice)) if present.any() else float("nan"),
        "Dice_micro": float(2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum())) if n else float("nan"),
        "accuracy": float(tp.sum() / n) if n else float("nan"),
        "pixels": int(n),
    }
    for i, name in enumerate(names):
        out[f"IoU/{name}"] = float(iou[i])
        out[f"Dice/{name}"] = float(dice[i])
    return out


def _np(x):
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)
