"""Snakemake entry point: figures and tables from experiment CSVs (``figure_rules`` in rules/common.smk)."""

import sys
from pathlib import Path

# The workflow's own package, also inside `--sdm conda` environments.
sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from vitlocal.studies import output
from vitlocal.studies.base import ConfigView
from vitlocal.studies.outputs import make_output
from vitlocal.workflow import rule_logging

with rule_logging(snakemake.log[0]) as log:  # noqa: F821 (injected by Snakemake)
    # One entry per output the job writes (one, or a study's with `figure_jobs: per_study`).
    for entry in snakemake.params.figures:  # noqa: F821
        figure = entry["figure"]
        # Only the declared keys (the rule's params): an undeclared read fails instead of missing a rerun.
        config = ConfigView(entry["config"], output(figure).config_keys, owner=f"output {figure}")
        shown = make_output(figure, entry["reads"], entry["files"], config)
        log.info("%s: %d numbers -> %s", figure, len(shown), ", ".join(entry["files"].values()))
