"""Snakemake entry point: every denoised feature file of one model (stage-2 denoiser on the last layer)."""

import json
import sys
from pathlib import Path

# The workflow's own package, also inside `--sdm conda` environments.
sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

import torch

from vitlocal.denoise.pipeline import RELEASED, denoise_feature_file, denoiser_record
from vitlocal.denoise.stage2 import load_checkpoint, sha256_of
from vitlocal.models.registry import resolve
from vitlocal.workflow import rule_logging

with rule_logging(snakemake.log[0]) as log:  # noqa: F821 (injected by Snakemake)
    sm = snakemake  # noqa: F821
    torch.set_num_threads(sm.threads)
    checkpoint = Path(sm.input.checkpoint)
    sidecar = checkpoint.with_suffix(".json")
    record = json.loads(sidecar.read_text()) if sidecar.is_file() else {"file": checkpoint.name,
                                                                          "sha256": sha256_of(checkpoint),
                                                                          "source": RELEASED}
    model = load_checkpoint(checkpoint, sha256=record.get("sha256"))
    record = denoiser_record(record, checkpoint, model, resolve(sm.params.model, sm.params.model_overrides))
    for raw, out in zip(sm.input.raw, sm.output.features):
        n = denoise_feature_file(raw, model, out, variant=Path(out).stem, checkpoint=record,
                                 device=sm.params.device, dtype=sm.params.dtype)
        log.info("%s: %d patches denoised with %s (%s, sha256 %s)", out, n, checkpoint, record["dvt_source"],
                 record["sha256"][:12])
