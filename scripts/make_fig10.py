"""Snakemake entry point: Fig 10, frequency noise on the first validation image (rules/figures.smk)."""

import sys
from pathlib import Path

# The workflow's own package, also inside `--sdm conda` environments.
sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from vitlocal.datasets import cityscapes
from vitlocal.studies.probing.freqnoise_figure import fig10
from vitlocal.subsets import read_manifest
from vitlocal.workflow import rule_logging

with rule_logging(snakemake.log[0]) as log:  # noqa: F821 (injected by Snakemake)
    sm = snakemake  # noqa: F821
    row = read_manifest(sm.input.manifest).iloc[0]
    image, _ = cityscapes.read_sample(sm.params.root, row)
    fig10(
        image, sm.output.pdf, sm.output.png, sm.output.csv,
        bands=[tuple(b) for b in sm.params.bands], sigma=sm.params.sigma, seed=sm.params.seed,
        demo=sm.params.demo_subject is not None, demo_subject=sm.params.demo_subject, preset=sm.params.preset,
    )
    log.info("Fig 10 on %s -> %s", row["sample_id"], sm.output.pdf)
