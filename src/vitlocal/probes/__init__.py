"""Probes and scores on frozen patch features: k-NN, linear probe, IoU, variance analysis."""

from vitlocal.probes.knn import knn_predict, nearest_neighbors
from vitlocal.probes.linear import LinearProbe, predict, train_linear_probe
from vitlocal.probes.metrics import (
    SegmentationScore,
    confusion_matrix,
    iou_per_class,
    mean_iou,
    pixel_accuracy,
)
from vitlocal.probes.variance import (
    batchnorm_standardise,
    feature_variance,
    keep_dims,
    random_dims,
    remove_dims,
    ridge_r2,
    top_dims_overlap,
    top_variance_dims,
)

__all__ = [
    "LinearProbe",
    "SegmentationScore",
    "batchnorm_standardise",
    "confusion_matrix",
    "feature_variance",
    "iou_per_class",
    "keep_dims",
    "knn_predict",
    "mean_iou",
    "nearest_neighbors",
    "pixel_accuracy",
    "predict",
    "random_dims",
    "remove_dims",
    "ridge_r2",
    "top_dims_overlap",
    "top_variance_dims",
    "train_linear_probe",
]
