"""Fig 1 (train-set size), Fig 2 (layers), Fig 3 (degradations) and Table 2 (ADE20K): the numbers.

One function per experiment, called once per model (the workflow runs one job
per model and concatenates); each returns tidy rows (``segmentation.score_rows``)
for every class, the mean and the pixel accuracy. Plotting lives elsewhere and
reads only these rows.

Conventions of the rows (``vitlocal.published.EXPERIMENTS``):

- ``layer`` is always the block the features come from (12 = last for ViT-B).
- ``train_size``: level = train-set name (``set2``, ``set4``, ``set4_prime``, ``set8``).
- ``layerwise``: level empty, one k-NN result per layer (linear probes on request).
- ``degradation_<kind>``: level = variant name (``blur-4``, ``noise-20``,
  ``freqnoise-1``); the clean val set is repeated in every kind as level
  ``<kind>-0`` (kernel 0, sigma 0, no band) so each curve starts at the
  undegraded score and the level still fits the kind's pattern. The k-NN
  gallery is the clean training set; the linear probe is trained once on it
  and applied to every variant.
- ``ade20k``: level empty. A class with no pixel in the val label maps gets
  IoU NaN and is left out of the mean, even where it was predicted: with a
  few hundred val images some of the 150 classes are simply not there, and
  scoring their stray predictions as 0 would measure the subset draw.

Given a list ``units``, each function also appends every score's per-image
addends (``evaluation.units.segmentation_units``): the job's sidecar.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from vitlocal.datasets.cityscapes import CLASSES as CITYSCAPES_CLASSES
from vitlocal.errors import ConfigError
from vitlocal.evaluation.segmentation import (
    RESULT_COLUMNS,
    EvalTarget,
    ProbeSettings,
    SegmentationResult,
    SplitFeatures,
    fit_linear,
    knn_result,
    labelled,
    linear_predictions,
    load_split,
    provenance,
    score_rows,
)
from vitlocal.evaluation.units import segmentation_units
from vitlocal.features.degrade import parse_variant
from vitlocal.features.store import read_attrs
from vitlocal.probes.metrics import mean_iou

from . import DEGRADATION_EXPERIMENTS

PathLike = str | os.PathLike

#: Fig 2's "easy" classes; every other Cityscapes class is "hard".
EASY_CLASSES: tuple[str, ...] = ("road", "vegetation", "building", "car", "sky")
CLASS_GROUPS: tuple[str, ...] = ("all", "easy", "hard")


# --------------------------------------------------------------------------- building blocks


def _rows(
    result: SegmentationResult,
    val: SplitFeatures,
    *,
    probe: str,
    settings: Mapping[str, Any],
    experiment: str,
    model: str,
    level: str,
    target: EvalTarget,
    probes: ProbeSettings,
    units: list[pd.DataFrame] | None = None,
) -> pd.DataFrame:
    if units is not None:
        units.append(segmentation_units(result.per_image, result.image_ids, target.class_names, experiment=experiment,
                                        model=model, probe=probe, layer=val.layer, level=level))
    return score_rows(
        result,
        experiment=experiment,
        dataset=target.dataset,
        model=model,
        probe=probe,
        layer=val.layer,
        level=level,
        class_names=target.class_names,
        provenance=provenance(val.attrs, probe=probe, knn_metric=probes.knn_metric, settings=settings),
    )


def _last_layer(path: PathLike) -> int:
    return max(int(layer) for layer in read_attrs(path)["layers"])


def _both_probes(
    model: str, train_path: PathLike, val: SplitFeatures, *, experiment: str, level: str,
    target: EvalTarget, probes: ProbeSettings, units: list[pd.DataFrame] | None = None,
) -> list[pd.DataFrame]:
    """k-NN and linear rows of one train set evaluated on ``val``."""
    train = labelled(load_split(train_path, val.layer))
    result, record = knn_result(train, val, target, probes)
    out = [_rows(result, val, probe="knn", settings=record, experiment=experiment, model=model,
                 level=level, target=target, probes=probes, units=units)]
    probe, settings = fit_linear(train, model, target, probes)
    result = target.score(val, linear_predictions(probe, val))
    out.append(_rows(result, val, probe="linear", settings=settings, experiment=experiment, model=model,
                     level=level, target=target, probes=probes, units=units))
    return out


def _concat(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    table = pd.concat(frames, ignore_index=True)
    return table[list(RESULT_COLUMNS)]


# --------------------------------------------------------------------------- experiments


def train_size_rows(
    model: str,
    train_paths: Mapping[str, PathLike],
    val_path: PathLike,
    *,
    target: EvalTarget,
    probes: ProbeSettings,
    layer: int | None = None,
    units: list[pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """Fig 1: k-NN and linear probe of ``model`` for each train set (``{set name: feature file}``).

    ``layer`` ``None``: the last block stored in the val file.
    """
    if not train_paths:
        raise ConfigError("train_size_rows: no train sets given")
    val = load_split(val_path, layer)
    frames: list[pd.DataFrame] = []
    for name, path in train_paths.items():
        frames += _both_probes(model, path, val, experiment="train_size", level=name, target=target, probes=probes,
                               units=units)
    return _concat(frames)


def layerwise_rows(
    model: str,
    train_path: PathLike,
    val_path: PathLike,
    layers: Sequence[int],
    *,
    target: EvalTarget,
    probes: ProbeSettings,
    linear: bool = False,
    units: list[pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """Fig 2: k-NN of ``model`` at each of ``layers`` (and the linear probe when ``linear``)."""
    if not layers:
        raise ConfigError("layerwise_rows: no layers given")
    frames: list[pd.DataFrame] = []
    for layer in layers:
        val = load_split(val_path, layer)
        if linear:
            frames += _both_probes(model, train_path, val, experiment="layerwise", level="",
                                   target=target, probes=probes, units=units)
            continue
        train = labelled(load_split(train_path, layer))
        result, record = knn_result(train, val, target, probes)
        frames.append(_rows(result, val, probe="knn", settings=record, experiment="layerwise", model=model,
                            level="", target=target, probes=probes, units=units))
    return _concat(frames)


def degradation_rows(
    model: str,
    train_path: PathLike,
    val_paths: Mapping[str, PathLike],
    *,
    target: EvalTarget,
    probes: ProbeSettings,
    layer: int | None = None,
    units: list[pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """Fig 3: k-NN and linear probe of ``model`` on every degraded val set (``{variant name: feature file}``).

    ``val_paths`` must hold ``"clean"`` (emitted as level ``<kind>-0`` of every
    kind present) and variants ``blur-*``, ``noise-*``, ``freqnoise-*``. The
    linear probe is trained once on the clean train set. ``layer`` ``None``:
    the last block stored in the train file.
    """
    if "clean" not in val_paths:
        raise ConfigError(f"degradation_rows: val_paths has {sorted(val_paths)}; it needs the 'clean' val set too")
    experiments = {}
    for name in val_paths:
        if name == "clean":
            continue
        kind = parse_variant(name).kind
        if kind not in DEGRADATION_EXPERIMENTS:
            raise ConfigError(f"degradation_rows: variant {name!r} is not one of {sorted(DEGRADATION_EXPERIMENTS)}")
        experiments[name] = DEGRADATION_EXPERIMENTS[kind]
    layer = _last_layer(train_path) if layer is None else layer
    train = labelled(load_split(train_path, layer))
    probe, linear_settings = fit_linear(train, model, target, probes)
    kinds = sorted(set(experiments.values()), key=list(DEGRADATION_EXPERIMENTS.values()).index)
    frames: list[pd.DataFrame] = []
    for name, path in val_paths.items():
        val = load_split(path, layer)
        knn, record = knn_result(train, val, target, probes)
        linear = target.score(val, linear_predictions(probe, val))
        if name == "clean":
            levels = [(experiment, f"{_kind_of(experiment)}-0") for experiment in kinds]
        else:
            levels = [(experiments[name], name)]
        for experiment, level in levels:
            common = dict(experiment=experiment, model=model, level=level, target=target, probes=probes, units=units)
            frames.append(_rows(knn, val, probe="knn", settings=record, **common))
            frames.append(_rows(linear, val, probe="linear", settings=linear_settings, **common))
    return _concat(frames)


def _kind_of(experiment: str) -> str:
    return next(kind for kind, name in DEGRADATION_EXPERIMENTS.items() if name == experiment)


def present_classes_only(result: SegmentationResult) -> SegmentationResult:
    """``result`` with classes that have no ground-truth pixel set to NaN and left out of the mean."""
    iou = result.iou.copy()
    iou[result.confusion.sum(axis=1) == 0] = np.nan
    present = np.flatnonzero(~np.isnan(iou))
    miou, n = mean_iou(result.confusion, present) if len(present) else (float("nan"), 0)
    return dataclasses.replace(result, iou=iou, miou=miou, n_classes_averaged=n)


def ade20k_rows(
    model: str,
    train_path: PathLike,
    val_path: PathLike,
    *,
    target: EvalTarget,
    probes: ProbeSettings,
    layer: int | None = None,
    units: list[pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """Table 2: k-NN and linear mIoU of ``model`` on the ADE20K subset (150 classes; absent ones NaN)."""
    if target.dataset != "ade20k":
        raise ConfigError(f"ade20k_rows needs an ADE20K target, got {target.dataset!r}")
    val = load_split(val_path, layer)
    train = labelled(load_split(train_path, val.layer))
    knn, record = knn_result(train, val, target, probes)
    probe, settings = fit_linear(train, model, target, probes)
    linear = target.score(val, linear_predictions(probe, val))
    common = dict(experiment="ade20k", model=model, level="", target=target, probes=probes, units=units)
    return _concat([
        _rows(present_classes_only(knn), val, probe="knn", settings=record, **common),
        _rows(present_classes_only(linear), val, probe="linear", settings=settings, **common),
    ])


# --------------------------------------------------------------------------- class groups (Fig 2 panels)


def group_classes(group: str, class_names: Sequence[str]) -> list[str]:
    """Class names of Fig 2's panel ``group``: ``all``, ``easy`` (``EASY_CLASSES``) or ``hard`` (the rest)."""
    if group == "all":
        return list(class_names)
    if group == "easy":
        return [name for name in class_names if name in EASY_CLASSES]
    if group == "hard":
        return [name for name in class_names if name not in EASY_CLASSES]
    raise ValueError(f"class group {group!r}; expected one of {CLASS_GROUPS}")


def class_group_miou(df: pd.DataFrame, group: str, class_names: Sequence[str] = CITYSCAPES_CLASSES) -> pd.DataFrame:
    """Mean IoU of the ``group``'s classes per result (NaN IoUs skipped), one row per result.

    ``df``: tidy rows (per-class ``iou`` rows are used, others ignored);
    ``class_names`` are the dataset's classes (Cityscapes by default). The
    output has the key and provenance columns, ``class`` = ``group``,
    ``metric`` = ``miou``, the value and ``n_classes`` (IoUs averaged).
    """
    members = group_classes(group, class_names)
    ious = df[(df["metric"] == "iou") & df["class"].isin(members)]
    keys = [c for c in df.columns if c not in ("class", "metric", "value", "settings")]
    grouped = ious.groupby(keys, dropna=False, sort=False)["value"]
    out = grouped.mean().rename("value").reset_index()  # pandas' mean skips NaN
    out["n_classes"] = grouped.count().to_numpy()
    out["class"] = group
    out["metric"] = "miou"
    return out[[*keys, "class", "metric", "value", "n_classes"]]
