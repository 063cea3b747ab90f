"""Snakemake entry point: one figure or table from experiment CSVs (rules/figures.smk)."""

import sys
from pathlib import Path

# The workflow's own package, also inside `--sdm conda` environments.
sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from vitlocal.studies import output
from vitlocal.studies.base import ConfigView
from vitlocal.studies.outputs import make_output
from vitlocal.workflow import rule_logging

with rule_logging(snakemake.log[0]) as log:  # noqa: F821 (injected by Snakemake)
    sm = snakemake  # noqa: F821
    figure = sm.params.figure
    # Only the declared keys (the rule's params): an undeclared read fails instead of missing a rerun.
    config = ConfigView(sm.params.config, output(figure).config_keys, owner=f"output {figure}")
    shown = make_output(figure, list(sm.input), dict(sm.output), config)
    log.info("%s: %d numbers -> %s", sm.params.figure, len(shown), ", ".join(sm.output))
