# One job per (experiment, model): a tidy CSV of every number the experiment
# produces. Which files it reads and what it computes: the study registry
# (src/vitlocal/studies/). Figures combine models.


rule run_experiment:
    input:
        flat_inputs,
    output:
        table=f"{RESULTS}/experiments/{{experiment}}/{{model}}.csv",
    params:
        inputs=experiment_inputs,
        settings=experiment_settings,
        config=experiment_config,
    threads: config["extraction"]["threads"]
    resources:
        gpu=lambda wildcards: int(EXPERIMENTS[wildcards.experiment].gpu),
        mem_mb=16000,
        runtime=240,  # minutes (paper preset)
    log:
        f"{LOGS}/experiments/{{experiment}}/{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/experiments/{{experiment}}/{{model}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/run_experiment.py"
