"""Snakemake entry point: one model's stage-1 shards, in shard order -> its stage-1 .npz (rules/dvt.smk)."""

import sys
from pathlib import Path

# The workflow's own package, also inside `--sdm conda` environments.
sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from vitlocal.denoise.stage1_files import gather_stage1  # torch-free: this job only concatenates
from vitlocal.workflow import rule_logging

with rule_logging(snakemake.log[0]) as log:  # noqa: F821 (injected by Snakemake)
    sm = snakemake  # noqa: F821
    attrs = gather_stage1(sm.input.shards, sm.output.npz, model_key=sm.wildcards.model)
    log.info("%s: %d tiles, %d empty shards", sm.output.npz, attrs["n_tiles"], attrs["empty_shards"])
