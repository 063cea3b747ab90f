# Synthetic datasets in the official layouts: the demo (and tests) read them
# through exactly the code that reads the real datasets.


rule generate_synthetic_dataset:
    output:
        data=directory(f"{RESULTS}/data/{{dataset}}"),
    params:
        size=lambda wildcards: config["datasets"][wildcards.dataset]["synthetic_size"],
        seed=config["seed"],
    priority: PRIORITY["data"]  # seconds-long jobs every later job waits for (rules/common.smk)
    log:
        f"{LOGS}/data/generate_synthetic_dataset/{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/data/generate_synthetic_dataset/{{dataset}}.tsv"
    conda:
        "../envs/data.yaml"
    script:
        "../scripts/generate_synthetic_dataset.py"


rule data:
    input:
        expand(f"{RESULTS}/data/{{dataset}}", dataset=SYNTHETIC_DATASETS),
