"""Snakemake entry point: GSD features ([CLS], mean patch) of one model on the scene datasets (rules/scene.smk)."""

import sys
from pathlib import Path

# The workflow's own package, also inside `--sdm conda` environments.
sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

import torch

from vitlocal.studies.scene.gsd import extract_scene_feature_files
from vitlocal.workflow import rule_logging

with rule_logging(snakemake.log[0]):  # noqa: F821 (injected by Snakemake)
    sm = snakemake  # noqa: F821
    torch.set_num_threads(sm.threads)
    extract_scene_feature_files(
        model_key=sm.wildcards.model, model_overrides=sm.params.model_overrides, datasets=sm.params.datasets,
        roots=sm.params.roots, manifests=sm.params.manifests, data_sources=sm.params.data_sources,
        out_paths=list(sm.output), sizes=sm.params.sizes, base_resolution=sm.params.base_resolution,
        weights_dir=sm.params.weights_dir, device=sm.params.device, batch_size=sm.params.batch_size,
        preset=sm.params.preset,
    )
