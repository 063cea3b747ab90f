"""A local-feature card for any backbone (issue 22): ``snakemake card_<model>`` and ``snakemake cards``.

The ``card`` experiment reads the last layer of the model's Cityscapes train
and val features once and computes the card's own diagnostics, each with a
95 % bootstrap interval over the val images (``compute``): the best m of the
top-m removal is chosen on held-out training images, never on val; with
``card.dvt`` on, a model of ``dvt.models`` also gets the DVT post-processor (the
dvt study's denoised files, its denoiser timed) and DVT's artifact share (its
stage-1 file). The card itself
(``figures``) adds what the other studies' experiment CSVs say about the model
(``summary``), each number with its interval from the per-unit statistics those
experiments write beside their CSVs (``evaluation.units``); the models of
``card.models`` are drawn in grey beside it.
Rules: ``rules/card.smk``.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..base import Experiment, Output, Study

#: Share of the training images held out to choose the best m (the rest is the k-NN gallery of that choice).
HELD_OUT_SHARE = 0.25

#: Experiments a card may read (``card.reads``) -> the datasets they need.
READABLE = {
    "layerwise": ("cityscapes",),
    "train_size": ("cityscapes",),
    "degradation": ("cityscapes",),
    "ade20k": ("ade20k",),
    "fair1m_retrieval": ("fair1m",),
    "tracking": ("bdd100k",),
}


def card_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """``card.*`` with defaults: models (null: ``study_models``), reads, resamples, dvt."""
    card = dict(config.get("card") or {})
    models = card.get("models")
    return {
        "models": list(config.get("study_models", []) if models is None else models),
        "reads": list(card.get("reads", list(READABLE))),
        "resamples": int(card.get("resamples", 1000)),
        "dvt": bool(card.get("dvt", False)),
    }


def card_dvt_models(config: Mapping[str, Any]) -> list[str]:
    """Carded models whose card has the DVT rows: those of ``dvt.models`` when ``card.dvt`` is on.

    Off by default: every card draws the other carded models' card CSVs in grey, so with it on
    ``snakemake card_<any model>`` builds DVT's stages 1-2 for each of them (~42 GPU-hours per ViT-B).
    """
    from ..dvt import dvt_models

    settings = card_settings(config)
    return [m for m in dvt_models(config) if m in settings["models"]] if settings["dvt"] else []


def card_models(layout) -> list[str]:
    """Models with a card (none when Cityscapes, which the diagnostics read, is not configured)."""
    return card_settings(layout.config)["models"] if layout.has("cityscapes") else []


def read_jobs(layout, model: str) -> list[tuple[str, str]]:
    """The other studies' ``(experiment, model)`` CSVs the card of ``model`` reads."""
    reads = card_settings(layout.config)["reads"]
    return [(e, model) for e in reads if layout.has(*READABLE[e])]


def card_jobs(layout) -> list[tuple[str, str]]:
    """Every CSV the cards draw: each card model's ``card`` experiment and the CSVs it reads."""
    jobs: dict[tuple[str, str], None] = {}
    for model in card_models(layout):
        jobs[("card", model)] = None
        jobs.update(dict.fromkeys(read_jobs(layout, model)))
    return list(jobs)


def card_paths(layout, model: str) -> dict[str, str]:
    """The card files of ``model`` by suffix."""
    return {s: f"{layout.results}/cards/{model}/card.{s}" for s in ("pdf", "png", "json", "csv")}


def card_reads(layout, model: str) -> list[str]:
    """The files the card of ``model`` draws: every carded model's ``card`` CSV, the CSVs it reads with their
    per-unit statistics (the intervals of the read numbers), and the other carded models' per-layer k-NN (drawn
    in grey)."""
    models = card_models(layout)
    jobs = [("card", m) for m in models] + read_jobs(layout, model)
    for other in models:
        jobs += [job for job in read_jobs(layout, other) if job[0] == "layerwise"]
    csvs = [layout.experiment_file(e, m) for e, m in jobs]
    return list(dict.fromkeys(csvs + [layout.experiment_units(e, m) for e, m in read_jobs(layout, model)]))


def _inputs(layout, model):
    """The last layer's train and val files and manifests; for a model of ``card_dvt_models`` also the dvt
    study's denoised files, its denoiser (timed on val) and its stage-1 file (the artifact share)."""
    from ..dvt.wiring import checkpoint_path, stage1_path

    train = layout.main_train_set
    inputs = {"train": layout.feature_file("cityscapes", train, model),
              "val": layout.feature_file("cityscapes", "val", model),
              "train_manifest": layout.manifest("cityscapes", train),
              "val_manifest": layout.manifest("cityscapes", "val")}
    if model in card_dvt_models(layout.config):
        inputs["dvt"] = {"train": layout.feature_file("cityscapes", train, model, layout.denoised()),
                         "val": layout.feature_file("cityscapes", "val", model, layout.denoised()),
                         "checkpoint": checkpoint_path(layout.config, layout.results, model)}
        inputs["stage1"] = stage1_path(layout.results, model)
    return inputs


def _card(job):
    from ...evaluation.segmentation import EvalTarget
    from .compute import card_rows

    train_target = EvalTarget.load("cityscapes", job.params["roots"]["cityscapes"], job.inputs["train_manifest"])
    return card_rows(job.model, job.inputs["train"], job.inputs["val"], target=job.target("cityscapes"),
                     train_target=train_target, probes=job.probes,
                     removed_dims=job.config["variance"]["removed_dims"],
                     resamples=int(job.config["card"].get("resamples", 1000)), seed=int(job.config.get("seed", 0)),
                     dvt=job.inputs.get("dvt"), stage1=job.inputs.get("stage1"))


STUDY = Study(
    name="card",
    experiments={"card": Experiment(_card, _inputs, config_keys=(
        "card.resamples", "variance.removed_dims", "probes", "seed", "device", "datasets.cityscapes"))},
    outputs={"cards": Output("table", jobs=card_jobs, title="Local-feature cards: comparison of every carded model")},
)
