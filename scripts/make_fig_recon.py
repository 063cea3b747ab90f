"""Snakemake entry point: fig_recon, a few MAE reconstructions with the top-m dims zeroed (rules/scene.smk)."""

import sys
from pathlib import Path

# The workflow's own package, also inside `--sdm conda` environments.
sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

import torch

from vitlocal.studies.base import ConfigView
from vitlocal.studies.scene import FIG_RECON_KEYS
from vitlocal.studies.scene.figures import write_fig_recon
from vitlocal.workflow import rule_logging

with rule_logging(snakemake.log[0]) as log:  # noqa: F821 (injected by Snakemake)
    sm = snakemake  # noqa: F821
    torch.set_num_threads(sm.threads)
    config = ConfigView(sm.params.config, FIG_RECON_KEYS, sm.params.model, owner="fig_recon")
    shown = write_fig_recon(sm.params.model, config, table_csv=sm.input.table, manifest=sm.input.val_manifest,
                            root=sm.params.root, out=dict(sm.output))
    log.info("fig_recon: %d reconstructions -> %s", len(shown), ", ".join(sm.output))
