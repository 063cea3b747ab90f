"""Feature variance (paper Section 4): a few dimensions of huge variance dominate dot-product k-NN.

Fig 4a-c, the top-m overlap across datasets and Table 6 (``compute`` has the
numbers, ``figures`` the writers). Rules: ``rules/variance.smk``.
"""

from __future__ import annotations

from ..base import Experiment, Output, Study, figure_writer, rows_of


def _main_train(layout, model):
    return layout.feature_file("cityscapes", layout.main_train_set, model)


def _removal_inputs(layout, model):
    return {"train": _main_train(layout, model), "val": layout.feature_file("cityscapes", "val", model),
            "val_manifest": layout.manifest("cityscapes", "val")}


def _r2_inputs(layout, model):
    return {**_removal_inputs(layout, model), "train_manifest": layout.manifest("cityscapes", layout.main_train_set)}


def _overlap_inputs(layout, model):
    return {"train_by_dataset": {
        "cityscapes": _main_train(layout, model),
        "ade20k": layout.feature_file("ade20k", "train", model),
        "fair1m": layout.feature_file("fair1m", layout.split("fair1m"), model),
    }}


def _variance_removal(job):
    from .compute import variance_removal_rows

    return variance_removal_rows(job.model, job.inputs["train"], job.inputs["val"],
                                 removed_dims=job.params["removed_dims"], target=job.target("cityscapes"),
                                 probes=job.probes)


def _feature_variance(job):
    from .compute import variance_spectrum_rows

    return variance_spectrum_rows(job.model, job.inputs["train"])


def _r2(job):
    from ...subsets import read_manifest
    from .compute import r2_rows

    p = job.params
    return r2_rows(job.model, job.inputs["train"], job.inputs["val"],
                   train_manifest=read_manifest(job.inputs["train_manifest"]), target=job.target("cityscapes"),
                   m=p["overlap_top"], top_classes=p["r2_top_classes"], alpha=p["ridge_alpha"], seed=p["seed"])


def _top_dims_overlap(job):
    from .compute import top_dims_overlap_rows

    return top_dims_overlap_rows(job.model, dict(job.inputs["train_by_dataset"]), m=job.params["overlap_top"])


def overlap_models(config):
    """Models with features on all three datasets of the top-dims overlap (paper: MAE)."""
    return [m for m in config["variance"]["overlap_models"]
            if m in config["study_models"] and m in config["retrieval_models"]]


def _mae_only(config):
    return [m for m in ("mae",) if m in config["study_models"]]


STUDY = Study(
    name="variance",
    experiments={
        "feature_variance": Experiment(_feature_variance, lambda layout, model: {"train": _main_train(layout, model)},
                                       gpu=False),
        "variance_removal": Experiment(_variance_removal, _removal_inputs,
                                       config_keys=("variance.removed_dims", "probes", "seed", "device",
                                                    "datasets.cityscapes")),
        "r2": Experiment(_r2, _r2_inputs, config_keys=("variance.overlap_top", "variance.r2_top_classes",
                                                       "variance.ridge_alpha", "seed", "datasets.cityscapes")),
        "top_dims_overlap": Experiment(_top_dims_overlap, _overlap_inputs, gpu=False,
                                       config_keys=("variance.overlap_top",)),
    },
    outputs={
        "fig4a": Output("figure", figure_writer(__name__, "fig4a"), rows_of("feature_variance", needs=["cityscapes"]),
                        title="Per-dimension variance of the patch features (Fig 4a)"),
        "fig4b": Output("figure", figure_writer(__name__, "fig4b"),
                        rows_of("variance_removal", _mae_only, needs=["cityscapes"]),
                        title="MAE with the top-m variance dimensions removed (Fig 4b)"),
        "fig4c": Output("figure", figure_writer(__name__, "fig4c"), rows_of("variance_removal", needs=["cityscapes"]),
                        title="All models with the top-m variance dimensions removed (Fig 4c)"),
        "top_dims_overlap": Output("figure+table", figure_writer(__name__, "top_dims_overlap"),
                                   rows_of("top_dims_overlap", overlap_models,
                                           needs=["cityscapes", "ade20k", "fair1m"]),
                                   title="Shared top-variance dimensions across datasets"),
        "table6": Output("table", figure_writer(__name__, "table6"), rows_of("r2", needs=["cityscapes"]),
                         title="Ridge R² of class fractions from the central patch (Table 6)"),
    },
)
