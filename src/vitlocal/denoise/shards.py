"""DVT stage 1 as shards the scheduler can spread, each resumable, gathered in a fixed order.

The selected training tiles of a model (every source in config order, each
source's picks sorted: :func:`selected_tiles`) get a *global index*; tile ``i``
is fitted with seed ``seed * 1_000_003 + i`` whichever shard runs it, so a
sharded run gives the unsharded run's per-tile results. Shard ``k`` of
``dvt.stage1.tiles_per_job`` = ``T`` tiles holds global tiles ``[k T, (k+1) T)``.
The shard count is planned from the config alone (``dvt.stage1_tiles`` per
source: :func:`shard_plan`), so the DAG is known before any job runs; a source
with fewer tiles than planned leaves its trailing shards empty (counted and
logged by the gather, recorded in the ``.npz``).

Inside a shard the tiles are fitted ``dvt.stage1.tiles_per_step`` at a time
(:func:`fit_tiles`), always in the same groups; each finished group is kept
atomically in ``<shard>.npz.partial/``, so a rerun after ``kill -9`` resumes at
the first unfinished group and writes the same bytes as an uninterrupted run
(:func:`write_npz` fixes the zip's timestamps).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import cv2
import numpy as np
import torch

from .. import __version__
from ..errors import ConfigError
from ..features.pipeline import load_manifest, resolve_device
from ..features.sources import base_tiling, make_source
from ..models.extractor import build_extractor
from ..models.registry import resolve
from .settings import ShardSettings, Stage1Settings, planned_tiles, settings_record, shard_plan
from .stage1 import Stage1Result, denoise_images
from .stage1_files import stack_tiles, write_npz

log = logging.getLogger(__name__)
PathLike = str | os.PathLike
def last_layer_encoder(spec: Any, weights_dir: PathLike, device: torch.device) -> Callable:
    """``x -> last block's patch tokens`` (final norm applied): what DVT denoises."""
    extractor = build_extractor(spec, weights_dir, device)
    depth = spec.depth
    return lambda x: extractor.forward_layers(x, [depth])[0][depth]


