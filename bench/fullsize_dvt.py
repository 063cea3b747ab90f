"""Everything the full-size projection knows about DVT, in one place (``bench/fullsize.py``'s DVT part).

Units: stage-1 tiles (the per-tile decomposition), stage-2 tile-steps (the
denoiser's training) and denoised tiles (the denoiser over a raw feature
file); the DVT experiments run their mirrored study's planner on every
feature level. Per-unit costs: stage 1 from bench/RESULTS.md (CPU) and the
DVT paper (GPU), stage 2 by FLOPs from the measured forward.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

#: bench/RESULTS.md "Study costs": DVT stage 1, one tile at the paper's settings ~2 h on one core
#: (views 7 min + fit 111 min).
DVT_STAGE1_TILE_CPU_S = 2 * 3600.0
#: config.yaml dvt.stage1_tiles comment: the DVT paper's ~30 GPU-seconds per image (not measured here).
DVT_STAGE1_TILE_GPU_S = 30.0

#: stage -> (unit name, per-unit cost key, what it is), as ``fullsize_work.STAGES``.
DVT_STAGES: dict[str, tuple[str, str, str]] = {
    "dvt_stage1_tiles": ("tiles", "dvt_stage1_s_per_tile", "DVT per-tile decomposition (paper settings)"),
    "dvt_stage2_tile_steps": ("tile-steps", "dvt_stage2_s_per_tile_step", "DVT denoiser training"),
    "dvt_denoise_tiles": ("tiles", "dvt_denoise_s_per_tile", "DVT denoiser applied to feature files"),
}


def dvt_planner(planner: Callable[..., None]) -> Callable[..., None]:
    """A DVT task: the mirrored study's computation on the raw and on each denoised level's files."""
    def plan(work, inputs, model, units):
        for level in DVT_LEVELS:
            if level in inputs:
                planner(work, inputs[level], model, units)
    return plan


#: Feature levels a DVT experiment compares: raw, stage-2 denoised, stage-1 F (``dvt.stage1_tasks``).
DVT_LEVELS = ("raw", "dvt", "dvt1")


def dvt_training(config: Mapping[str, Any], units: dict[str, float]) -> None:
    """Stage 1 on its own tiles and stage 2's training, once per DVT model."""
    dvt = config["dvt"]
    units["dvt_stage1_tiles"] += dvt["stage1_tiles"] * len(dvt["stage1_subsets"])
    units["dvt_stage2_tile_steps"] += dvt["stage2"]["steps"] * dvt["stage2"]["batch_size"]


def dvt_file(shape: Any, units: dict[str, float], hold: Callable[[str, int], None]) -> bool:
    """Count a denoised-level feature file (``dvt1-*``: stage 1's F, ``dvt-*``: a stage-2 pass); False if raw."""
    level = shape.variant.split("-")[0]
    if level == "dvt1":  # stage 1's F on every tile of the file (dvt.stage1_tasks)
        units["dvt_stage1_tiles"] += shape.images * shape.tiles_per_image
        return True
    if level == "dvt":  # a stage-2 denoiser pass over the raw file: one block per tile
        units["dvt_denoise_tiles"] += shape.images * shape.tiles_per_image
        units["write_gb"] += shape.rows * shape.dim * 2 / 1e9
        hold("dvt_denoise", shape.rows * shape.dim)
        return True
    return False


def dvt_cpu_costs(forward_s: float) -> dict[str, float]:
    """Per-unit CPU costs: stage 1 from bench/RESULTS.md; one Transformer block of 12, fwd + bwd (~3x fwd)."""
    return {
        "dvt_stage1_s_per_tile": DVT_STAGE1_TILE_CPU_S,
        "dvt_stage2_s_per_tile_step": 3 * forward_s / 12,
        "dvt_denoise_s_per_tile": forward_s / 12,
    }


def dvt_gpu_costs(forward_s: float) -> tuple[dict[str, float], dict[str, str]]:
    """Per-unit GPU costs and where each comes from."""
    return {
        "dvt_stage1_s_per_tile": DVT_STAGE1_TILE_GPU_S,
        "dvt_stage2_s_per_tile_step": 3 * forward_s / 12,
        "dvt_denoise_s_per_tile": forward_s / 12,
    }, {
        "dvt_stage1_s_per_tile": "the DVT paper's ~30 GPU-s per image (config.yaml dvt comment), not measured",
        "dvt_stage2_s_per_tile_step": "3 x one block of 12 of the forward (fwd + bwd), by FLOPs",
        "dvt_denoise_s_per_tile": "one block of 12 of the forward, by FLOPs",
    }


def run_denoise(path: str, out: str) -> None:
    """Memory stage ``dvt_denoise``: a random-weight denoiser over one feature file (peak RSS only)."""
    from vitlocal.denoise.pipeline import denoise_feature_file
    from vitlocal.denoise.stage2 import Denoiser
    from vitlocal.features.store import read_attrs

    attrs = read_attrs(path)
    denoise_feature_file(path, Denoiser(768, attrs["grid"]), out, device="cpu")
