"""Snakemake entry point: one experiment for one model -> tidy CSV (rules/experiments.smk)."""

import sys
from pathlib import Path

# The workflow's own package, also inside `--sdm conda` environments.
sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

import torch

from vitlocal.plotting.base import write_csv
from vitlocal.studies.runner import run_experiment
from vitlocal.workflow import rule_logging

with rule_logging(snakemake.log[0]) as log:  # noqa: F821 (injected by Snakemake)
    sm = snakemake  # noqa: F821
    torch.set_num_threads(sm.threads)
    rows = run_experiment(sm.wildcards.experiment, sm.wildcards.model, sm.params.inputs, sm.params.settings, sm.config)
    write_csv(rows, sm.output.table)
    log.info("%s/%s: %d rows -> %s", sm.wildcards.experiment, sm.wildcards.model, len(rows), sm.output.table)
