"""Classification metrics (one label per item: a cell, a patch) from one confusion matrix.

``cm[t, p]`` counts items of true class t predicted as p (:func:`pathseg.metrics.confusion.confusion_matrix`).
Per class c, with TP_c = cm[c, c], n_c = row sum (support), m_c = column sum (predicted):

    precision_c = TP_c / m_c  (0 when c is never predicted, scikit-learn's ``zero_division=0``)
    recall_c    = TP_c / n_c  (0 when c has no item)
    F1_c        = 2 P_c R_c / (P_c + R_c)  (0 when both are 0)
    F1, precision, recall = Σ_c (n_c / N) · *_c   (weighted by support, scikit-learn's ``average="weighted"``;
                                                   the weighted recall equals the accuracy)
    F1_macro    = mean of F1_c over the classes present in the truth or the prediction
    accuracy    = Σ_c TP_c / N

Example:
    >>> m = classification_metrics(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), ["a", "b"])
    >>> round(m["F1"], 4), m["accuracy"]
    (0.7333, 0.75)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pathseg.metrics.confusion import confusion_matrix, metrics_from_confusion


def precision_recall_f1(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall and F1 of a confusion matrix (0 where undefined, see the module docstring).

    Shape:
        cm (K, K), rows = truth -> three float64 arrays (K,).
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp, support, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = np.where(predicted > 0, tp / predicted, 0.0)
        rec = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(prec + rec > 0, 2 * prec * rec / (prec + rec), 0.0)
    return prec, rec, f1


def classification_metrics_from_confusion(cm: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy and precision / recall / F1 (weighted by support, macro, per class) of a confusion matrix.

    Keys: F1, precision, recall, accuracy, F1_macro, n, and ``F1/<name>``, ``precision/<name>``,
    ``recall/<name>`` for every class.
    """
    cm = np.asarray(cm, dtype=np.float64)
    prec, rec, f1 = precision_recall_f1(cm)
    support, predicted = cm.sum(1), cm.sum(0)
    n = support.sum()
    w = support / n if n else support
    present = (support + predicted) > 0
    out: dict[str, Any] = {
        "F1": float((w * f1).sum()), "precision": float((w * prec).sum()), "recall": float((w * rec).sum()),
        "accuracy": metrics_from_confusion(cm)["accuracy"],
        "F1_macro": float(f1[present].mean()) if present.any() else float("nan"),
        "n": int(n),
    }
    for i, name in enumerate(class_names):
        out[f"F1/{name}"] = float(f1[i])
        out[f"precision/{name}"] = float(prec[i])
        out[f"recall/{name}"] = float(rec[i])
    return out


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """:func:`classification_metrics_from_confusion` of true and predicted class indices.

    Shape:
        y_true, y_pred (N,) int in ``0..len(class_names)-1``.
    """
    return classification_metrics_from_confusion(confusion_matrix(y_true, y_pred, len(class_names)), class_names)


__all__ = ["classification_metrics", "classification_metrics_from_confusion", "precision_recall_f1"]
