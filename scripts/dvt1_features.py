"""Snakemake entry point: every dvt1 feature file of one model (stage 1's F per tile, rules/dvt.smk)."""

import sys
from pathlib import Path

# The workflow's own package, also inside `--sdm conda` environments.
sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

import torch

from vitlocal.denoise.pipeline import stage1_feature_file
from vitlocal.denoise.settings import split_stage1_config
from vitlocal.workflow import rule_logging

with rule_logging(snakemake.log[0]) as log:  # noqa: F821 (injected by Snakemake)
    sm = snakemake  # noqa: F821
    torch.set_num_threads(sm.threads)
    p = sm.params
    settings, shard = split_stage1_config(p.stage1)  # one job per model (no shards), tiles_per_step a call
    for job in p.jobs:
        done = stage1_feature_file(job["raw"], job["out"], model_key=p.model, model_overrides=p.model_overrides,
                                   weights_dir=p.weights_dir, root=job["root"], manifest=job["manifest"],
                                   settings=settings, seed=p.seed, device=p.device, dtype=p.dtype,
                                   tiles_per_step=shard.tiles_per_step)
        log.info("%s: %d tiles by stage 1, %.2f s per tile", job["out"], done["tiles"], done["seconds_per_tile"])
