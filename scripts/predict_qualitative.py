"""Snakemake entry point: Fig 13 predictions of every model on two val images (rules/experiments.smk)."""

import sys
from pathlib import Path

# The workflow's own package, also inside `--sdm conda` environments.
sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

import torch

from vitlocal.studies.probing.qualitative import qualitative_predictions
from vitlocal.evaluation.segmentation import EvalTarget, ProbeSettings
from vitlocal.workflow import rule_logging

with rule_logging(snakemake.log[0]) as log:  # noqa: F821 (injected by Snakemake)
    sm = snakemake  # noqa: F821
    torch.set_num_threads(sm.threads)
    target = EvalTarget.load("cityscapes", sm.params.root, sm.input.manifest)
    models = {m: (t, v) for m, t, v in zip(sm.params.models, sm.input.train, sm.input.val)}
    record = qualitative_predictions(models, sm.output.npz, target=target, probes=ProbeSettings.from_config(sm.params.config))
    log.info("Fig 13 predictions for %s on %s -> %s", list(models), record["sample_ids"], sm.output.npz)
