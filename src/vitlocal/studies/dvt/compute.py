"""Raw vs DVT-denoised features on Cityscapes: k-NN and linear probe at the last layer.

Rows: ``segmentation.score_rows`` with experiment ``dvt_cityscapes``, level
``raw`` (the ``clean`` feature files) or ``dvt`` (the stage-2 denoiser's
output on the same patches). The probe is trained on the main training set
and scored on the val set of the same variant; the layer is the last block
(the one DVT denoises).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import pandas as pd

from vitlocal.experiments.segmentation import (
    RESULT_COLUMNS,
    EvalTarget,
    ProbeSettings,
    fit_linear,
    knn_result,
    labelled,
    linear_predictions,
    load_split,
    provenance,
    score_rows,
)
from vitlocal.features.store import read_attrs

log = logging.getLogger(__name__)
EXPERIMENT = "dvt_cityscapes"
LEVELS = ("raw", "dvt")


def raw_vs_dvt_rows(
    model: str, files: Mapping[str, Mapping[str, str]], *, target: EvalTarget, probes: ProbeSettings,
) -> pd.DataFrame:
    """``files[level] = {"train": path, "val": path}`` for level ``raw`` and ``dvt`` -> tidy rows."""
    layer = max(int(v) for v in read_attrs(files["dvt"]["val"])["layers"])
    frames = []
    for level in LEVELS:
        val = load_split(files[level]["val"], layer)
        train = labelled(load_split(files[level]["train"], layer))
        common = dict(experiment=EXPERIMENT, dataset=target.dataset, model=model, layer=val.layer, level=level,
                      class_names=target.class_names)
        knn, record = knn_result(train, val, target, probes)
        frames.append(score_rows(knn, probe="knn", **common,
                                 provenance=provenance(val.attrs, probe="knn", knn_metric=probes.knn_metric,
                                                       settings=record)))
        probe, settings = fit_linear(train, model, target, probes)
        linear = target.score(val, linear_predictions(probe, val))
        frames.append(score_rows(linear, probe="linear", **common,
                                 provenance=provenance(val.attrs, probe="linear", knn_metric=probes.knn_metric,
                                                       settings=settings)))
        log.info("%s %s layer %d: k-NN mIoU %.3f, linear mIoU %.3f", model, level, layer, knn.miou, linear.miou)
    return pd.concat(frames, ignore_index=True)[list(RESULT_COLUMNS)]
