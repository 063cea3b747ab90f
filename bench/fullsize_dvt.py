"""Everything the full-size projection knows about DVT, in one place (``bench/fullsize.py``'s DVT part).

Units: stage-1 tiles (the per-tile decomposition), stage-2 tile-steps (the
denoiser's training) and denoised tiles (the denoiser over a raw feature
file); the DVT experiments run their mirrored study's planner on every
feature level. Per-unit costs: stage 1 measured by bench/dvt.py (``dvt.json``,
or bench/gpu.py's ``dvt`` section) where given, else bench/RESULTS.md (CPU)
and the DVT paper (GPU), always through :func:`stage1_projection` (shards and
their start-up); stage 2 by FLOPs from the measured forward.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from vitlocal.denoise.settings import RUNTIME_MARGIN, STARTUP_SECONDS, split_stage1_config

#: bench/RESULTS.md "Study costs": DVT stage 1, one tile at the paper's settings ~2 h on one core
#: (views 7 min + fit 111 min).
DVT_STAGE1_TILE_CPU_S = 2 * 3600.0
#: The DVT paper's ~30 GPU-seconds per image (config.yaml dvt.stage1.seconds_per_tile; not measured here).
PAPER_GPU_S_PER_TILE = 30.0

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


def dvt_cpu_costs(forward_s: float, stage1_s: float) -> dict[str, float]:
    """Per-unit CPU costs: stage 1 as :func:`stage1_tile_costs`; one Transformer block of 12, fwd + bwd (~3x fwd)."""
    return {
        "dvt_stage1_s_per_tile": stage1_s,
        "dvt_stage2_s_per_tile_step": 3 * forward_s / 12,
        "dvt_denoise_s_per_tile": forward_s / 12,
    }


def dvt_gpu_costs(forward_s: float, stage1: tuple[float, str]) -> tuple[dict[str, float], dict[str, str]]:
    """Per-unit GPU costs and where each comes from (stage 1: ``(seconds, source)`` of :func:`stage1_tile_costs`)."""
    return {
        "dvt_stage1_s_per_tile": stage1[0],
        "dvt_stage2_s_per_tile_step": 3 * forward_s / 12,
        "dvt_denoise_s_per_tile": forward_s / 12,
    }, {
        "dvt_stage1_s_per_tile": stage1[1],
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


# ---- stage 1: per-tile cost -> device-hours and wall time (the main tables and the stage-1 section) ---


def best_tile_seconds(figures: Mapping[str, Any]) -> tuple[float, str]:
    """The faster of the measured paths (batched when timed), and which."""
    timed = {k: figures[k]["tile_s"] for k in ("batched", "one_at_a_time") if "tile_s" in figures.get(k, {})}
    best = min(timed, key=timed.get)
    return timed[best], best


def stage1_projection(tile_s: float, *, tiles_per_model: int, models: int, tiles_per_job: int,
                      gpus: Sequence[int] = (1, 8)) -> dict[str, Any]:
    """Stage 1 of the preset at ``tile_s`` device seconds a tile: device-hours and wall time on ``gpus`` devices.

    Shards (``tiles_per_job`` tiles, each paying ``STARTUP_SECONDS`` once) run
    ``n`` at a time on ``n`` devices; the wall time is the longest device's
    queue (shards dealt round-robin, largest first).
    """
    shard_tiles = []
    for _ in range(models):
        full, rest = divmod(tiles_per_model, tiles_per_job)
        shard_tiles += [tiles_per_job] * full + ([rest] if rest else [])
    shard_s = sorted((STARTUP_SECONDS + n * tile_s for n in shard_tiles), reverse=True)
    out = {"tile_s": tile_s, "tiles": models * tiles_per_model, "shards": len(shard_s),
           "device_hours": sum(shard_s) / 3600, "fit_hours": models * tiles_per_model * tile_s / 3600,
           "shard_runtime_min": math.ceil(max(shard_s) * RUNTIME_MARGIN / 60), "wall_hours": {}}
    for n in gpus:
        queues = [0.0] * n
        for s in shard_s:
            queues[queues.index(min(queues))] += s
        out["wall_hours"][n] = max(queues) / 3600
    return out


def measured_tile_seconds(gpu_json: Mapping[str, Any] | None, dvt_json: Mapping[str, Any] | None
                          ) -> dict[str, tuple[float, str]]:
    """``{"cpu"|"gpu": (seconds per tile, where from)}`` from bench/dvt.py's ``dvt.json`` and bench/gpu.py's
    ``dvt`` section (a device missing from both is left out)."""
    found: dict[str, tuple[float, str]] = {}
    for name, figures in (dvt_json or {}).get("devices", {}).items():
        seconds, path = best_tile_seconds(figures)
        found["gpu" if name.startswith("cuda") else "cpu"] = (seconds, f"bench/dvt.py, {path}, {figures['device']}")
    section = (gpu_json or {}).get("sections", {}).get("dvt", {})
    if section.get("status") == "ok":
        seconds, path = best_tile_seconds(section["figures"])
        found["gpu"] = (seconds, f"bench/gpu.py dvt section, {path}, {section['figures']['device']}")
    return found


def fullsize_stage1(config: Mapping[str, Any], gpu_json: Mapping[str, Any] | None,
                    dvt_json: Mapping[str, Any] | None) -> dict[str, Any]:
    """Stage 1 of ``config`` at the DVT paper's 30 GPU-s a tile and at each measured cost, on 1 and 8 devices."""
    dvt = config["dvt"]
    shard = split_stage1_config(dvt.get("stage1", {}))[1]
    plan = dict(tiles_per_model=int(dvt["stage1_tiles"]) * len(dvt["stage1_subsets"]), models=len(dvt["models"]),
                tiles_per_job=shard.tiles_per_job)
    rows = {"DVT paper's ~30 GPU-s a tile (the projection before)": stage1_projection(PAPER_GPU_S_PER_TILE, **plan)}
    measured = measured_tile_seconds(gpu_json, dvt_json)
    for device, (seconds, source) in measured.items():
        rows[f"measured, {device}: {source}"] = stage1_projection(seconds, **plan)
    return {"plan": plan, "rows": rows, "measured": measured}


