"""Segmentation metrics against a hand-computed example and scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import jaccard_score

from vitlocal.errors import LabelError
from vitlocal.probes.metrics import (
    SegmentationScore,
    confusion_matrix,
    iou_per_class,
    mean_iou,
    pixel_accuracy,
)

# 4 classes. Class 2 is predicted but never in the target; class 3 is in neither.
TARGET = np.array([[0, 0, 1, 255], [1, 1, 0, 255]], dtype=np.uint8)
PRED = np.array([[0, 1, 1, 3], [1, 2, 0, 0]], dtype=np.uint8)


def test_hand_computed_example() -> None:
    cm = confusion_matrix(PRED, TARGET, 4)
    # Scored pixels (target != 255): (t,p) = (0,0) (0,1) (1,1) (1,1) (1,2) (0,0).
    expected = np.array([[2, 1, 0, 0], [0, 2, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(cm, expected)
    assert cm.dtype == np.int64
    iou = iou_per_class(cm)
    # class 0: tp 2, fp 0, fn 1 -> 2/3; class 1: tp 2, fp 1, fn 1 -> 2/4; class 2: 0/1; class 3: NaN
    np.testing.assert_allclose(iou[:3], [2 / 3, 0.5, 0.0])
    assert math.isnan(iou[3])
    miou, n = mean_iou(cm)
    assert n == 3
    assert miou == pytest.approx((2 / 3 + 0.5 + 0.0) / 3)
    assert mean_iou(cm, classes=[0, 1]) == (pytest.approx((2 / 3 + 0.5) / 2), 2)
    assert pixel_accuracy(cm) == pytest.approx(4 / 6)


def test_accumulator_sums_images() -> None:
    score = SegmentationScore(4)
    score.update(PRED[:1], TARGET[:1])
    score.update(PRED[1:], TARGET[1:])
    np.testing.assert_array_equal(score.cm, confusion_matrix(PRED, TARGET, 4))
    result = score.result()
    assert result["n_pixels"] == 6
    assert result["n_classes_averaged"] == 3
    assert result["miou"] == pytest.approx((2 / 3 + 0.5) / 3)
    assert result["pixel_accuracy"] == pytest.approx(4 / 6)
    assert math.isnan(result["iou"][3])


def test_matches_sklearn_on_random_maps() -> None:
    rng = np.random.default_rng(0)
    target = rng.integers(0, 19, size=(64, 128)).astype(np.uint8)
    target[rng.random(target.shape) < 0.1] = 255
    pred = np.where(rng.random(target.shape) < 0.6, target, rng.integers(0, 19, target.shape))
    pred = np.where(pred == 255, 0, pred).astype(np.uint8)
    valid = target != 255
    cm = confusion_matrix(pred, target, 19)
    labels = np.arange(19)
    np.testing.assert_array_equal(
        cm, sk_confusion_matrix(target[valid], pred[valid], labels=labels)
    )
    expected_iou = jaccard_score(target[valid], pred[valid], labels=labels, average=None)
    np.testing.assert_allclose(iou_per_class(cm), expected_iou)
    assert mean_iou(cm) == (pytest.approx(expected_iou.mean()), 19)


def test_rejects_out_of_range_and_shape_mismatch() -> None:
    with pytest.raises(
        LabelError, match=r"target contains value 7; expected class indices 0\.\.3 or 255"
    ):
        confusion_matrix(PRED, np.where(TARGET == 1, 7, TARGET), 4)
    with pytest.raises(LabelError, match="prediction contains value 9"):
        confusion_matrix(np.where(PRED == 2, 9, PRED), TARGET, 4)
    with pytest.raises(LabelError, match="shape"):
        confusion_matrix(PRED[:, :3], TARGET, 4)


def test_nothing_scored_gives_nan() -> None:
    cm = confusion_matrix(PRED, np.full_like(TARGET, 255), 4)
    assert cm.sum() == 0
    miou, n = mean_iou(cm)
    assert math.isnan(miou) and n == 0
    assert math.isnan(pixel_accuracy(cm))
