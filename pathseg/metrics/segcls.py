"""The metrics of Ciga & Martel (2021), read from one confusion matrix (:mod:`pathseg.metrics.confusion`).

With ``cm[t, p]`` pixel counts (true class t, predicted p), TP_c = cm[c, c], FP_c = column sum − TP_c,
FN_c = row sum − TP_c:

    precision_c = TP_c / (TP_c + FP_c),   recall_c = TP_c / (TP_c + FN_c),   F1_c = 2 P_c R_c / (P_c + R_c)
    *_macro     = mean over classes present in the target or the prediction
    F1_micro    = Σ_c (n_c / N) · F1_c, the class-wise F1 weighted by each class's share of the
                  ground-truth pixels (n_c = row sum, N = all scored pixels); the paper's definition,
                  sklearn's ``average="weighted"``. Not the pooled F1, which equals the accuracy.
    precision_micro, recall_micro = from the summed TP, FP, FN (for single-label pixels both equal
                  the accuracy)
    IoU         = mean_c TP_c / (TP_c + FP_c + FN_c)   (mIoU)
    foreground_accuracy = Σ_{c≥1} TP_c / Σ_{c≥1} n_c   (pixels whose truth is not background, class 0)
    BACH score  = 1 − Σ|pred − gt| / Σ max(gt, |gt − (K−1)|) · [1 − (1 − [pred>0])(1 − [gt>0])]

The BACH score (ICIAR 2018 challenge, part B) is defined for K = 4 ordered classes (normal, benign,
in situ, invasive), where ``K − 1 = 3``; pixels that are background in both truth and prediction do
not count. Sums run over every scored pixel.

Example:
    >>> cm = confusion_matrix(np.array([0, 1, 2, 3]), np.array([0, 1, 3, 3]), 4)
    >>> round(bach_score_from_confusion(cm), 4)   # 1 - 1 / (2 + 2 + 3)
    0.8571
"""

from __future__ import annotations

import numpy as np

from pathseg.metrics.confusion import confusion_matrix, metrics_from_confusion
from pathseg.sample import IGNORE_INDEX

__all__ = ["bach_score", "bach_score_from_confusion", "foreground_accuracy", "segcls_metrics"]


def bach_score_from_confusion(cm: np.ndarray) -> float:
    """BACH score from a (K, K) confusion matrix of ordered classes (0 = normal/background).

    NaN when no pixel is foreground in truth or prediction (the denominator is 0).
    """
    cm = np.asarray(cm, dtype=np.float64)
    k = cm.shape[0]
    t = np.arange(k)[:, None]
    p = np.arange(k)[None, :]
    err = (cm * np.abs(p - t)).sum()
    counted = 1.0 - (p == 0) * (t == 0)
    denom = (cm * np.maximum(t, np.abs(t - (k - 1))) * counted).sum()
    return float(1.0 - err / denom) if denom > 0 else float("nan")


def bach_score(target: np.ndarray, pred: np.ndarray, num_classes: int = 4, *,
               ignore_index: int = IGNORE_INDEX) -> float:
    """BACH score of label maps.

    Shape:
        target, pred: any identical shape, class indices in ``0..num_classes-1``.
    """
    return bach_score_from_confusion(confusion_matrix(target, pred, num_classes, ignore_index=ignore_index))


def foreground_accuracy(cm: np.ndarray, background: int = 0) -> float:
    """Accuracy over the pixels whose truth is not ``background``."""
    cm = np.asarray(cm, dtype=np.float64)
    fg = np.arange(cm.shape[0]) != background
    n = cm[fg].sum()
    return float(np.trace(cm[np.ix_(fg, fg)]) / n) if n > 0 else float("nan")


def segcls_metrics(cm: np.ndarray, class_names: list[str] | None = None, *, bach: bool | None = None) -> dict:
    """Every metric of the paper from a confusion matrix, plus the pathseg ones (mIoU, Dice, ...).

    Keys: accuracy, precision_macro, recall_macro, F1_macro, precision_micro, recall_micro, F1_micro
    (class-wise F1 weighted by ground-truth share, see the module docstring), IoU (= mIoU),
    foreground_accuracy, per-class ``F1/<name>``, and ``BACH`` when ``bach`` (default: when there are
    4 classes).

    Example:
        >>> m = segcls_metrics(np.array([[4, 0, 2], [0, 2, 0], [0, 0, 0]]))  # rows: truth
        >>> round(m["F1_micro"], 4), round(m["accuracy"], 4)   # (6·0.8 + 2·1) / 8, 6 / 8
        (0.85, 0.75)
    """
    cm = np.asarray(cm, dtype=np.float64)
    out = metrics_from_confusion(cm, class_names)
    tp = np.diag(cm)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    present = (tp + fp + fn) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        rec = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(prec + rec > 0, 2 * prec * rec / (prec + rec), 0.0)
        s_tp, s_fp, s_fn = tp.sum(), fp.sum(), fn.sum()
        p_mi = s_tp / (s_tp + s_fp) if s_tp + s_fp > 0 else float("nan")
        r_mi = s_tp / (s_tp + s_fn) if s_tp + s_fn > 0 else float("nan")
    support = cm.sum(1)  # ground-truth pixels of each class
    n = support.sum()
    nan = float("nan")
    out.update({
        "precision_macro": float(prec[present].mean()) if present.any() else nan,
        "recall_macro": float(rec[present].mean()) if present.any() else nan,
        "F1_macro": float(f1[present].mean()) if present.any() else nan,
        "precision_micro": float(p_mi),
        "recall_micro": float(r_mi),
        "F1_micro": float((support * f1).sum() / n) if n > 0 else nan,
        "IoU": out["mIoU"],
        "foreground_accuracy": foreground_accuracy(cm),
    })
    names = class_names or [str(i) for i in range(len(tp))]
    for i, name in enumerate(names):
        out[f"F1/{name}"] = float(f1[i]) if present[i] else nan
    if bach if bach is not None else cm.shape[0] == 4:
        out["BACH"] = bach_score_from_confusion(cm)
    return out
