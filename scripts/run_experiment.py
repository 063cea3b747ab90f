"""Snakemake entry point: one experiment job (one experiment, or a study's) for one model -> tidy CSVs
(rules/experiments.smk)."""

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
    model = sm.params.model
    # The sidecars of the experiments that write per-unit statistics, in the group's order (rules/experiments.smk).
    sidecars = dict(zip([name for name in sm.params.experiments if experiment(name).units], sm.output.units))
    for name, table in zip(sm.params.experiments, sm.output.tables):
        # Only the declared keys (the rule's params): an undeclared read fails instead of missing a rerun.
        config = ConfigView(sm.params.config[name], experiment(name).keys(sm.config, model), model,
                            owner=f"experiment {name}")
        units = []
        rows = run_experiment(name, model, sm.params.inputs[name], sm.params.settings[name], config, units)
        if name in sidecars:
            write_units(units, sidecars[name])
        write_csv(rows, table)
        log.info("%s/%s: %d rows -> %s", name, model, len(rows), table)
