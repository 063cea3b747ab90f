"""Snakemake entry point: download one checkpoint (rules/weights.smk)."""

import sys
from pathlib import Path

# The workflow's own package, also inside `--sdm conda` environments.
sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from vitlocal.models.registry import resolve
from vitlocal.models.weights import download
from vitlocal.workflow import rule_logging

with rule_logging(snakemake.log[0]) as log:  # noqa: F821 (injected by Snakemake)
    sm = snakemake  # noqa: F821
    spec = resolve(sm.wildcards.model, sm.params.overrides)
    path = download(spec, sm.params.weights_dir)
    if Path(path) != Path(sm.output.weights):
        raise RuntimeError(f"downloaded {path}, but the workflow expected {sm.output.weights}")
    log.info("%s: %s", spec.key, path)
