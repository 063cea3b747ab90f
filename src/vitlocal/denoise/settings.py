"""DVT stage 1's settings and its plan of shard jobs: what the Snakefile reads before any job.

Pure Python (no torch): the workflow plans the shards from the config alone,
and a cluster job re-parses the Snakefile before it starts. The fit itself is
``denoise.stage1``; running a shard is ``denoise.shards``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

from ..errors import ConfigError

@dataclasses.dataclass(frozen=True)
class Stage1Settings:
    """Hyper-parameters of one per-image fit (config ``dvt.stage1``; defaults = the paper's but ``max_resolution``).

    ``weight_decay``: the authors pass 1e-5 to Adam, but their loop
    backpropagates ``grad_scaler.scale(loss)`` (a 2^10 GradScaler) and calls
    ``optimizer.step()`` without unscaling. Adam's update is invariant to the
    gradient's scale, its L2 term ``wd * theta`` is not: relative to the
    gradient it is 1024x weaker, so the decay in effect is 1e-5 / 1024. We
    use that effective value on unscaled gradients.

    ``max_resolution``: the finest grid (cells per side), or ``"auto"``: the
    tile's longer side in pixels (one cell per pixel, the finest detail any
    view can show; 224 or 256 for this study's tiles instead of 1024). The
    ``levels`` resolutions are spaced geometrically from ``base_resolution``
    to it, as instant-NGP's per-level scale.

    ``tiles_per_step``: tiles fitted together by :func:`denoise_images`
    (stacked parameters; no effect on any tile's result).
    """

    views: int = 768
    steps: int = 20000
    tokens_per_step: int = 2048
    levels: int = 16
    features_per_level: int = 8
    base_resolution: int = 16
    max_resolution: int | str = "auto"
    lr: float = 0.01
    min_lr_ratio: float = 0.1
    warmup: float = 0.1
    weight_decay: float = 1e-5 / 1024
    freeze_g_after: float = 0.5
    scale: tuple[float, float] = (0.1, 0.5)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    batch_size: int = 64
    tiles_per_step: int = 1

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> Stage1Settings:
        """From ``dvt.stage1`` (unknown keys are an error naming them)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(section) - fields)
        if unknown:
            raise ConfigError(f"dvt.stage1: unknown key(s) {unknown}; known: {sorted(fields)}")
        values = dict(section)
        for key in ("scale", "ratio"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        settings = cls(**values)
        counts = ("views", "steps", "tokens_per_step", "levels", "features_per_level", "base_resolution",
                  "batch_size", "tiles_per_step")
        if any(not isinstance(getattr(settings, k), int) or getattr(settings, k) < 1 for k in counts):
            raise ConfigError(f"dvt.stage1: {', '.join(counts)} must be integers >= 1, got {settings}")
        top = settings.max_resolution
        if top != "auto" and (not isinstance(top, int) or isinstance(top, bool) or top < 1):
            raise ConfigError(f"dvt.stage1.max_resolution: an integer >= 1 or 'auto', got {top!r}")
        return settings

    def resolutions(self, image_hw: Sequence[int]) -> list[int]:
        """Cells per side of each grid level for an image of ``image_hw`` pixels (see ``max_resolution``)."""
        top = max(int(v) for v in image_hw) if self.max_resolution == "auto" else int(self.max_resolution)
        top = max(top, self.base_resolution)
        growth = math.exp((math.log(top) - math.log(self.base_resolution)) / max(1, self.levels - 1))
        return [int(round(self.base_resolution * growth**level)) for level in range(self.levels)]



#: Runtime estimate of a shard job: (start-up + tiles x seconds per tile) x margin, in minutes. Start-up
#: (imports, manifests, the ViT) measured ~40 s a demo shard job on 2 cores at load 12; rounded up.
STARTUP_SECONDS = 60
RUNTIME_MARGIN = 1.5


@dataclasses.dataclass(frozen=True)
class ShardSettings:
    """How stage 1 is cut into jobs (keys of ``dvt.stage1`` that do not change a tile's result)."""

    tiles_per_job: int = 100  #: tiles per shard job
    tiles_per_step: int = 1  #: tiles fitted together per :func:`fit_tiles` call
    seconds_per_tile: float = 30.0  #: measured device seconds per tile (bench/dvt.py): the runtime estimate


def split_stage1_config(section: Mapping[str, Any]) -> tuple[Stage1Settings, ShardSettings]:
    """``dvt.stage1`` -> the fit's settings and the sharding's (keys the fit does not know go to the shards)."""
    fit_keys = {f.name for f in dataclasses.fields(Stage1Settings)}
    shard_keys = {f.name for f in dataclasses.fields(ShardSettings)}
    shard = ShardSettings(**{k: v for k, v in section.items() if k in shard_keys})
    if shard.tiles_per_job < 1 or shard.tiles_per_step < 1 or not shard.seconds_per_tile > 0:
        raise ConfigError(f"dvt.stage1: tiles_per_job and tiles_per_step must be >= 1 and seconds_per_tile > 0, "
                          f"got {shard}")
    fit = Stage1Settings.from_config({k: v for k, v in section.items() if k in fit_keys or k not in shard_keys})
    return fit, shard


def settings_record(settings: Any) -> dict[str, Any]:
    """A settings dataclass as plain JSON values (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(settings).items()}


def planned_tiles(sources: Sequence[Mapping[str, Any]]) -> int:
    """Tiles stage 1 will fit at most: ``max_tiles`` summed over the sources (known before any job)."""
    if any(s.get("max_tiles") is None for s in sources):
        raise ConfigError("dvt.stage1_tiles: null (every tile) leaves the number of stage-1 shards unknown until "
                          "the manifests exist; give a number of tiles per dataset")
    return sum(int(s["max_tiles"]) for s in sources)


def shard_plan(sources: Sequence[Mapping[str, Any]], shard: ShardSettings) -> list[dict[str, int]]:
    """``{index, tiles, runtime}`` per shard job (runtime in minutes, see ``RUNTIME_MARGIN``)."""
    total = planned_tiles(sources)
    plan = []
    for index in range(math.ceil(total / shard.tiles_per_job)):
        tiles = min(shard.tiles_per_job, total - index * shard.tiles_per_job)
        minutes = (STARTUP_SECONDS + tiles * shard.seconds_per_tile) * RUNTIME_MARGIN / 60
        plan.append({"index": index, "tiles": tiles, "runtime": max(1, math.ceil(minutes))})
    return plan


def stage1_shard_paths(results: str, model: str, plan: Sequence[Mapping[str, int]]) -> list[str]:
    """The shard files of ``model``'s stage 1, in shard order (what the gather reads)."""
    return [f"{results}/dvt/stage1/{model}/shard-{s['index']:04d}.npz" for s in plan]


