# Everything computed lives here: config validation, output paths, and the
# input functions the stage files use. Rules elsewhere stay declarative.

import os

from snakemake.utils import validate

from vitlocal.config import check_config, dataset_names, subset_names


# Structure and defaults first (schema), then what a schema cannot say (model
# names resolve, list files exist): both before the DAG is built, so a bad key
# stops the run before any job starts.
validate(config, "../schemas/config.schema.yaml")
check_config(config)

PRESET = config["preset"]
RESULTS = f"results/{PRESET}"
LOGS = f"logs/{PRESET}"
BENCHMARKS = f"benchmarks/{PRESET}"
DATASETS = dataset_names(config)
SYNTHETIC_DATASETS = [d for d in DATASETS if config["datasets"][d]["source"] == "synthetic"]


wildcard_constraints:
    dataset="|".join(DATASETS),
    subset=r"[A-Za-z0-9_]+",


def dataset_root(name):
    """The directory a dataset is read from (generated for synthetic data)."""
    if name in SYNTHETIC_DATASETS:
        return f"{RESULTS}/data/{name}"
    return config["datasets"][name]["root"]


def dataset_input(name):
    """Synthetic data is a workflow output; official data is checked by the job itself."""
    return {"data": f"{RESULTS}/data/{name}"} if name in SYNTHETIC_DATASETS else {}


def get_dataset_input(wildcards):
    return dataset_input(wildcards.dataset)


def subset_manifests():
    return [
        f"{RESULTS}/subsets/{dataset}/{subset}.csv"
        for dataset in DATASETS
        for subset in subset_names(config, dataset)
    ]


def get_final_outputs():
    """Every figure and table, the reproduction report, and the features of the
    retrieval and tracking models (their figures come in later stages)."""
    return [
        *subset_manifests(),
        *feature_files(),
        *[path for figure in FIGURES for path in output_paths(figure, RESULTS).values()],
        f"{RESULTS}/report/reproduction.md",
    ]


# --- models -----------------------------------------------------------------

from vitlocal.models.registry import resolve as resolve_model
from vitlocal.models.weights import weights_path

WEIGHTS_DIR = config["weights_dir"]
MODEL_KEYS = sorted(
    {*config["study_models"], *config["retrieval_models"], *config["tracking_models"]}
)
MODEL_SPECS = {key: resolve_model(key, config["models"].get(key)) for key in MODEL_KEYS}


wildcard_constraints:
    model="|".join(MODEL_KEYS) or "NO_MODEL",
    variant=r"clean|full|[a-z]+-[0-9.]+",


def model_overrides(key):
    return config["models"].get(key)


def weights_file(key):
    """The checkpoint a model needs, or None for seeded random weights."""
    spec = MODEL_SPECS[key]
    return None if spec.weights == "random" else str(weights_path(spec, WEIGHTS_DIR))


def weights_files():
    return [path for path in map(weights_file, MODEL_KEYS) if path]


def get_weights_input(wildcards):
    path = weights_file(wildcards.model)
    return {"weights": path} if path else {}


# --- feature files ----------------------------------------------------------


def fmt(value):
    """Numbers as they appear in variant names: 4, 0.9, 12.5."""
    return f"{value:g}"


def degradation_variants():
    deg = config["degradations"]
    return (
        [f"blur-{fmt(k)}" for k in deg["blur_kernels"]]
        + [f"noise-{fmt(s)}" for s in deg["noise_sigmas"]]
        + [f"freqnoise-{i}" for i in range(1, len(deg["frequency_bands"]) + 1)]
    )


def transform_variants():
    tr = config["transforms"]
    return (
        [f"shift-{fmt(d)}" for d in tr["shifts"]]
        + [f"rotate-{fmt(a)}" for a in tr["rotations"]]
        + [f"scale-{fmt(s)}" for s in tr["scales"]]
    )


