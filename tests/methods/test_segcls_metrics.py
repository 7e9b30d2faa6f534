"""BACH score, foreground accuracy, precision/recall/F1 macro+micro on hand-made arrays, each checked
against a direct per-pixel computation or a value worked out by hand."""

import numpy as np
import pytest

from pathseg.metrics import confusion_matrix
from pathseg.metrics.segcls import bach_score, foreground_accuracy, segcls_metrics


def _bach_by_hand(gt, pred):
    num = den = 0.0
    for g, p in zip(gt.ravel().tolist(), pred.ravel().tolist()):
        num += abs(p - g)
        den += max(g, abs(g - 3)) * (1 - (1 - (p > 0)) * (1 - (g > 0)))
    return 1 - num / den


def test_bach_score_matches_the_formula_pixel_by_pixel():
    gt = np.array([[0, 0, 1, 1], [2, 2, 3, 3], [0, 3, 1, 2]])
    pred = np.array([[0, 1, 1, 3], [2, 0, 3, 1], [0, 0, 2, 2]])
    # errors: |1-0|+|3-1|+|0-2|+|1-3|+|0-3|+|2-1| = 1+2+2+2+3+1 = 11
    # weights: gt0 (pred>0 once): 3; gt1: 3*max(1,2)=6; gt2: 3*max(2,1)=6; gt3: 3*3=9 -> 24
    assert bach_score(gt, pred) == pytest.approx(1 - 11 / 24) == pytest.approx(_bach_by_hand(gt, pred))
    assert bach_score(gt, gt) == 1.0
    rng = np.random.default_rng(0)
    g, p = rng.integers(0, 4, 500), rng.integers(0, 4, 500)
    assert bach_score(g, p) == pytest.approx(_bach_by_hand(g, p))


def test_foreground_accuracy_counts_only_non_background_truth():
    t = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    p = np.array([1, 2, 0, 1, 0, 2, 1, 2])
    cm = confusion_matrix(t, p, 3)
    assert foreground_accuracy(cm) == pytest.approx(3 / 5)  # truth 1,1,2,2,2 -> correct 1, 2, 2


def test_precision_recall_f1_macro_and_micro():
    t = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    p = np.array([1, 2, 0, 1, 0, 2, 1, 2])
    m = segcls_metrics(confusion_matrix(t, p, 3))
    prec = [1 / 2, 1 / 3, 2 / 3]  # per predicted column
    rec = [1 / 3, 1 / 2, 2 / 3]  # per true row
    f1 = [2 * a * b / (a + b) for a, b in zip(prec, rec)]
    assert m["precision_macro"] == pytest.approx(np.mean(prec))
    assert m["recall_macro"] == pytest.approx(np.mean(rec))
    assert m["F1_macro"] == pytest.approx(np.mean(f1))
    assert m["precision_micro"] == m["recall_micro"] == pytest.approx(4 / 8) == pytest.approx(m["accuracy"])
    # F1 weighted by ground-truth share (3, 2, 3 of 8 pixels); here it happens to equal the accuracy,
    # see test_f1_micro_is_class_f1_weighted_by_ground_truth_share for a case where it does not
    assert m["F1_micro"] == pytest.approx((3 * f1[0] + 2 * f1[1] + 3 * f1[2]) / 8)
    iou = [1 / 4, 1 / 4, 2 / 4]  # TP / (TP + FP + FN)
    assert m["IoU"] == pytest.approx(np.mean(iou))
    assert "BACH" not in m and "BACH" in segcls_metrics(confusion_matrix(t, p, 4))


def test_f1_micro_is_class_f1_weighted_by_ground_truth_share():
    # truth 0 x6, 1 x2; predictions: class 0 right 4 times and called 2 twice, class 1 right twice
    t = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    p = np.array([0, 0, 0, 0, 2, 2, 1, 1])
    m = segcls_metrics(confusion_matrix(t, p, 3))
    # by hand: F1_0 = 2·4 / (2·4 + FP 0 + FN 2) = 0.8;  F1_1 = 2·2 / (2·2 + 0 + 0) = 1;  F1_2 = 0 (TP 0, FP 2)
    # ground-truth shares 6/8, 2/8, 0/8 -> F1_micro = (6·0.8 + 2·1 + 0·0) / 8 = 6.8 / 8 = 0.85
    assert m["F1_micro"] == pytest.approx(0.85)
    # not the pooled F1 (= accuracy 6/8 for single-label pixels), and not the macro mean (0.8 + 1 + 0) / 3
    assert m["accuracy"] == pytest.approx(0.75) and m["F1_macro"] == pytest.approx(0.6)
    assert m["precision_micro"] == m["recall_micro"] == pytest.approx(0.75)
    assert np.isnan(segcls_metrics(np.zeros((3, 3)))["F1_micro"])  # no scored pixel
