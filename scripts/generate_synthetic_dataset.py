"""Snakemake entry point: write a synthetic dataset in its official layout (rules/data.smk)."""

import sys
from pathlib import Path

# The workflow's own package, also inside `--sdm conda` environments.
sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from vitlocal.synthetic import generate
from vitlocal.workflow import rule_logging

with rule_logging(snakemake.log[0]) as log:  # noqa: F821 (injected by Snakemake)
    sm = snakemake  # noqa: F821
    root = generate(sm.wildcards.dataset, sm.output.data, size=sm.params.size, seed=sm.params.seed)
    log.info("synthetic %s (%s size, seed %d) written to %s", sm.wildcards.dataset, sm.params.size, sm.params.seed, root)
