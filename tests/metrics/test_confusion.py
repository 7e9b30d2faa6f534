"""Metrics against a confusion matrix and values computed by hand."""

import math

import numpy as np
import pytest

from pathseg.metrics import SegmentationMetrics, confusion_matrix, metrics_from_confusion

# 3 classes, 10 scored pixels + 2 ignored (255):
#   target: 0 0 0 0 1 1 1 2 2 2 255 255
#   pred:   0 0 1 2 1 1 0 2 2 1   0   1
TARGET = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 255, 255])
PRED = np.array([0, 0, 1, 2, 1, 1, 0, 2, 2, 1, 0, 1])


def test_confusion_matrix_by_hand():
    cm = confusion_matrix(TARGET, PRED, 3)
    expected = np.array([[2, 1, 1],
                         [1, 2, 0],
                         [0, 1, 2]])
    np.testing.assert_array_equal(cm, expected)


def test_metrics_by_hand():
    m = metrics_from_confusion(confusion_matrix(TARGET, PRED, 3), ["a", "b", "c"])
    # class a: TP 2, FP 1, FN 2 -> IoU 2/5, Dice 4/7
    # class b: TP 2, FP 2, FN 1 -> IoU 2/5, Dice 4/7
    # class c: TP 2, FP 1, FN 1 -> IoU 2/4, Dice 4/6
    assert m["IoU/a"] == pytest.approx(0.4)
    assert m["IoU/b"] == pytest.approx(0.4)
    assert m["IoU/c"] == pytest.approx(0.5)
    assert m["mIoU"] == pytest.approx((0.4 + 0.4 + 0.5) / 3)
    assert m["Dice"] == pytest.approx((4 / 7 + 4 / 7 + 4 / 6) / 3)
    # support a=4, b=3, c=3 of N=10
    assert m["FwIoU"] == pytest.approx(0.4 * 0.4 + 0.3 * 0.4 + 0.3 * 0.5)
    # micro Dice: 2*6 / (2*6 + 4 + 4)
    assert m["Dice_micro"] == pytest.approx(12 / 20)
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["pixels"] == 10


def test_valid_mask_excludes_pixels():
    valid = np.ones_like(TARGET, bool)
    valid[3] = False  # the (0 -> 2) error is not scored
    cm = confusion_matrix(TARGET, PRED, 3, valid=valid)
    assert cm[0, 2] == 0 and cm.sum() == 9


def test_accumulates_across_batches_like_one_batch():
    acc = SegmentationMetrics(3)
    acc.update(TARGET[:5], PRED[:5])
    acc.update(TARGET[5:], PRED[5:])
    whole = SegmentationMetrics(3)
    whole.update(TARGET, PRED)
    np.testing.assert_array_equal(acc.cm, whole.cm)


def test_absent_class_is_nan_and_left_out_of_the_mean():
    m = metrics_from_confusion(confusion_matrix(np.array([0, 0, 1]), np.array([0, 0, 1]), 3))
    assert math.isnan(m["IoU/2"])
    assert m["mIoU"] == pytest.approx(1.0)


def test_torch_inputs_and_out_of_range_prediction():
    import torch

    m = SegmentationMetrics(2)
    m.update(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))
    assert m.compute()["accuracy"] == 1.0
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.array([0, 1]), np.array([0, 5]), 2)
