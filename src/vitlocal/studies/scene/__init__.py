"""Scale-MAE across ground sample distances (Fig 5) and MAE reconstruction (Table 4, fig_recon).

``gsd`` has the Fig 5 protocol (each image fed at its own small size, [CLS] /
mean-patch features, the rows), ``knn`` its two k-NN classifiers
(Scale-MAE's weighted vote, the study's 1-NN), ``reconstruction`` the Table 4
protocol, ``figures`` the writers. Settings:
config section ``scene``. Rules: ``rules/scene.smk`` (the GSD feature job per
model and the fig_recon rule); the k-NN and the reconstruction are ordinary
experiments run by ``run_experiment``.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Mapping, Sequence

from ...errors import ConfigError
from ...models.registry import ModelSpec
from ..base import Experiment, Output, Study, figure_writer

#: The scene-classification datasets of Fig 5, in the paper's order.
SCENE_DATASETS = ("ucmerced", "resisc45")


def settings(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``scene`` section (filled with the schema's defaults by the workflow; empty if absent)."""
    return config.get("scene") or {}


def scene_datasets(layout) -> list[str]:
    return [d for d in SCENE_DATASETS if layout.has(d)]


def scene_models(config: Mapping[str, Any]) -> list[str]:
    return list(settings(config).get("models", []))


def reconstruction_models(config: Mapping[str, Any]) -> list[str]:
    model = settings(config).get("reconstruction_model")
    return [model] if model else []


def scene_feature_file(layout, dataset: str, model: str) -> str:
    """GSD features of one (dataset, model): every image at every scale, [CLS] and patch summaries."""
    return f"{layout.results}/features/{dataset}/all/{model}/gsd.npz"


@functools.lru_cache(maxsize=None)
def _spec(key: str, overrides_json: str):
    from ...models.registry import resolve

    return resolve(key, json.loads(overrides_json))


def model_spec(config: Mapping[str, Any], key: str):
    """The registry spec of ``key`` with the config's overrides (cached: input functions call it often)."""
    return _spec(key, json.dumps((config.get("models") or {}).get(key), sort_keys=True))


def weights_input(layout, key: str) -> dict[str, str]:
    """``{"weights": path}`` for a checkpoint model, nothing for random weights."""
    from ...models.weights import weights_path

    spec = model_spec(layout.config, key)
    return {} if spec.weights == "random" else {"weights": str(weights_path(spec, layout.config["weights_dir"]))}


def _knn_inputs(layout, model):
    return {"features": {d: scene_feature_file(layout, d, model) for d in scene_datasets(layout)}}


def _reconstruction_inputs(layout, model):
    data = ({"data": f"{layout.results}/data/cityscapes"}
            if layout.config["datasets"]["cityscapes"].get("source") == "synthetic" else {})
    return {"train_manifest": layout.manifest("cityscapes", layout.main_train_set),
            "val_manifest": layout.manifest("cityscapes", "val"), **data, **weights_input(layout, model)}


#: What the reconstruction reads: Table 4's settings, the model (built from its overrides), the data.
RECONSTRUCTION_KEYS = ("scene.mask_ratios", "scene.removed_dims", "scene.reconstruction_images", "scene.rank_images",
                       "seed", "preset", "device", "weights_dir", "models.{model}", "datasets.cityscapes")
#: fig_recon's rule: the reconstruction's model and masks, and how many examples it shows.
FIG_RECON_KEYS = ("scene.mask_ratios", "scene.figure_examples", "seed", "device", "weights_dir", "models.{model}")


def _scene_knn(job):
    from .gsd import scene_knn_rows

    s = settings(job.config)
    return scene_knn_rows(job.model, dict(job.inputs["features"]), removed_dims=s["removed_dims"],
                          train_fraction=s["train_fraction"], knn=s["knn"], k=s["knn_k"],
                          temperature=s["knn_temperature"], seed=job.config["seed"],
                          device=job.config.get("device", "auto"))


def check_eval_sizes(sizes: Sequence[int], spec: ModelSpec) -> list[int]:
    """``scene.eval_sizes`` as ints, each a positive multiple of ``spec``'s patch size."""
    bad = [s for s in sizes if int(s) != s or s < spec.patch_size or int(s) % spec.patch_size]
    if bad or not sizes:
        raise ConfigError(f"scene.eval_sizes = {list(sizes)}: model {spec.key!r} needs positive multiples of its "
                          f"patch size {spec.patch_size} px (bad: {bad})")
    return [int(s) for s in sizes]


def check_scene_config(config: Mapping[str, Any]) -> None:
    """Stop before any job when ``scene.eval_sizes`` does not fit a Fig 5 model's patch grid (no torch: read at parse)."""
    for key in scene_models(config):
        check_eval_sizes(settings(config)["eval_sizes"], model_spec(config, key))


def build_reconstruction_model(config: Mapping[str, Any], key: str):
    """Spec and built MAE encoder + decoder of ``key`` (weights loaded through the converter)."""
    from ...models.extractor import build_model

    spec = model_spec(config, key)
    return spec, build_model(spec, config["weights_dir"])


def _reconstruction(job):
    from ...subsets import read_manifest
    from .reconstruction import reconstruction_rows

    s = settings(job.config)
    spec, model = build_reconstruction_model(job.config, job.model)
    return reconstruction_rows(
        job.model, spec, model, root=job.params["roots"]["cityscapes"],
        train_manifest=read_manifest(job.inputs["train_manifest"]), manifest=read_manifest(job.inputs["val_manifest"]),
        mask_ratios=s["mask_ratios"], removed_dims=s["removed_dims"], seed=job.config["seed"],
        max_images=s["reconstruction_images"], rank_images=s["rank_images"], preset=job.config["preset"],
        data_source=job.config["datasets"]["cityscapes"].get("source", "official"),
        device=job.config.get("device", "auto"))


def _fig5_jobs(layout):
    return [("scene_knn", m) for m in scene_models(layout.config)] if scene_datasets(layout) else []


def _table4_jobs(layout):
    return [("reconstruction", m) for m in reconstruction_models(layout.config)] if layout.has("cityscapes") else []


STUDY = Study(
    name="scene",
    experiments={
        "scene_knn": Experiment(_scene_knn, _knn_inputs, config_keys=(
            "scene.removed_dims", "scene.train_fraction", "scene.knn", "scene.knn_k", "scene.knn_temperature", "seed",
            "device")),
        "reconstruction": Experiment(_reconstruction, _reconstruction_inputs, config_keys=RECONSTRUCTION_KEYS),
    },
    outputs={
        "fig5": Output("figure", figure_writer(__name__, "fig5"), _fig5_jobs,
                       title="k-NN scene classification vs GSD, [CLS] vs mean patch, with / without the top-m "
                             "variance dims (Fig 5)"),
        "table4": Output("table", figure_writer(__name__, "table4"), _table4_jobs,
                         title="MAE reconstruction with the top-m variance dims zeroed (Table 4)"),
        "fig_recon": Output("figure", available=lambda layout: bool(_table4_jobs(layout)),
                            title="MAE reconstructions: input / intact / top-m dims zeroed"),
    },
)
