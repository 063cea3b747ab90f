"""Snakemake entry point: one experiment job (one experiment and model, a study's for a model, or a study's for
every model) -> tidy CSVs (rules/experiments.smk)."""

import sys
from pathlib import Path

# The workflow's own package, also inside `--sdm conda` environments.
sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

import torch

from vitlocal.evaluation.units import write_units
from vitlocal.plotting.base import write_csv
from vitlocal.studies import experiment
from vitlocal.studies.base import ConfigView
from vitlocal.studies.runner import run_experiment
from vitlocal.workflow import rule_logging

with rule_logging(snakemake.log[0]) as log:  # noqa: F821 (injected by Snakemake)
    sm = snakemake  # noqa: F821
    torch.set_num_threads(sm.threads)
    # The sidecars of the experiments that write per-unit statistics, in the group's order (rules/experiments.smk).
    sidecars = iter(sm.output.units)
    for job, table in zip(sm.params.jobs, sm.output.tables):
        name, model = job["experiment"], job["model"]
        # Only the declared keys (the rule's params): an undeclared read fails instead of missing a rerun.
        config = ConfigView(job["config"], experiment(name).keys(sm.config, model), model, owner=f"experiment {name}")
        units = []
        rows = run_experiment(name, model, job["inputs"], job["settings"], config, units)
        if experiment(name).units:
            write_units(units, next(sidecars))
        write_csv(rows, table)
        log.info("%s/%s: %d rows -> %s", name, model, len(rows), table)
