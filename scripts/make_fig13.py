"""Snakemake entry point: Fig 13, qualitative predictions (rules/figures.smk)."""

import sys
from pathlib import Path

# The workflow's own package, also inside `--sdm conda` environments.
sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from vitlocal.studies.probing.figures import fig13
from vitlocal.workflow import rule_logging

with rule_logging(snakemake.log[0]) as log:  # noqa: F821 (injected by Snakemake)
    sm = snakemake  # noqa: F821
    fig13(
        sm.input.npz, sm.output.pdf, sm.output.png, sm.output.csv, preset=sm.params.preset,
        knn_metric=sm.params.knn_metric, demo=sm.params.demo_subject is not None, demo_subject=sm.params.demo_subject,
    )
    log.info("Fig 13 -> %s", sm.output.pdf)
