# One Parquet file per (dataset, subset, model, variant): every probe,
# figure and table reads these, so the ViT runs once per image and variant.


rule extract_features:
    input:
        unpack(get_extract_input),
    output:
        features=f"{RESULTS}/features/{{dataset}}/{{subset}}/{{model}}/{{variant}}.parquet",
        cls=f"{RESULTS}/features/{{dataset}}/{{subset}}/{{model}}/{{variant}}.cls.parquet",
    params:
        dataset=lambda wildcards: wildcards.dataset,
        root=lambda wildcards: dataset_root(wildcards.dataset),
        data_source=lambda wildcards: config["datasets"][wildcards.dataset]["source"],
        model_key=lambda wildcards: wildcards.model,
        model_overrides=lambda wildcards: model_overrides(wildcards.model),
        variant=lambda wildcards: wildcards.variant,
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
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
    log:
        f"{LOGS}/features/{{dataset}}/{{subset}}/{{model}}/{{variant}}.log",
    benchmark:
        f"{BENCHMARKS}/features/{{dataset}}/{{subset}}/{{model}}/{{variant}}.tsv"
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/extract_features.py"


rule features:
    input:
        feature_files(),
