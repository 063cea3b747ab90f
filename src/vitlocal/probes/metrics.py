"""Segmentation scores: confusion matrix, per-class IoU, mIoU, pixel accuracy.

Everything derives from one ``(C, C)`` int64 confusion matrix (rows = ground
truth, columns = prediction, as in scikit-learn), so scores over a whole split
are exact sums over images, never averages of per-image scores.

Absent classes: a class with no ground-truth pixel *and* no predicted pixel
has an undefined IoU (NaN) and is left out of the mean; a class predicted but
absent from the ground truth has IoU 0 and counts. On the Cityscapes 30-image
validation set all 19 classes occur, so the mean is the mean of the 19 class
IoUs, as in the authors' code [code]. ``mean_iou`` returns how many classes
were averaged so a report can show it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vitlocal.errors import LabelError

IGNORE_INDEX = 255


def confusion_matrix(
    pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """``(C, C)`` int64 counts of (target, prediction) pairs; ignore pixels skipped.

    Sum the result over images to score a split.
    """
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise LabelError(f"prediction has shape {pred.shape} but target has {target.shape}")
    valid = target != ignore_index
    t = target[valid].astype(np.int64)
    p = pred[valid].astype(np.int64)
    _check_range(t, num_classes, "target", ignore_index)
    _check_range(p, num_classes, "prediction", None)
    counts = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """TP / (TP + FP + FN) per class; NaN where the class is in neither target nor prediction."""
    cm = _as_square(cm)
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    iou = np.full(len(cm), np.nan)
    np.divide(tp, union, out=iou, where=union > 0)
    return iou


def mean_iou(cm: np.ndarray, classes: Sequence[int] | None = None) -> tuple[float, int]:
    """Mean IoU over ``classes`` (default: all) skipping NaN classes, and the number averaged.

    Returns ``(nan, 0)`` when no class is defined.
    """
    iou = iou_per_class(cm)
    if classes is not None:
        iou = iou[np.asarray(classes, dtype=np.int64)]
    defined = iou[~np.isnan(iou)]
    if len(defined) == 0:
        return float("nan"), 0
    return float(defined.mean()), len(defined)


def pixel_accuracy(cm: np.ndarray) -> float:
    """Correct / scored pixels (ignore pixels were never counted); NaN if none scored."""
    cm = _as_square(cm)
    total = cm.sum()
    return float(np.trace(cm) / total) if total > 0 else float("nan")


class SegmentationScore:
    """Accumulates a confusion matrix image by image and reports the scores."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.cm = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        """Add one image (or any batch of pixels)."""
        self.cm += confusion_matrix(pred, target, self.num_classes, self.ignore_index)

    def result(self) -> dict[str, Any]:
        """Keys ``miou``, ``n_classes_averaged``, ``pixel_accuracy``, ``iou``, ``n_pixels``."""
        miou, n = mean_iou(self.cm)
        return {
            "miou": miou,
            "n_classes_averaged": n,
            "pixel_accuracy": pixel_accuracy(self.cm),
            "iou": iou_per_class(self.cm).tolist(),
            "n_pixels": int(self.cm.sum()),
        }


def _check_range(values: np.ndarray, num_classes: int, what: str, ignore_index: int | None) -> None:
    bad = (values < 0) | (values >= num_classes)
    if bad.any():
        allowed = f"0..{num_classes - 1}" + (
            f" or {ignore_index}" if ignore_index is not None else ""
        )
        raise LabelError(
            f"{what} contains value {int(values[bad][0])}; expected class indices {allowed}"
        )


def _as_square(cm: np.ndarray) -> np.ndarray:
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix has shape {cm.shape}; expected (C, C)")
    return cm
