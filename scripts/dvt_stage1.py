"""Snakemake entry point: DVT stage 1 on one model's training tiles -> .npz (rules/dvt.smk)."""

import sys
from pathlib import Path

# The workflow's own package, also inside `--sdm conda` environments.
sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

import torch

from vitlocal.denoise.pipeline import run_stage1
from vitlocal.denoise.stage1 import Stage1Settings
from vitlocal.workflow import rule_logging

with rule_logging(snakemake.log[0]) as log:  # noqa: F821 (injected by Snakemake)
    sm = snakemake  # noqa: F821
    torch.set_num_threads(sm.threads)
    p = sm.params
    timing = run_stage1(model_key=sm.wildcards.model, model_overrides=p.model_overrides, weights_dir=p.weights_dir,
                        sources=p.sources, settings=Stage1Settings.from_config(p.stage1), out_path=sm.output.npz,
                        preset=p.preset, seed=p.seed, device=p.device, figure_tiles=p.figure_tiles)
    per_tile = timing["seconds_views"] + timing["seconds_fit"]
    log.info("per-tile stage-1 time: mean %.2f s, median %.2f s over %d tiles", per_tile.mean(), per_tile.median(),
             len(timing))
