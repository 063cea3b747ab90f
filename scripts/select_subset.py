"""Snakemake entry point: write one subset manifest (rules/subsets.smk)."""

import sys
from pathlib import Path

# The workflow's own package, also inside `--sdm conda` environments.
sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from vitlocal.subsets import select_subset, write_manifest
from vitlocal.workflow import rule_logging

with rule_logging(snakemake.log[0]) as log:  # noqa: F821 (injected by Snakemake)
    sm = snakemake  # noqa: F821
    manifest = select_subset(
        sm.wildcards.dataset,
        sm.wildcards.subset,
        root=sm.params.root,
        settings=sm.params.settings,
        seed=sm.params.seed,
    )
    write_manifest(manifest, sm.output.manifest)
    log.info("%s/%s: %d rows -> %s", sm.wildcards.dataset, sm.wildcards.subset, len(manifest), sm.output.manifest)
