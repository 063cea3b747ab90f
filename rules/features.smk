# One Parquet file per (dataset, subset, model, variant): every probe,
# figure and table reads these, so the ViT runs once per image and variant.
# Degraded and transformed variants of one split are made by one job each:
# the model is built once and no job is paid per variant.


rule extract_features:
    input:
        unpack(get_extract_input),
    output:
        # CLS tokens go to the sibling <variant>.cls.parquet when the model has one.
        features=f"{RESULTS}/features/{{dataset}}/{{subset}}/{{model}}/{{variant}}.parquet",
    wildcard_constraints:
        variant="clean|full",
    params:
        **EXTRACT_PARAMS,
        variants=lambda wildcards: [wildcards.variant],
    threads: config["extraction"]["threads"]
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=240,  # minutes, on one GPU (paper preset)
    log:
        f"{LOGS}/features/{{dataset}}/{{subset}}/{{model}}/{{variant}}.log",
    benchmark:
        f"{BENCHMARKS}/features/{{dataset}}/{{subset}}/{{model}}/{{variant}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/extract_features.py"


rule extract_degraded_features:
    input:
        unpack(get_extract_input),
    output:
        features=[feature_file("{dataset}", "{subset}", "{model}", v) for v in degradation_variants()],
    params:
        **EXTRACT_PARAMS,
        variants=degradation_variants(),
    threads: config["extraction"]["threads"]
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=240,  # minutes, on one GPU (paper preset)
    log:
        f"{LOGS}/features/{{dataset}}/{{subset}}/{{model}}/degraded.log",
    benchmark:
        f"{BENCHMARKS}/features/{{dataset}}/{{subset}}/{{model}}/degraded.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/extract_features.py"


rule extract_transformed_features:
    input:
        unpack(get_extract_input),
    output:
        features=[feature_file("{dataset}", "{subset}", "{model}", v) for v in transform_variants()],
    params:
        **EXTRACT_PARAMS,
        variants=transform_variants(),
    threads: config["extraction"]["threads"]
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=240,  # minutes, on one GPU (paper preset)
    log:
        f"{LOGS}/features/{{dataset}}/{{subset}}/{{model}}/transformed.log",
    benchmark:
        f"{BENCHMARKS}/features/{{dataset}}/{{subset}}/{{model}}/transformed.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/extract_features.py"


rule features:
    input:
        feature_files(),
