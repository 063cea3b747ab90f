"""Snakemake entry point: Table 1, static pre-training facts (rules/figures.smk)."""

import sys
from pathlib import Path

# The workflow's own package, also inside `--sdm conda` environments.
sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from vitlocal.studies.probing.figures import table1
from vitlocal.workflow import rule_logging

with rule_logging(snakemake.log[0]) as log:  # noqa: F821 (injected by Snakemake)
    sm = snakemake  # noqa: F821
    table1(sm.output.csv, sm.output.tex)
    log.info("Table 1 -> %s", sm.output.tex)
