"""Snakemake entry point: fig_dvt from the stage-1 outputs and the denoisers (rules/dvt.smk)."""

import json
import sys
from pathlib import Path

# The workflow's own package, also inside `--sdm conda` environments.
sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from vitlocal.denoise.pipeline import read_stage1
from vitlocal.denoise.stage2 import denoise, load_checkpoint
from vitlocal.studies.dvt.figures import fig_dvt
from vitlocal.workflow import rule_logging

with rule_logging(snakemake.log[0]) as log:  # noqa: F821 (injected by Snakemake)
    sm = snakemake  # noqa: F821
    n = sm.params.n_images
    stage1 = [read_stage1(path, model) for path, model in zip(sm.input.stage1, sm.params.models)]
    outputs = [denoise(load_checkpoint(ckpt), s["raw"][:n]) for ckpt, s in zip(sm.input.checkpoints, stage1)]
    # Our checkpoints' sidecars hold stage 2's held-out loss; a released checkpoint has none.
    sidecars = [Path(ckpt).with_suffix(".json") for ckpt in sm.input.checkpoints]
    training = [json.loads(p.read_text()).get("training_log") if p.is_file() else None for p in sidecars]
    shown = fig_dvt(sm.params.models, stage1, outputs, sm.output.pdf, sm.output.png, sm.output.csv, n_images=n,
                    demo_subject=sm.params.demo_subject, preset=sm.params.preset, training=training)
    log.info("fig_dvt: %d rows -> %s", len(shown), ", ".join(sm.output))
