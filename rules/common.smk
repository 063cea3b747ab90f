# Everything computed lives here: config validation, output paths, and the
# input functions the stage files use. Rules elsewhere stay declarative.

import functools
import os

from snakemake.utils import validate

from vitlocal.config import check_config, check_dataset_roots, dataset_names, subset_names
from vitlocal.layout import Layout
from vitlocal.models.registry import reuse_checked_factories, share_checked_factories


# Structure and defaults first (schema), then what a schema cannot say (model
# names resolve, list files exist): both before the DAG is built, so a bad key
# stops the run before any job starts.
validate(config, "../schemas/config.schema.yaml")
if not workflow.is_main_process:  # a job's own read of the Snakefile: the main process checked the factories
    reuse_checked_factories()
check_config(config)
if workflow.is_main_process:
    share_checked_factories(config["models"])


# Every configured dataset root is checked once, before any job (not on -n / --lint / --report).
onstart:
    check_dataset_roots(config)


PRESET = config["preset"]
RESULTS = f"results/{PRESET}"
LOGS = f"logs/{PRESET}"
BENCHMARKS = f"benchmarks/{PRESET}"

# Which ready job runs first when a run has fewer cores than ready jobs: the
# data everything waits on; then any experiment job (the longest jobs, each
# the start of a figure chain); then extraction, DVT and scene features, the
# extraction jobs read by the most experiment jobs first (extraction_priority);
# figures last (short jobs that fill the end of a run). On the demo a
# stage-by-stage order left one core idle for two minutes (bench/RESULTS.md).
PRIORITY = {"data": 100, "experiments": 50, "features": 1}
DATASETS = dataset_names(config)
SYNTHETIC_DATASETS = [d for d in DATASETS if config["datasets"][d]["source"] == "synthetic"]
LAYOUT = Layout(config, RESULTS)


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
    """Every figure and table of the configured studies and the reproduction report."""
    return [
        *subset_manifests(),
        *feature_files(),
        *figure_targets(),
        f"{RESULTS}/report/reproduction.md",
    ]


# --- models -----------------------------------------------------------------

from vitlocal.models.registry import resolve as resolve_model
from vitlocal.models.weights import weights_path

WEIGHTS_DIR = config["weights_dir"]


def output_models():
    """Models the built outputs' experiments run on beyond the three lists (e.g. the scene study's)."""
    from vitlocal.studies import OUTPUTS

    return {m for spec in OUTPUTS.values() if spec.is_built(LAYOUT) for _, m in spec.jobs(LAYOUT)}


