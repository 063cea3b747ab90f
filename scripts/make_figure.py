"""Snakemake entry point: one figure or table from experiment CSVs (rules/figures.smk)."""

import sys
from pathlib import Path

# The workflow's own package, also inside `--sdm conda` environments.
sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from vitlocal.studies.outputs import make_output
from vitlocal.workflow import rule_logging

with rule_logging(snakemake.log[0]) as log:  # noqa: F821 (injected by Snakemake)
    sm = snakemake  # noqa: F821
    shown = make_output(sm.params.figure, list(sm.input), dict(sm.output), sm.config)
    log.info("%s: %d numbers -> %s", sm.params.figure, len(shown), ", ".join(sm.output))
