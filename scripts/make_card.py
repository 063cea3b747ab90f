"""Snakemake entry point: one model's local-feature card (rules/card.smk)."""

import sys
from pathlib import Path

# The workflow's own package, also inside `--sdm conda` environments.
sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from vitlocal.studies.card.figures import write_card_files
from vitlocal.workflow import rule_logging

with rule_logging(snakemake.log[0]) as log:  # noqa: F821 (injected by Snakemake)
    sm = snakemake  # noqa: F821
    shown = write_card_files(list(sm.input), sm.params.model, sm.params.models, dict(sm.output),
                             sm.params.main_train_set, resamples=sm.params.resamples, seed=sm.params.seed)
    log.info("card of %s: %d numbers -> %s", sm.params.model, len(shown), ", ".join(sm.output))