def is_layerwise_file(dataset, subset, variant):
    """Fig 2 needs every layer of the main Cityscapes split; all else uses the last block."""
    main = config["subsets"]["cityscapes"]["main_train_set"]
    return dataset == "cityscapes" and subset in (main, "val") and variant == "clean"


def layers_for(wildcards):
    """Blocks stored in a feature file; jobs without a variant wildcard make degraded variants."""
    depth = MODEL_SPECS[wildcards.model].depth
    if is_layerwise_file(wildcards.dataset, wildcards.subset, wildcards.get("variant")):
        return sorted({layer for layer in config["extraction"]["layers"] if layer <= depth} | {depth})
    return [depth]


def feature_file(dataset, subset, model, variant="clean"):
    return f"{RESULTS}/features/{dataset}/{subset}/{model}/{variant}.parquet"


def feature_files():
    """Every feature file the configured experiments read."""
    files = []
    cs = config["subsets"]["cityscapes"]
    for model in config["study_models"]:
        if "cityscapes" in DATASETS:
            files += [feature_file("cityscapes", s, model) for s in cs["train_sets"]]
            files += [feature_file("cityscapes", "val", model, v) for v in ["clean", *degradation_variants()]]
        if "ade20k" in DATASETS:
            files += [feature_file("ade20k", s, model) for s in ("train", "val")]
    if "fair1m" in DATASETS:
        split = config["subsets"]["fair1m"]["split"]
        for model in config["retrieval_models"]:
            files += [
                feature_file("fair1m", split, model, v)
                for v in ["clean", *transform_variants(), *degradation_variants()]
            ]
    for model in config["tracking_models"]:
        if "bdd100k" in DATASETS:
            split = config["subsets"]["bdd100k"]["split"]
            files += [feature_file("bdd100k", split, model, v) for v in ("clean", "full")]
        if "mot17" in DATASETS:
            files += [feature_file("mot17", config["subsets"]["mot17"]["split"], model)]
        if "cityscapes" in DATASETS and model in config["study_models"]:
            main = cs["main_train_set"]
            files += [feature_file("cityscapes", s, model, "full") for s in (main, "val")]
    return files


def get_extract_input(wildcards):
    return {
        "manifest": f"{RESULTS}/subsets/{wildcards.dataset}/{wildcards.subset}.csv",
        **get_dataset_input(wildcards),
        **get_weights_input(wildcards),
    }


# Parameters shared by the extraction rules (all wildcards-driven or global).
EXTRACT_PARAMS = dict(
    dataset=lambda wildcards: wildcards.dataset,
    root=lambda wildcards: dataset_root(wildcards.dataset),
    data_source=lambda wildcards: config["datasets"][wildcards.dataset]["source"],
    model_key=lambda wildcards: wildcards.model,
    model_overrides=lambda wildcards: model_overrides(wildcards.model),
    layers=layers_for,
    preset=PRESET,
    weights_dir=WEIGHTS_DIR,
    device=config["device"],
    batch_size=config["extraction"]["batch_size"],
    num_workers=config["extraction"]["num_workers"],
    dtype=config["extraction"]["dtype"],
    autocast=config["extraction"]["autocast"],
    patch_labels=config["patch_labels"],
    seed=config["seed"],
    bands=config["degradations"]["frequency_bands"],
    freq_sigma=config["degradations"]["frequency_noise_sigma"],
    frame_size=config["tracking"]["frame_size"],
)


# --- experiments ------------------------------------------------------------

from vitlocal.experiments.runner import EXPERIMENTS as EXPERIMENT_NAMES

MAIN_TRAIN = config["subsets"]["cityscapes"]["main_train_set"]


wildcard_constraints:
    experiment="|".join(EXPERIMENT_NAMES),


def experiment_file(experiment, model):
    return f"{RESULTS}/experiments/{experiment}/{model}.csv"


def experiment_files(experiment, models):
    return [experiment_file(experiment, model) for model in models]