def select_tiles(n_images: int, n_tiles: int, limit: int | None, seed: int) -> list[tuple[int, int]]:
    """``limit`` distinct ``(image, tile)`` pairs drawn with ``seed`` (all when ``limit`` is None), sorted."""
    total = n_images * n_tiles
    if limit is None or limit >= total:
        picks = np.arange(total)
    else:
        picks = np.sort(np.random.default_rng(seed).choice(total, size=int(limit), replace=False))
    return [(int(i // n_tiles), int(i % n_tiles)) for i in picks]


def selected_tiles(sources: Sequence[Mapping[str, Any]], spec: Any, seed: int) -> tuple[list, list[tuple]]:
    """Every source's tile source and the global tile order: ``(source, image, tile, key)`` per global index,
    ``key`` = ``(dataset, sample_id, tile)`` read off the manifest (no image decoded)."""
    tile_sources, order = [], []
    for source_index, src in enumerate(sources):
        table = load_manifest(src["manifest"])
        tiles = make_source(src["dataset"], src["root"], table, spec, "clean", tiling=base_tiling(src["dataset"]),
                            seed=seed)
        picks = select_tiles(len(table), tiles.tiling.n_tiles, src.get("max_tiles"), seed + source_index)
        tile_sources.append(tiles)
        samples = table["sample_id"].astype(str).tolist()
        order.extend((source_index, image, tile, (src["dataset"], samples[image], tile)) for image, tile in picks)
    return tile_sources, order


def fit_tiles(
    tiles: Sequence[np.ndarray], encode: Callable, *, spec: Any, grid: Sequence[int], settings: Stage1Settings,
    seeds: Sequence[int], device: torch.device,
) -> list[Stage1Result]:
    """Stage 1 on one group of tiles, ``settings.tiles_per_step`` fitted together (same per-tile results).

    The shard loop and dvt1 only ever call this.
    """
    return denoise_images(list(tiles), encode, mean=spec.mean, std=spec.std, input_size=spec.input_size, grid=grid,
                          settings=settings, seeds=list(seeds), device=device)


def _fingerprint(attrs: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(attrs, sort_keys=True, default=str).encode()).hexdigest()


def run_stage1_shard(
    *, model_key: str, model_overrides: Mapping[str, Any] | None, weights_dir: PathLike,
    sources: Sequence[Mapping[str, Any]], settings: Stage1Settings, shard: ShardSettings, index: int,
    out_path: PathLike, preset: str, seed: int = 0, device: str = "auto", figure_tiles: int = 4,
    encoder: Callable | None = None,
) -> dict[str, Any]:
    """Stage 1 on shard ``index`` of one model's tiles -> ``out_path`` (``.npz``); returns its ``attrs``.

    The file holds ``raw``, ``denoised`` (F), ``artifact`` (G) as float16
    (n, gh, gw, C), the tile keys and global indices, per-tile loss and
    seconds, the thumbnails of global tiles below ``figure_tiles``, and
    ``attrs`` (JSON provenance). ``encoder``: the ViT (tests pass their own).
    """
    spec = resolve(model_key, model_overrides)
    torch_device = resolve_device(device)
    tile_sources, order = selected_tiles(sources, spec, seed)
    n_shards = len(shard_plan(sources, shard))
    if not 0 <= index < n_shards:
        raise ConfigError(f"dvt stage 1 of {model_key}: shard {index} of {n_shards}")
    if index == n_shards - 1 and len(order) > n_shards * shard.tiles_per_job:
        raise ConfigError(f"dvt stage 1 of {model_key}: {len(order)} tiles selected, more than the "
                          f"{n_shards} planned shards of {shard.tiles_per_job} hold")
    first = index * shard.tiles_per_job
    mine = list(range(first, min(first + shard.tiles_per_job, len(order))))
    grid = tile_sources[0].grid if tile_sources else spec.grid
    attrs = {
        "model": spec.key, "arch": spec.arch, "weights": spec.weights_label, "preset": preset, "seed": seed,
        "layer": spec.depth, "grid": list(grid), "settings": settings_record(settings),
        "sources": [{k: str(v) for k, v in s.items()} for s in sources], "tiles_per_job": shard.tiles_per_job,
        "tiles_per_step": shard.tiles_per_step, "shards": n_shards, "n_selected": len(order),
        "vitlocal_version": __version__,
    }
    partial = Path(f"{out_path}.partial")
    fingerprint = _fingerprint(attrs)
    groups = [mine[i : i + shard.tiles_per_step] for i in range(0, len(mine), shard.tiles_per_step)]
    parts = []
    encode = encoder
    log.info("%s: shard %d of %d, global tiles %d..%d of %d, %d per step, %d views x %d steps on %s", model_key,
             index, n_shards, first, first + len(mine) - 1, len(order), shard.tiles_per_step, settings.views,
             settings.steps, torch_device)
    for number, group in enumerate(groups):
        group_path = partial / f"group-{number:05d}.npz"
        kept = _kept_group(group_path, fingerprint, group, [order[i][3] for i in group])
        if kept is not None:
            parts.append(kept)
            continue
        if encode is None:
            encode = last_layer_encoder(spec, weights_dir, torch_device)
        parts.append(_fit_group(group, order, tile_sources, encode, spec, grid, settings, seed, torch_device,
                                figure_tiles, fingerprint, group_path))
    arrays = stack_tiles(parts, grid, spec.embed_dim, spec.input_size)
    seconds = arrays["seconds_views"] + arrays["seconds_fit"]
    attrs.update(first=first, n_tiles=len(mine), device=str(torch_device),
                 seconds_per_tile=float(seconds.mean()) if len(mine) else float("nan"))
    if not mine:
        log.warning("%s: shard %d is empty: %d tiles selected, %d planned (a source has fewer tiles than "
                    "dvt.stage1_tiles)", model_key, index, len(order), planned_tiles(sources))
    write_npz(out_path, {**arrays, "attrs": np.array(json.dumps(attrs))})
    shutil.rmtree(partial, ignore_errors=True)
    log.info("%s shard %d: %d tiles, %.2f s per tile -> %s", model_key, index, len(mine),
             attrs["seconds_per_tile"], out_path)
    return attrs


def _kept_group(path: Path, fingerprint: str, group: Sequence[int], keys: Sequence[tuple]
                ) -> dict[str, np.ndarray] | None:
    """A group finished by an earlier, interrupted run of the same shard (same settings and tiles), else None."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            kept = {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        log.warning("%s: unreadable (%s), fitted again", path, err)
        return None
    found = list(zip(kept.get("dataset", []), kept.get("sample_id", []), kept.get("tile_id", [])))
    if (str(kept.pop("fingerprint", "")) != fingerprint or kept.get("index", np.zeros(0)).tolist() != list(group)
            or [(str(d), str(s), int(t)) for d, s, t in found] != [tuple(k) for k in keys]):
        log.warning("%s: made with other settings or tiles, fitted again", path)
        return None
    log.info("%s: tiles %s kept from an interrupted run", path, list(group))
    return kept


def _fit_group(group, order, tile_sources, encode, spec, grid, settings, seed, device, figure_tiles, fingerprint,
               path) -> dict[str, np.ndarray]:
    """Fit one group of global tiles and keep it (atomically) in ``path``."""
    cached: tuple[tuple[int, int], Any] | None = None
    keys, tiles = [], []
    for i in group:
        source, image, tile_id, key = order[i]
        if cached is None or cached[0] != (source, image):
            cached = ((source, image), tile_sources[source][image])  # one decoded image at a time
        keys.append(key)
        tiles.append(cached[1].tiles[tile_id])
    results = fit_tiles(tiles, encode, spec=spec, grid=grid, settings=settings,
                        seeds=[seed * 1_000_003 + i for i in group], device=device)
    size = spec.input_size
    thumbs = [cv2.resize(tile, (size, size), interpolation=cv2.INTER_AREA)
              for tile, i in zip(tiles, group) if i < figure_tiles]
    part = {
        "index": np.array(group, dtype=np.int64),
        "raw": np.stack([r.raw for r in results]).astype(np.float16),
        "denoised": np.stack([r.denoised for r in results]).astype(np.float16),
        "artifact": np.stack([r.artifact for r in results]).astype(np.float16),
        "dataset": np.array([k[0] for k in keys]), "sample_id": np.array([k[1] for k in keys]),
        "tile_id": np.array([k[2] for k in keys], dtype=np.int64),
        "loss": np.array([r.loss for r in results], dtype=np.float64),
        "seconds_views": np.array([r.seconds_views for r in results], dtype=np.float64),
        "seconds_fit": np.array([r.seconds_fit for r in results], dtype=np.float64),
        "images": np.array(thumbs, dtype=np.uint8).reshape(len(thumbs), size, size, 3),
    }
    for (dataset, sample_id, tile_id), r in zip(keys, results):
        log.info("%s %s tile %d: views %.2f s, fit %.2f s, loss %.4f", dataset, sample_id, tile_id,
                 r.seconds_views, r.seconds_fit, r.loss)
    write_npz(path, {**part, "fingerprint": np.array(fingerprint)})
    return part


