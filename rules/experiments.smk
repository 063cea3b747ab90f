# One job per (experiment, model): a tidy CSV of every number the experiment
# produces (see src/vitlocal/experiments/runner.py). Figures combine models.


rule run_experiment:
    input:
        flat_inputs,
    output:
        table=f"{RESULTS}/experiments/{{experiment}}/{{model}}.csv",
    params:
        inputs=experiment_inputs,
        settings=lambda wildcards: {
            "roots": {d: dataset_root(d) for d in DATASETS},
            "layers": sorted(l for l in config["extraction"]["layers"] if l <= MODEL_SPECS[wildcards.model].depth),
            "seed": config["seed"],
            **config["variance"],
        },
    threads: config["extraction"]["threads"]
    resources:
        gpu=1,
        mem_mb=16000,
    log:
        f"{LOGS}/experiments/{{experiment}}/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/experiments/{{experiment}}/{{model}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/run_experiment.py"


# Fig 13 needs per-pixel predictions of every model on two val images.
rule predict_qualitative:
    input:
        train=[feature_file("cityscapes", MAIN_TRAIN, m) for m in config["study_models"]],
        val=[feature_file("cityscapes", "val", m) for m in config["study_models"]],
        manifest=f"{RESULTS}/subsets/cityscapes/val.csv",
    output:
        npz=f"{RESULTS}/experiments/qualitative/predictions.npz",
    params:
        models=config["study_models"],
        root=lambda wildcards: dataset_root("cityscapes"),
    threads: config["extraction"]["threads"]
    resources:
        gpu=1,
    log:
        f"{LOGS}/experiments/qualitative.log",
    benchmark:
        f"{BENCHMARKS}/experiments/qualitative.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/predict_qualitative.py"