def overlap_models():
    """Models with features on all three datasets of the top-dims overlap (paper: MAE)."""
    return [m for m in config["variance"]["overlap_models"] if m in config["study_models"] and m in config["retrieval_models"]]


def _experiment_inputs(experiment, model):
    """Feature files and manifests of one experiment job, by role (see experiments/runner.py)."""
    cs_val = feature_file("cityscapes", "val", model)
    main = feature_file("cityscapes", MAIN_TRAIN, model)
    manifests = {"val_manifest": f"{RESULTS}/subsets/cityscapes/val.csv"}
    if experiment == "train_size":
        sets = config["subsets"]["cityscapes"]["train_sets"]
        return {"train_sets": {name: feature_file("cityscapes", name, model) for name in sets}, "val": cs_val, **manifests}
    if experiment in ("layerwise", "variance_removal"):
        return {"train": main, "val": cs_val, **manifests}
    if experiment == "r2":
        return {"train": main, "val": cs_val, "train_manifest": f"{RESULTS}/subsets/cityscapes/{MAIN_TRAIN}.csv", **manifests}
    if experiment == "degradation":
        variants = ["clean", *degradation_variants()]
        return {"train": main, "val_variants": {v: feature_file("cityscapes", "val", model, v) for v in variants}, **manifests}
    if experiment == "ade20k":
        return {"train": feature_file("ade20k", "train", model), "val": feature_file("ade20k", "val", model),
                "val_manifest": f"{RESULTS}/subsets/ade20k/val.csv"}
    if experiment == "feature_variance":
        return {"train": main}
    if experiment == "top_dims_overlap":
        split = config["subsets"]["fair1m"]["split"]
        return {"train_by_dataset": {"cityscapes": main, "ade20k": feature_file("ade20k", "train", model),
                                     "fair1m": feature_file("fair1m", split, model)}}
    raise ValueError(f"no inputs defined for experiment {experiment!r}")


def experiment_inputs(wildcards):
    return _experiment_inputs(wildcards.experiment, wildcards.model)


def flat_inputs(wildcards):
    """Every file of ``experiment_inputs`` as a flat list (Snakemake tracks files, not roles)."""
    files = []
    for value in experiment_inputs(wildcards).values():
        files += list(value.values()) if isinstance(value, dict) else [value]
    return files


def demo_subject():
    """What makes this preset's outputs a demo, or None for the real study."""
    parts = []
    if SYNTHETIC_DATASETS:
        parts.append("synthetic data")
    if any(spec.weights == "random" for spec in MODEL_SPECS.values()):
        parts.append("random weights")
    return " and ".join(parts) or None


def data_source():
    if not SYNTHETIC_DATASETS:
        return "official"
    return "synthetic" if len(SYNTHETIC_DATASETS) == len(DATASETS) else "mixed"


def weights_summary():
    return "random weights" if any(s.weights == "random" for s in MODEL_SPECS.values()) else "pretrained checkpoints"


# --- figures and report -----------------------------------------------------

from vitlocal.experiments.outputs import OUTPUTS as FIGURE_OUTPUTS, output_paths


def figure_models(figure):
    if figure == "fig4b":
        return [m for m in ("mae",) if m in config["study_models"]]
    if figure == "top_dims_overlap":
        return overlap_models()
    return config["study_models"]


def figure_files(figure):
    """Outputs of a figure rule; the PNG goes into the Snakemake HTML report."""
    paths = output_paths(figure, RESULTS)
    if "png" in paths:
        paths["png"] = report(paths["png"], category="Figures", labels={"figure": figure})
    return paths


FIGURES = [f for f in FIGURE_OUTPUTS if figure_models(f)] + ["fig10", "fig13", "table1"]


def report_inputs():
    """Every experiment CSV the figures use (each once)."""
    files = []
    for figure, (experiment, _) in FIGURE_OUTPUTS.items():
        files += [f for f in experiment_files(experiment, figure_models(figure)) if f not in files]
    return files
