"""A local-feature card for any backbone (issue 22): ``snakemake card_<model>`` and ``snakemake cards``.

The ``card`` experiment reads the last layer of the model's Cityscapes train
and val features once and computes the card's own diagnostics, each with a
95 % bootstrap interval over the val images (``compute``). The card itself
(``figures``) adds what the other studies' experiment CSVs say about the model
(``summary``); the models of ``card.models`` are drawn in grey beside it.
Rules: ``rules/card.smk``.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..base import Experiment, Output, Study

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
    """``card.*`` with defaults: models (null: ``study_models``), reads, resamples."""
    card = dict(config.get("card") or {})
    models = card.get("models")
    return {
        "models": list(config.get("study_models", []) if models is None else models),
        "reads": list(card.get("reads", list(READABLE))),
        "resamples": int(card.get("resamples", 1000)),
    }


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
    """The CSVs the card of ``model`` draws: every carded model's ``card`` CSV, the CSVs it reads, and the other
    carded models' per-layer k-NN (drawn in grey)."""
    models = card_models(layout)
    jobs = [("card", m) for m in models] + read_jobs(layout, model)
    for other in models:
        jobs += [job for job in read_jobs(layout, other) if job[0] == "layerwise"]
    return list(dict.fromkeys(layout.experiment_file(e, m) for e, m in jobs))


def _inputs(layout, model):
    return {"train": layout.feature_file("cityscapes", layout.main_train_set, model),
            "val": layout.feature_file("cityscapes", "val", model),
            "val_manifest": layout.manifest("cityscapes", "val")}


def _card(job):
    from .compute import card_rows

    return card_rows(job.model, job.inputs["train"], job.inputs["val"], target=job.target("cityscapes"),
                     probes=job.probes, removed_dims=job.config["variance"]["removed_dims"],
                     resamples=int(job.config["card"].get("resamples", 1000)), seed=int(job.config.get("seed", 0)))


STUDY = Study(
    name="card",
    experiments={"card": Experiment(_card, _inputs, config_keys=(
        "card.resamples", "variance.removed_dims", "probes", "seed", "device", "datasets.cityscapes"))},
    outputs={"cards": Output("table", jobs=card_jobs, title="Local-feature cards: comparison of every carded model")},
)
