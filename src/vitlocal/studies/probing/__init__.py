"""Segmentation probing (paper Section 3): k-NN and linear probes of patch features.

Figs 1-3 and Table 2 (``compute`` has the numbers, ``figures`` the writers),
Fig 10 (``freqnoise_figure``), Fig 13 (``qualitative``) and Table 1. Rules:
``rules/probing.smk``.
"""

from __future__ import annotations

from ..base import Experiment, Output, Study, figure_writer, rows_of

#: Degradation kind -> the experiment of its rows (one ``degradation`` job writes them all).
DEGRADATION_EXPERIMENTS: dict[str, str] = {
    "blur": "degradation_blur",
    "noise": "degradation_noise",
    "freqnoise": "degradation_freq",
}


def _cityscapes(layout, model, **roles):
    return {**roles, "val_manifest": layout.manifest("cityscapes", "val")}


def _train_size_inputs(layout, model):
    sets = layout.config["subsets"]["cityscapes"]["train_sets"]
    return _cityscapes(layout, model,
                       train_sets={name: layout.feature_file("cityscapes", name, model) for name in sets},
                       val=layout.feature_file("cityscapes", "val", model))


def _main_train_inputs(layout, model):
    return _cityscapes(layout, model, train=layout.feature_file("cityscapes", layout.main_train_set, model),
                       val=layout.feature_file("cityscapes", "val", model))


def _degradation_inputs(layout, model):
    variants = ["clean", *layout.degradation_variants()]
    return _cityscapes(layout, model, train=layout.feature_file("cityscapes", layout.main_train_set, model),
                       val_variants={v: layout.feature_file("cityscapes", "val", model, v) for v in variants})


def _ade20k_inputs(layout, model):
    return {"train": layout.feature_file("ade20k", "train", model), "val": layout.feature_file("ade20k", "val", model),
            "val_manifest": layout.manifest("ade20k", "val")}


#: What ``job.probes`` reads (k-NN, linear schedule, BatchNorm models, seed, device).
PROBES = ("probes", "seed", "device")


def _train_size(job):
    from .compute import train_size_rows

    return train_size_rows(job.model, dict(job.inputs["train_sets"]), job.inputs["val"],
                           target=job.target("cityscapes"), probes=job.probes, units=job.units)


def _layerwise(job):
    from .compute import layerwise_rows

    return layerwise_rows(job.model, job.inputs["train"], job.inputs["val"], job.params["layers"],
                          target=job.target("cityscapes"), probes=job.probes, units=job.units)


def _degradation(job):
    from .compute import degradation_rows

    return degradation_rows(job.model, job.inputs["train"], dict(job.inputs["val_variants"]),
                            target=job.target("cityscapes"), probes=job.probes, units=job.units)


def _ade20k(job):
    from .compute import ade20k_rows

    return ade20k_rows(job.model, job.inputs["train"], job.inputs["val"], target=job.target("ade20k"),
                       probes=job.probes, units=job.units)


def _fig3_options(config):
    return {"clean_train_set": config["subsets"]["cityscapes"]["main_train_set"]}


def _cityscapes_configured(layout):
    return layout.has("cityscapes") and bool(layout.config["study_models"])


STUDY = Study(
    name="probing",
    experiments={
        "train_size": Experiment(_train_size, _train_size_inputs, config_keys=(*PROBES, "datasets.cityscapes"),
                                 units=True),
        "layerwise": Experiment(_layerwise, _main_train_inputs,
                                config_keys=(*PROBES, "datasets.cityscapes", "extraction.layers"), units=True),
        "degradation": Experiment(_degradation, _degradation_inputs, config_keys=(*PROBES, "datasets.cityscapes"),
                                  units=True),
        "ade20k": Experiment(_ade20k, _ade20k_inputs, config_keys=(*PROBES, "datasets.ade20k"), units=True),
    },
    outputs={
        "fig1": Output("figure", figure_writer(__name__, "fig1"), rows_of("train_size", needs=["cityscapes"]),
                       title="k-NN vs linear mIoU by train-set size (Fig 1)"),
        "fig2": Output("figure", figure_writer(__name__, "fig2"), rows_of("layerwise", needs=["cityscapes"]),
                       title="k-NN mIoU per layer, all / easy / hard classes (Fig 2)"),
        "fig3": Output("figure", figure_writer(__name__, "fig3", options=_fig3_options),
                       rows_of("degradation", needs=["cityscapes"]),
                       title="Robustness to blur, Gaussian noise and frequency noise (Fig 3)",
                       config_keys=("subsets.cityscapes.main_train_set",)),
        "table2": Output("table", figure_writer(__name__, "table2"), rows_of("ade20k", needs=["ade20k"]),
                         title="ADE20K k-NN and linear mIoU (Table 2)"),
        "fig10": Output("figure", available=lambda layout: layout.has("cityscapes"),
                        title="Frequency noise, band by band (Fig 10)"),
        "fig13": Output("figure", available=_cityscapes_configured,
                        title="Qualitative k-NN and linear predictions (Fig 13)"),
        "table1": Output("table", available=lambda layout: True, title="Pre-training augmentations (Table 1)"),
    },
)
