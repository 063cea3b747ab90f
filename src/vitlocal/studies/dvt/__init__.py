"""DVT as a feature cleaner (Yang et al., ECCV 2024): raw vs denoised features on this study's probes.

The algorithm lives in ``vitlocal.denoise``; this package wires it: the
``dvt_cityscapes`` experiment (k-NN and linear probe, last layer, ``clean``
vs ``dvt`` features), ``table_dvt`` (raw vs DVT with the difference, the DVT
paper's numbers beside as context) and ``fig_dvt`` (PCA-to-RGB of raw, G and
denoised maps; a rule of its own). Rules: ``rules/dvt.smk``.
"""

from __future__ import annotations

from ..base import Experiment, Output, Study, rows_of


def dvt_models(config):
    """The models DVT runs for (``dvt.models``)."""
    return list(config.get("dvt", {}).get("models", []))


def _cityscapes_inputs(layout, model):
    train = layout.main_train_set
    return {
        "raw": {"train": layout.feature_file("cityscapes", train, model),
                "val": layout.feature_file("cityscapes", "val", model)},
        "dvt": {"train": layout.feature_file("cityscapes", train, model, "dvt"),
                "val": layout.feature_file("cityscapes", "val", model, "dvt")},
        "val_manifest": layout.manifest("cityscapes", "val"),
    }


def _dvt_cityscapes(job):
    from .compute import raw_vs_dvt_rows

    return raw_vs_dvt_rows(job.model, {v: dict(p) for v, p in (("raw", job.inputs["raw"]), ("dvt", job.inputs["dvt"]))},
                           target=job.target("cityscapes"), probes=job.probes)


def _write_table(rows, out, config):
    from .figures import table_dvt

    return table_dvt(rows, out["csv"], out["tex"])


STUDY = Study(
    name="dvt",
    experiments={"dvt_cityscapes": Experiment(_dvt_cityscapes, _cityscapes_inputs)},
    outputs={
        "table_dvt": Output("table", _write_table, rows_of("dvt_cityscapes", dvt_models, needs=["cityscapes"]),
                            title="Raw vs DVT-denoised features, k-NN and linear probe (Cityscapes)"),
        "fig_dvt": Output("figure", available=lambda layout: bool(dvt_models(layout.config)) and
                          layout.has("cityscapes"),
                          title="PCA of raw features, DVT's artifact map G and the denoised features"),
    },
)
