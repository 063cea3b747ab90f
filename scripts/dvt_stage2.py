"""Snakemake entry point: train one model's DVT denoiser on its stage-1 outputs (rules/dvt.smk)."""

import sys
from pathlib import Path

# The workflow's own package, also inside `--sdm conda` environments.
sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

import torch

from vitlocal.denoise.pipeline import run_stage2
from vitlocal.denoise.stage2 import Stage2Settings
from vitlocal.workflow import rule_logging

with rule_logging(snakemake.log[0]) as log:  # noqa: F821 (injected by Snakemake)
    sm = snakemake  # noqa: F821
    torch.set_num_threads(sm.threads)
    record = run_stage2(stage1_path=sm.input.npz, settings=Stage2Settings.from_config(sm.params.stage2),
                        out_path=sm.output.checkpoint, model_key=sm.wildcards.model, seed=sm.params.seed,
                        device=sm.params.device)
    log.info("%s: sha256 %s", sm.output.checkpoint, record["sha256"])
