# Scale-MAE across ground sample distances (Fig 5) and MAE reconstruction
# (Table 4, fig_recon) (src/vitlocal/studies/scene/).

from vitlocal.studies.scene import FIG_RECON_KEYS, check_scene_config, reconstruction_models, scene_datasets, scene_feature_file

SCENE_SETS = scene_datasets(LAYOUT)
if SCENE_SETS:
    check_scene_config(config)  # eval sizes that fit every Fig 5 model's patch grid, before any job


# One named target per figure and table drawn from experiment CSVs (`snakemake --cores 8 fig5`).
figure_rules("scene")


# Manifests and (synthetic) data of every scene dataset; the checkpoint is added per model.
SCENE_INPUTS = {f"manifest_{d}": LAYOUT.manifest(d, "all") for d in SCENE_SETS} | {
    f"{key}_{d}": path for d in SCENE_SETS for key, path in dataset_input(d).items()
}


if SCENE_SETS:

    # Every image of both datasets at every eval size, one job per model (the model is built once).
    rule scene_features:
        input:
            unpack(lambda wildcards: {**SCENE_INPUTS, **get_weights_input(wildcards)}),
        output:
            features=[scene_feature_file(LAYOUT, d, "{model}") for d in SCENE_SETS],
        params:
            datasets=SCENE_SETS,
            roots={d: dataset_root(d) for d in SCENE_SETS},
            manifests={d: LAYOUT.manifest(d, "all") for d in SCENE_SETS},
            data_sources={d: config["datasets"][d]["source"] for d in SCENE_SETS},
            model_overrides=lambda wildcards: model_overrides(wildcards.model),
            sizes=config["scene"]["eval_sizes"],
            base_resolution=config["scene"]["scalemae_base_resolution"],
            preset=PRESET,
            weights_dir=WEIGHTS_DIR,
            device=config["device"],
            batch_size=config["extraction"]["batch_size"],
        threads: config["extraction"]["threads"]
        resources:
            gpu=1,
            mem_mb=16000,
        priority: PRIORITY["features"]
        log:
            f"{LOGS}/features/scene/{{model}}.log",
        benchmark:
            f"{BENCHMARKS}/features/scene/{{model}}.tsv"
        conda:
            "../envs/torch.yaml"
        script:
            "../scripts/extract_scene_features.py"


if "fig_recon" in FIGURES:

    # A few reconstructions (input / intact / zeroed), with the dims and masks of Table 4.
    rule fig_recon:
        input:
            **EXPERIMENTS["reconstruction"].inputs(LAYOUT, reconstruction_models(config)[0]),
            table=experiment_file("reconstruction", reconstruction_models(config)[0]),
        output:
            **figure_files("fig_recon"),
        params:
            model=reconstruction_models(config)[0],
            root=lambda wildcards: dataset_root("cityscapes"),
            config=config_slice(config, FIG_RECON_KEYS, reconstruction_models(config)[0]),
        threads: config["extraction"]["threads"]
        resources:
            gpu=1,
        log:
            f"{LOGS}/figures/fig_recon.log",
        benchmark:
            f"{BENCHMARKS}/figures/fig_recon.tsv"
        conda:
            "../envs/torch.yaml"
        script:
            "../scripts/make_fig_recon.py"
