# Denoising Vision Transformers (src/vitlocal/denoise/, src/vitlocal/studies/dvt/):
# stage 1 on training tiles -> stage-2 denoiser per model -> `dvt` feature
# variant -> raw-vs-DVT probes (table_dvt) and the PCA figure (fig_dvt).
# Stage 1 reads training subsets only (dvt.stage1_subsets); never a val set.

from vitlocal.denoise.settings import shard_plan, split_stage1_config, stage1_shard_paths
from vitlocal.studies.dvt.wiring import (
    checkpoint_path,
    denoised_pairs,
    stage1_feature_jobs,
    stage1_inputs,
    stage1_path,
    stage1_sources,
)

DVT = config["dvt"]
DVT_MODELS = DVT["models"]
DVT_SOURCES = stage1_sources(config, RESULTS, DATASETS, dataset_root)
DVT_STAGE1_INPUTS = stage1_inputs(DVT_SOURCES, dataset_input)
# The fit's and the shards' keys; seconds_per_tile only sizes the runtime: changing it reruns nothing.
DVT_STAGE1_PARAMS = {k: v for k, v in DVT["stage1"].items() if k != "seconds_per_tile"}
# A bad dvt.stage1 value stops here, before any job.
DVT_SHARDS = shard_plan(DVT_SOURCES, split_stage1_config(DVT["stage1"])[1]) if DVT_MODELS and DVT_SOURCES else []


# Stage 1 as shards of at most dvt.stage1.tiles_per_job tiles (planned from the
# config alone, so the DAG is known before any job): each a GPU job with a
# runtime estimated from its tiles and dvt.stage1.seconds_per_tile, resumable
# inside (denoise/settings.py, denoise/shards.py); the gather reads them in shard order.
rule dvt_stage1_shard:
    input:
        unpack(lambda wildcards: {**DVT_STAGE1_INPUTS, **get_weights_input(wildcards)}),
    output:
        npz=f"{RESULTS}/dvt/stage1/{{model}}/shard-{{shard}}.npz",
    params:
        sources=DVT_SOURCES,
        stage1=DVT_STAGE1_PARAMS,
        model_overrides=lambda wildcards: model_overrides(wildcards.model),
        weights_dir=WEIGHTS_DIR,
        preset=PRESET,
        seed=config["seed"],
        device=config["device"],
        figure_tiles=DVT["figure_images"],
    threads: config["extraction"]["threads"]
    resources:
        gpu=1,
        runtime=lambda wildcards: DVT_SHARDS[int(wildcards.shard)]["runtime"],  # minutes
        mem_mb=16000,
    wildcard_constraints:
        shard=r"\d{4}",
    priority: PRIORITY["features"]
    log:
        f"{LOGS}/dvt/stage1/{{model}}/shard-{{shard}}.log",
    benchmark:
        f"{BENCHMARKS}/dvt/stage1/{{model}}/shard-{{shard}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/dvt_stage1.py"


rule dvt_stage1:
    input:
        shards=lambda wildcards: stage1_shard_paths(RESULTS, wildcards.model, DVT_SHARDS),
    output:
        npz=stage1_path(RESULTS, "{model}"),
    resources:
        mem_mb=16000,
    priority: PRIORITY["features"]
    log:
        f"{LOGS}/dvt/stage1/{{model}}.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/dvt_stage1_gather.py"


rule dvt_stage2:
    input:
        npz=stage1_path(RESULTS, "{model}"),
    output:
        checkpoint=f"{RESULTS}/dvt/stage2/{{model}}.pt",
        sidecar=f"{RESULTS}/dvt/stage2/{{model}}.json",
    params:
        stage2=DVT["stage2"],
        seed=config["seed"],
        device=config["device"],
    threads: config["extraction"]["threads"]
    resources:
        gpu=1,
        mem_mb=16000,
    priority: PRIORITY["features"]
    log:
        f"{LOGS}/dvt/stage2/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/dvt/stage2/{{model}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/dvt_stage2.py"


# Every denoised feature file the experiments read, for one model, in one job:
# the denoiser is one Transformer block, so one job per model beats one per file.
for _model in DVT_MODELS:
    _pairs = denoised_pairs(dvt_inputs(_model))

    rule:
        name:
            f"dvt_features_{_model}"
        input:
            raw=[raw for raw, _ in _pairs],
            checkpoint=checkpoint_path(config, RESULTS, _model),
        output:
            features=[out for _, out in _pairs],
        params:
            model=_model,
            model_overrides=model_overrides(_model),
            device=config["device"],
            dtype=config["extraction"]["dtype"],
        threads: config["extraction"]["threads"]
        resources:
            gpu=1,
            mem_mb=8000,  # streamed row group by row group: torch + one group, whatever the file's size
        priority: PRIORITY["features"]
        log:
            f"{LOGS}/dvt/features/{_model}.log",
        benchmark:
            f"{BENCHMARKS}/dvt/features/{_model}.tsv"
        conda:
            "../envs/torch.yaml"
        script:
            "../scripts/dvt_features.py"


# dvt1: stage 1's F of every tile of a clean file (dvt.stage1_tasks), no denoiser:
# per tile as costly as stage 1's training tiles, hence opt-in and per task.
for _model in DVT_MODELS:
    _jobs = stage1_feature_jobs(dvt_inputs(_model), LAYOUT.manifest)
    if not _jobs:
        continue

    rule:
        name:
            f"dvt1_features_{_model}"
        input:
            **dvt1_inputs(_jobs, _model),
        output:
            features=[job["out"] for job in _jobs],
        params:
            model=_model,
            jobs=[{**job, "root": dataset_root(job["dataset"])} for job in _jobs],
            model_overrides=model_overrides(_model),
            weights_dir=WEIGHTS_DIR,
            stage1=DVT_STAGE1_PARAMS,
            seed=config["seed"],
            device=config["device"],
            dtype=config["extraction"]["dtype"],
        threads: config["extraction"]["threads"]
        resources:
            gpu=1,
            mem_mb=16000,  # as dvt_stage1: one tile's views and fit at a time
        log:
            f"{LOGS}/dvt/features1/{_model}.log",
        benchmark:
            f"{BENCHMARKS}/dvt/features1/{_model}.tsv"
        conda:
            "../envs/torch.yaml"
        script:
            "../scripts/dvt1_features.py"


figure_rules("dvt")


if "fig_dvt" in FIGURES:

    rule fig_dvt:
        input:
            stage1=[stage1_path(RESULTS, m) for m in DVT_MODELS],
            checkpoints=[checkpoint_path(config, RESULTS, m) for m in DVT_MODELS],
        output:
            **figure_files("fig_dvt"),
        params:
            models=DVT_MODELS,
            n_images=DVT["figure_images"],
            preset=PRESET,
            demo_subject=demo_subject(),
        log:
            f"{LOGS}/figures/fig_dvt.log",
        conda:
            "../envs/torch.yaml"
        script:
            "../scripts/make_fig_dvt.py"
