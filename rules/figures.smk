# One named target per figure and table (`snakemake --cores 8 fig2`), each
# backed by the tidy CSV of the numbers it shows, under results/<preset>/figures/.

for _figure, (_experiment, _kind) in FIGURE_OUTPUTS.items():
    if not figure_models(_figure):
        continue

    rule:
        name:
            _figure
        input:
            experiment_files(_experiment, figure_models(_figure)),
        output:
            **figure_files(_figure),
        params:
            figure=_figure,
            main_train_set=MAIN_TRAIN,
        log:
            f"{LOGS}/figures/{_figure}.log",
        conda:
            "../envs/torch.yaml"
        script:
            "../scripts/make_figure.py"


# Fig 10 illustrates the frequency noise on the first validation image.
rule fig10:
    input:
        **dataset_input("cityscapes"),
        manifest=f"{RESULTS}/subsets/cityscapes/val.csv",
    output:
        **figure_files("fig10"),
    params:
        root=dataset_root("cityscapes"),
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
        **output_paths("table1", RESULTS),
    log:
        f"{LOGS}/figures/table1.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/make_table1.py"


rule figures:
    input:
        [path for figure in FIGURES for path in output_paths(figure, RESULTS).values()],