MODEL_KEYS = sorted(
    {*config["study_models"], *config["retrieval_models"], *config["tracking_models"], *output_models()}
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
    return None if spec.weights in ("random", "factory") else str(weights_path(spec, WEIGHTS_DIR))


def weights_files():
    return [path for path in map(weights_file, MODEL_KEYS) if path]


def get_weights_input(wildcards):
    path = weights_file(wildcards.model)
    return {"weights": path} if path else {}


# --- feature files ----------------------------------------------------------


feature_file = LAYOUT.feature_file
degradation_variants = LAYOUT.degradation_variants
transform_variants = LAYOUT.transform_variants


def is_layerwise_file(dataset, subset, variant):
    """Fig 2 needs every layer of the main Cityscapes split; all else uses the last block."""
    return dataset == "cityscapes" and subset in (LAYOUT.main_train_set, "val") and variant == "clean"


def layers_for(dataset, subset, model, variant):
    """Blocks stored in a feature file: every configured one for Fig 2's files, else the last block."""
    depth = MODEL_SPECS[model].depth
    if is_layerwise_file(dataset, subset, variant):
        return sorted({layer for layer in config["extraction"]["layers"] if layer <= depth} | {depth})
    return [depth]


def feature_files():
    """Every feature file the configured experiments read (each once, in a stable order)."""
    files = {}
    for experiment, model in experiment_jobs():
        for path in flatten(EXPERIMENTS[experiment].inputs(LAYOUT, model)):
            if "/features/" in path:
                files[path] = None
    return list(files)


@functools.cache
def experiment_input_sets():
    """The set of files each (experiment, model) job reads, computed once for every extraction rule."""
    return [frozenset(flatten(experiment_inputs(e, m))) for e, m in experiment_jobs()]


def extraction_priority(paths):
    """PRIORITY["features"] plus how many experiment jobs read any of ``paths``: the chains most wait on start first."""
    paths = set(paths)
    readers = sum(1 for inputs in experiment_input_sets() if not paths.isdisjoint(inputs))
    return PRIORITY["features"] + min(readers, PRIORITY["experiments"] - PRIORITY["features"] - 1)


def extraction_demand():
    """Every feature file read: the experiments' (feature_files), the raw files DVT denoises, Fig 13's."""
    from vitlocal.studies.dvt.wiring import denoised_pairs

    paths = list(feature_files())
    for model in config["dvt"]["models"]:
        for method in ("dvt", "dvt1"):
            paths += [raw for raw, _ in denoised_pairs(dvt_inputs(model), method)]
    if "fig13" in FIGURES:
        paths += [feature_file("cityscapes", s, m) for s in (MAIN_TRAIN, "val") for m in config["study_models"]]
    return paths


#: The datasets whose frames are resized to ``tracking.frame_size`` (``features.sources.TRACKING``).
VIDEO_DATASETS = ("bdd100k", "mot17")


def extract_params(job):
    """The extraction settings of one job (features.plan.ExtractionJob): exactly what changes its files."""
    dataset = job.dataset
    # Only the freqnoise-<i> files read the frequency-noise settings.
    frequency = ({"bands": config["degradations"]["frequency_bands"],
                  "freq_sigma": config["degradations"]["frequency_noise_sigma"]} if job.reads_frequency_noise else {})
    return dict(
        dataset=dataset,
        root=lambda wildcards: dataset_root(dataset),  # synthetic data: an input of the job
        data_source=config["datasets"][dataset]["source"],
        # The job's models, run in turn: each one's config entry (its weights file is an input).
        models={model: model_overrides(model) for model in job.models},
        preset=PRESET,
        weights_dir=lambda wildcards: WEIGHTS_DIR,  # a function: the weights file itself is an input
        device=config["device"],
        batch_size=config["extraction"]["batch_size"],
        num_workers=config["extraction"]["num_workers"],
        dtype=config["extraction"]["dtype"],
        autocast=config["extraction"]["autocast"],
        patch_labels=config["patch_labels"],
        seed=config["seed"],
        **frequency,
        # Only video frames are resized to it: other datasets do not read it, so it does not rerun them.
        frame_size=config["tracking"]["frame_size"] if dataset in VIDEO_DATASETS else None,
    )


# --- experiments ------------------------------------------------------------
# The studies register their experiments and outputs (src/vitlocal/studies/);
# each experiment names the files it reads, so nothing here knows one by name.

from vitlocal.studies import EXPERIMENTS, OUTPUTS, STUDY_OF
from vitlocal.studies.base import config_slice

MAIN_TRAIN = LAYOUT.main_train_set


wildcard_constraints:
    experiment="|".join(EXPERIMENTS),


def experiment_file(experiment, model):
    return LAYOUT.experiment_file(experiment, model)


def experiment_units(experiment, model):
    return LAYOUT.experiment_units(experiment, model)


def flatten(inputs):
    """The paths of ``{role: path | {name: path | {...}}}`` as a flat list."""
    files = []
    for value in inputs.values():
        files += flatten(value) if isinstance(value, dict) else [value]
    return files


def experiment_inputs(experiment, model):
    """The files one experiment reads, by role (``Experiment.inputs``)."""
    return EXPERIMENTS[experiment].inputs(LAYOUT, model)


# A job's params hold exactly the config keys it declares, so Snakemake's params
# trigger reruns it when one of them changes, and only then.
def experiment_config(experiment, model):
    """The config keys the experiment declares (``Experiment.config_keys``), all it may read."""
    return EXPERIMENTS[experiment].config_of(config, model)


def experiment_settings(experiment, model):
    """Roots, layers and variance settings of the declared keys (``Experiment.params``)."""
    return EXPERIMENTS[experiment].params(config, model, root_of=dataset_root, depth=MODEL_SPECS[model].depth)


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

from vitlocal.studies.outputs import output_paths

FIGURES = [name for name, spec in OUTPUTS.items() if spec.is_built(LAYOUT)]


def study_outputs(study):
    """The outputs of ``study`` drawn from experiment CSVs by the generic writer (built with this config)."""
    return [f for f in FIGURES if STUDY_OF[f] == study and OUTPUTS[f].write is not None]


def output_reads(figure):
    return OUTPUTS[figure].reads(LAYOUT)


def experiment_jobs():
    """Every (experiment, model) job the built outputs draw, each once."""
    jobs = {}
    for figure in FIGURES:
        jobs.update(dict.fromkeys(OUTPUTS[figure].jobs(LAYOUT)))
    return list(jobs)


def output_config(figure, model=None):
    """The config keys an output's writer declares (``Output.config_keys``)."""
    return config_slice(config, OUTPUTS[figure].config_keys, model)


def figure_rules(study):
    """One named target per output of ``study`` drawn from experiment CSVs (`snakemake --cores 8 fig2`).

    ``figure_jobs: per_figure``: each output is one job; ``per_study``: one job writes them all (each job pays
    the imports once) and each output's name is a target rule of that job's files.
    """
    figures = study_outputs(study)
    per_study = config["figure_jobs"] == "per_study"
    for jobs in ([figures] if per_study and figures else [[f] for f in figures]):
        name = f"figures_{study}" if per_study else jobs[0]

        rule:
            name:
                name
            input:
                list(dict.fromkeys(p for figure in jobs for p in output_reads(figure))),
            output:
                **{f"{figure}_{suffix}": path for figure in jobs for suffix, path in figure_files(figure).items()},
            params:
                # One entry per output: the CSVs it reads, its files by suffix, the config keys it declares.
                figures=[{"figure": figure, "reads": output_reads(figure), "files": output_paths(figure, RESULTS),
                          "config": output_config(figure)} for figure in jobs],
            log:
                f"{LOGS}/figures/{name}.log",
            conda:
                "../envs/torch.yaml"
            script:
                "../scripts/make_figure.py"

    for figure in figures if per_study else []:

        rule:
            name:
                figure
            input:
                list(output_paths(figure, RESULTS).values()),
            localrule: True


def figure_files(figure):
    """Outputs of a figure rule; its PNG (a table's CSV) goes into the HTML report with its caption."""
    paths = output_paths(figure, RESULTS)
    shown = "png" if "png" in paths else "csv"
    paths[shown] = report(paths[shown], caption="../report/figure.rst",
                          category="Figures" if shown == "png" else "Tables", labels={"figure": figure})
    return paths


def figure_targets():
    return [path for figure in FIGURES for path in output_paths(figure, RESULTS).values()]


def report_inputs():
    """Every experiment CSV the figures use (each once)."""
    return [experiment_file(e, m) for e, m in experiment_jobs()]


# --- DVT (rules/dvt.smk) ----------------------------------------------------


def dvt_inputs(model):
    """Every file the experiments read for ``model``."""
    return [p for e, m in experiment_jobs() if m == model for p in flatten(EXPERIMENTS[e].inputs(LAYOUT, m))]


def dvt1_inputs(jobs, model):
    """Raw files, their manifests, (synthetic) data and the model's weights."""
    weights = weights_file(model)
    return {
        "raw": [job["raw"] for job in jobs],
        "manifests": sorted({job["manifest"] for job in jobs}),
        **{key: path for job in jobs for key, path in dataset_input(job["dataset"]).items()},
        **({"weights": weights} if weights else {}),
    }
