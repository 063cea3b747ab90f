# Everything computed lives here: config validation, output paths, and the
# input functions the stage files use. Rules elsewhere stay declarative.

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


def get_dataset_input(wildcards):
    """Synthetic data is a workflow output; official data is checked by the job itself."""
    if wildcards.dataset in SYNTHETIC_DATASETS:
        return {"data": f"{RESULTS}/data/{wildcards.dataset}"}
    return {}


def subset_manifests():
    return [
        f"{RESULTS}/subsets/{dataset}/{subset}.csv"
        for dataset in DATASETS
        for subset in subset_names(config, dataset)
    ]


def get_final_outputs():
    return [*subset_manifests(), *feature_files()]


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
