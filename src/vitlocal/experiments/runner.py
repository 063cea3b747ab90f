"""What each experiment job of the workflow computes, by name.

The Snakemake rules (rules/experiments.smk, rules/figures.smk) know *which*
files an experiment reads; this module knows *what to do* with them, so a
test (or a notebook) can run any experiment without Snakemake. Inputs are
paths keyed by role; the result is a tidy DataFrame (see reproduction.py).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from ..errors import ConfigError
from ..subsets import read_manifest
from . import probing, variance
from .segmentation import EvalTarget, ProbeSettings

#: Experiment name -> dataset whose val images score it (None: no scoring).
SCORED_ON = {
    "train_size": "cityscapes",
    "layerwise": "cityscapes",
    "degradation": "cityscapes",
    "ade20k": "ade20k",
    "variance_removal": "cityscapes",
    "r2": "cityscapes",
    "feature_variance": None,
    "top_dims_overlap": None,
}


def _target(experiment: str, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> EvalTarget | None:
    dataset = SCORED_ON[experiment]
    if dataset is None:
        return None
    return EvalTarget.load(dataset, params["roots"][dataset], inputs["val_manifest"])


def _train_size(model, inputs, params, target, probes):
    return probing.train_size_rows(model, dict(inputs["train_sets"]), inputs["val"], target=target, probes=probes)


def _layerwise(model, inputs, params, target, probes):
    return probing.layerwise_rows(model, inputs["train"], inputs["val"], params["layers"], target=target, probes=probes)


def _degradation(model, inputs, params, target, probes):
    return probing.degradation_rows(model, inputs["train"], dict(inputs["val_variants"]), target=target, probes=probes)


def _ade20k(model, inputs, params, target, probes):
    return probing.ade20k_rows(model, inputs["train"], inputs["val"], target=target, probes=probes)


def _variance_removal(model, inputs, params, target, probes):
    return variance.variance_removal_rows(
        model, inputs["train"], inputs["val"], removed_dims=params["removed_dims"], target=target, probes=probes
    )


def _feature_variance(model, inputs, params, target, probes):
    return variance.variance_spectrum_rows(model, inputs["train"])


def _r2(model, inputs, params, target, probes):
    return variance.r2_rows(
        model, inputs["train"], inputs["val"], train_manifest=read_manifest(inputs["train_manifest"]),
        target=target, m=params["overlap_top"], top_classes=params["r2_top_classes"],
        alpha=params["ridge_alpha"], seed=params["seed"],
    )


def _top_dims_overlap(model, inputs, params, target, probes):
    return variance.top_dims_overlap_rows(model, dict(inputs["train_by_dataset"]), m=params["overlap_top"])


EXPERIMENTS: dict[str, Callable[..., pd.DataFrame]] = {
    "train_size": _train_size,
    "layerwise": _layerwise,
    "degradation": _degradation,
    "ade20k": _ade20k,
    "variance_removal": _variance_removal,
    "feature_variance": _feature_variance,
    "r2": _r2,
    "top_dims_overlap": _top_dims_overlap,
}
assert set(EXPERIMENTS) == set(SCORED_ON)


def run_experiment(
    experiment: str, model: str, inputs: Mapping[str, Any], params: Mapping[str, Any], config: Mapping[str, Any]
) -> pd.DataFrame:
    """Tidy rows of ``experiment`` for ``model``.

    ``inputs``: feature files / manifests by role (see the rule's input function);
    ``params``: ``roots`` ({dataset: root}) plus the experiment's settings;
    ``config``: the validated workflow config (probe settings, seed, device).
    """
    if experiment not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {experiment!r}; known: {', '.join(EXPERIMENTS)}")
    target = _target(experiment, inputs, params)
    return EXPERIMENTS[experiment](model, inputs, params, target, ProbeSettings.from_config(config))


NUMERIC_COLUMNS = ("value", "layer", "rank", "dim")


def concat_results(paths: Sequence[str]) -> pd.DataFrame:
    """All rows (and extra columns) of several experiment CSVs as one frame.

    Text columns stay text (an empty level is ``""``, not NaN); the numeric
    ones are parsed, an empty layer becoming ``<NA>``.
    """
    frames = []
    for path in paths:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        for column in NUMERIC_COLUMNS:
            if column in table:
                values = pd.to_numeric(table[column].replace("", None), errors="raise")
                table[column] = values if column == "value" else values.astype("Int64")
        frames.append(table)
    return pd.concat(frames, ignore_index=True)
