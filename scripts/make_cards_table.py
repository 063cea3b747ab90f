"""Snakemake entry point: the comparison table of every carded model (rules/card.smk)."""

import sys
from pathlib import Path

# The workflow's own package, also inside `--sdm conda` environments.
sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from vitlocal.studies.card.figures import write_table_files
from vitlocal.workflow import rule_logging

with rule_logging(snakemake.log[0]) as log:  # noqa: F821 (injected by Snakemake)
    sm = snakemake  # noqa: F821
    table = write_table_files(list(sm.input.reads), sm.params.models, dict(sm.output))
    log.info("cards: %d models -> %s", len(table), ", ".join(sm.output))
