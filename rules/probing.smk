# Segmentation probing (paper Section 3): Figs 1-3, Table 2 from experiment CSVs
# (src/vitlocal/studies/probing/), and Figs 10, 13 and Table 1 by rules of their own.

# One named target per figure and table (`snakemake --cores 8 fig2`).
figure_rules("probing")


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
        config=config_slice(config, ("probes", "seed", "device")),  # ProbeSettings.from_config
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


# Fig 10 illustrates the frequency noise on the first validation image.
rule fig10:
    input:
        **dataset_input("cityscapes"),
        manifest=f"{RESULTS}/subsets/cityscapes/val.csv",
    output:
        **figure_files("fig10"),
    params:
        root=lambda wildcards: dataset_root("cityscapes"),
        bands=config["degradations"]["frequency_bands"],
        sigma=config["degradations"]["frequency_noise_sigma"],
        seed=config["seed"],
        preset=PRESET,
        demo_subject=demo_subject(),
    log:
        f"{LOGS}/figures/fig10.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/make_fig10.py"


rule fig13:
    input:
        npz=f"{RESULTS}/experiments/qualitative/predictions.npz",
    output:
        **figure_files("fig13"),
    params:
        preset=PRESET,
        knn_metric=config["probes"]["knn_metric"],
        demo_subject=demo_subject(),
    log:
        f"{LOGS}/figures/fig13.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/make_fig13.py"


# Table 1 holds static facts from the models' papers (src/vitlocal/data/).
rule table1:
    output:
        **figure_files("table1"),
    log:
        f"{LOGS}/figures/table1.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/make_table1.py"
