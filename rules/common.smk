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
    return subset_manifests()
