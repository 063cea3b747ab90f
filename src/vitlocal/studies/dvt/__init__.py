"""DVT as a feature cleaner (Yang et al., ECCV 2024): raw vs denoised features on this study's probes.

The algorithm lives in ``vitlocal.denoise``; this package wires it. One
experiment per task it mirrors, each running that study's own computation on
the raw and the denoised (``Layout.denoised``) feature files of one model:
``dvt_cityscapes`` (k-NN and linear, last layer), ``dvt_ade20k`` (Table 2),
``dvt_robustness`` (Fig 3), ``dvt_retrieval`` (Fig 6) and ``dvt_tracking``
(Fig 8); tasks named in ``dvt.stage1_tasks`` also read ``dvt1`` files (stage 1's
F per tile, no denoiser). ``table_dvt`` sums them up (raw, DVT, difference; the DVT paper's
numbers beside as context) and ``fig_dvt`` (PCA-to-RGB of raw, G and denoised
maps) has a rule of its own. Rules: ``rules/dvt.smk``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from ..base import Experiment, Output, Study, figure_writer, rows_of


def dvt_models(config):
    """The models DVT runs for (``dvt.models``)."""
    return list(config.get("dvt", {}).get("models", []))


def stage1_tasks(config):
    """The tasks that also read ``dvt1`` files (stage 1's F per tile: ``dvt.stage1_tasks``)."""
    return list(config.get("dvt", {}).get("stage1_tasks", []))


def _levels_of(task, files):
    """``{raw: files(layout, model, name of a raw variant), dvt: ... of its denoised variant}``, and ``dvt1``
    (stage 1 per tile) where ``task`` is one of ``dvt.stage1_tasks``."""

    def inputs(layout, model):
        levels = {"raw": files(layout, model, lambda v: v), "dvt": files(layout, model, layout.denoised)}
        if task in stage1_tasks(layout.config):
            levels["dvt1"] = files(layout, model, lambda v: layout.denoised(v, "dvt1"))
        return levels

    return inputs


def _split_files(dataset, train):
    def files(layout, model, variant):
        return {"train": layout.feature_file(dataset, train(layout), model, variant("clean")),
                "val": layout.feature_file(dataset, "val", model, variant("clean"))}

    return files


def _with_manifest(files, key, dataset, split):
    def inputs(layout, model):
        return {**files(layout, model), key: layout.manifest(dataset, split(layout))}

    return inputs


def _robustness_files(layout, model, variant):
    train = layout.main_train_set
    return {"train": layout.feature_file("cityscapes", train, model, variant("clean")),
            "val_variants": {v: layout.feature_file("cityscapes", "val", model, variant(v))
                             for v in ["clean", *layout.degradation_variants()]}}


def _retrieval_files(layout, model, variant):
    split = layout.split("fair1m")
    queries = [*layout.transform_variants(), *layout.degradation_variants()]
    return {"gallery": layout.feature_file("fair1m", split, model, variant("clean")),
            "queries": {v: layout.feature_file("fair1m", split, model, variant(v)) for v in queries}}


def _tracking_files(layout, model, variant):
    return layout.feature_file("bdd100k", layout.split("bdd100k"), model, variant("clean"))


def _levels(job):
    from .compute import LEVELS

    return {level: job.inputs[level] for level in LEVELS if level in job.inputs}


def _cityscapes(job):
    from .compute import raw_vs_dvt_rows

    return raw_vs_dvt_rows(job.model, _levels(job), target=job.target("cityscapes"), probes=job.probes)


def _ade20k(job):
    from .compute import ade20k_raw_vs_dvt_rows

    return ade20k_raw_vs_dvt_rows(job.model, _levels(job), target=job.target("ade20k"), probes=job.probes)


def _robustness(job):
    from .compute import robustness_raw_vs_dvt_rows

    return robustness_raw_vs_dvt_rows(job.model, _levels(job), target=job.target("cityscapes"), probes=job.probes)


def _retrieval(job):
    from ...subsets import read_manifest
    from ..retrieval.compute import search_settings
    from .compute import retrieval_raw_vs_dvt_rows

    return retrieval_raw_vs_dvt_rows(job.model, _levels(job), read_manifest(job.inputs["manifest"]),
                                     **search_settings(job.config))


def _tracking(job):
    from ..tracking.compute import TrackingSettings
    from .compute import tracking_raw_vs_dvt_rows

    return tracking_raw_vs_dvt_rows(job.model, _levels(job), job.inputs["manifest"], dataset="bdd100k",
                                    root=job.params["roots"]["bdd100k"], split=job.config["subsets"]["bdd100k"]["split"],
                                    settings=TrackingSettings.from_config(job.config))


def _main_train(layout):
    return layout.main_train_set


@dataclasses.dataclass(frozen=True)
class _Task:
    """One task DVT is scored on: its computation, the feature files of one level, its manifest,
    and the config keys its computation reads."""

    run: Callable
    files: Callable  #: (layout, model, variant name of a level) -> the files of that level
    manifest_role: str
    dataset: str
    split: Callable  #: layout -> the split the manifest describes
    config_keys: tuple[str, ...] = ()


_PROBES = ("probes", "seed", "device")


_TASKS = {
    "cityscapes": _Task(_cityscapes, _split_files("cityscapes", _main_train), "val_manifest", "cityscapes",
                        lambda layout: "val", (*_PROBES, "datasets.cityscapes")),
    "ade20k": _Task(_ade20k, _split_files("ade20k", lambda layout: "train"), "val_manifest", "ade20k",
                    lambda layout: "val", (*_PROBES, "datasets.ade20k")),
    "robustness": _Task(_robustness, _robustness_files, "val_manifest", "cityscapes", lambda layout: "val",
                        (*_PROBES, "datasets.cityscapes")),
    "retrieval": _Task(_retrieval, _retrieval_files, "manifest", "fair1m", lambda layout: layout.split("fair1m"),
                       ("retrieval.block_size", "retrieval.exclude_own", "probes.knn_metric", "device")),
    "tracking": _Task(_tracking, _tracking_files, "manifest", "bdd100k", lambda layout: layout.split("bdd100k"),
                      ("tracking.gaps", "tracking.roi_size", "tracking.roi_aligned", "probes.knn_metric", "device",
                       "datasets.bdd100k",
                       "subsets.bdd100k.split")),
}

#: The experiment of each task (``compute.EXPERIMENTS``; not imported from there: the registry, read by
#: the Snakefile and every figure job, would import torch with the probes).
TASK_EXPERIMENTS = {name: f"dvt_{name}" for name in _TASKS}

EXPERIMENTS = {
    TASK_EXPERIMENTS[name]: Experiment(task.run, _with_manifest(_levels_of(name, task.files), task.manifest_role,
                                                                task.dataset, task.split),
                                      config_keys=task.config_keys)
    for name, task in _TASKS.items()
}


def _table_jobs(layout):
    """Every task whose dataset is configured, for every DVT model."""
    return [job for name, task in _TASKS.items()
            for job in rows_of(TASK_EXPERIMENTS[name], dvt_models, needs=[task.dataset])(layout)]


STUDY = Study(
    name="dvt",
    experiments=EXPERIMENTS,
    outputs={
        "table_dvt": Output("table", figure_writer(__name__, "table_dvt"), _table_jobs,
                            title="Raw vs DVT-denoised features on every study's task"),
        "fig_dvt": Output("figure", available=lambda layout: bool(dvt_models(layout.config)) and
                          layout.has("cityscapes"),
                          title="PCA of raw features, DVT's artifact map G and the denoised features"),
    },
)
