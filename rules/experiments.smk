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
