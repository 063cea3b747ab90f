"""Snakemake entry point: DVT stage 1 on one shard of one model's training tiles -> .npz (rules/dvt.smk)."""

import sys
from pathlib import Path

# The workflow's own package, also inside `--sdm conda` environments.
sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

import torch

from vitlocal.denoise.settings import split_stage1_config
from vitlocal.denoise.shards import run_stage1_shard
from vitlocal.workflow import rule_logging

with rule_logging(snakemake.log[0]) as log:  # noqa: F821 (injected by Snakemake)
    sm = snakemake  # noqa: F821
    torch.set_num_threads(sm.threads)
    p = sm.params
    settings, shard = split_stage1_config(p.stage1)
    attrs = run_stage1_shard(model_key=sm.wildcards.model, model_overrides=p.model_overrides,
                             weights_dir=p.weights_dir, sources=p.sources, settings=settings, shard=shard,
                             index=int(sm.wildcards.shard), out_path=sm.output.npz, preset=p.preset, seed=p.seed,
                             device=p.device, figure_tiles=p.figure_tiles)
    log.info("shard %s: %d tiles, mean %.2f s per tile", sm.wildcards.shard, attrs["n_tiles"],
             attrs["seconds_per_tile"])
