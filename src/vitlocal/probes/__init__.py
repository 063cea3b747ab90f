"""Probes and scores on frozen patch features: k-NN, linear probe, IoU, variance analysis.

The names below are imported on first use (PEP 562): a job that needs the
k-NN or the IoU does not pay for torch's import through the linear probe.
"""

import importlib

_SOURCES = {
    "knn": ("knn_predict", "nearest_neighbors"),
    "linear": ("LinearProbe", "predict", "train_linear_probe"),
    "metrics": ("SegmentationScore", "confusion_matrix", "iou_per_class", "mean_iou", "pixel_accuracy"),
    "variance": ("batchnorm_standardise", "feature_variance", "keep_dims", "random_dims", "remove_dims", "ridge_r2",
                 "top_dims_overlap", "top_variance_dims"),
}
_MODULE_OF = {name: module for module, names in _SOURCES.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
