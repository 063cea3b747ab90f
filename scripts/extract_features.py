"""Snakemake entry point: the feature files of one extraction job, model after model (rules/features.smk)."""

import sys
from pathlib import Path

# The workflow's own package, also inside `--sdm conda` environments.
sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

import torch

from vitlocal.features.pipeline import extract_planned_files
from vitlocal.workflow import rule_logging

with rule_logging(snakemake.log[0]):  # noqa: F821 (injected by Snakemake); the pipeline logs progress
    sm = snakemake  # noqa: F821
    torch.set_num_threads(sm.threads)
    files = [{**entry, "path": path} for entry, path in zip(sm.params.files, sm.output.features)]
    for model_key, model_overrides in sm.params.models.items():
        extract_planned_files(
            files=[{k: v for k, v in entry.items() if k != "model"} for entry in files if entry["model"] == model_key],
            manifests=sm.params.manifests,
            dataset=sm.params.dataset,
            root=sm.params.root,
            model_key=model_key,
            model_overrides=model_overrides,
            preset=sm.params.preset,
            weights_dir=sm.params.weights_dir,
            device=sm.params.device,
            batch_size=sm.params.batch_size,
            num_workers=sm.params.num_workers,
            dtype=sm.params.dtype,
            autocast=sm.params.autocast,
            patch_label_method=sm.params.patch_labels,
            seed=sm.params.seed,
            # Degraded jobs only: the other files do not read them (the defaults are never used there).
            **{key: getattr(sm.params, key) for key in ("bands", "freq_sigma") if hasattr(sm.params, key)},
            frame_size=sm.params.frame_size,
            data_source=sm.params.data_source,
            progress=True,  # tqdm on stderr: the terminal, or the cluster job log
        )