def stage1_tile_costs(stage1_data: Mapping[str, Any]) -> dict[str, tuple[float, str]]:
    """``{"cpu"|"gpu": (seconds, source)}`` per stage-1 tile for the main tables: :func:`stage1_projection`'s
    device-hours over its tiles (each shard's start-up spread over its tiles), at the measured cost of each
    device where given, else bench/RESULTS.md's ~2 h on one core (CPU) and the paper's ~30 GPU-s (GPU)."""
    plan = stage1_data["plan"]
    chosen = {"cpu": (DVT_STAGE1_TILE_CPU_S, 'bench/RESULTS.md "Study costs", ~2 h on one core'),
              "gpu": (PAPER_GPU_S_PER_TILE, "the DVT paper's ~30 GPU-s per image, not measured"),
              **stage1_data["measured"]}
    out = {}
    for device, (tile_s, source) in chosen.items():
        row = stage1_projection(tile_s, **plan)
        out[device] = (row["device_hours"] * 3600 / row["tiles"],
                       f"{tile_s:.3g} s a tile ({source}) + {STARTUP_SECONDS} s start-up a shard of "
                       f"{plan['tiles_per_job']} tiles")
    return out


def fullsize_lines(stage1_data: Mapping[str, Any]) -> list[str]:
    """The report section of :func:`fullsize_stage1`."""
    plan = stage1_data["plan"]
    lines = ["## DVT stage 1 (bench/dvt.py)", "",
             (f"{plan['models']} models x {plan['tiles_per_model']:,} tiles, shards of {plan['tiles_per_job']} "
              f"tiles (dvt.stage1.tiles_per_job), {STARTUP_SECONDS} s start-up a shard."), "",
             "| per-tile cost | s / tile | shards | device-hours | wall, 1 device | wall, 8 devices |",
             "|---|---|---|---|---|---|"]
    for name, row in stage1_data["rows"].items():
        wall = row["wall_hours"]
        lines.append(f"| {name} | {row['tile_s']:,.1f} | {row['shards']} | {row['device_hours']:,.1f} h "
                     f"(fit alone {row['fit_hours']:,.1f} h) | {wall[1]:,.1f} h | {wall[8]:,.2f} h |")
    return [*lines, "", ("CPU rows are one process on this machine's cores (core-hours, not GPU-hours); "
                         "wall time: shards dealt to the devices largest first."), ""]
