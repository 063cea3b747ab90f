"""What the DVT rules call: training tiles -> stage-1 outputs; stage-1 outputs -> denoiser; raw files -> ``dvt`` files.

Unit of stage 1: one *tile*, the image the ViT sees in this study's protocol
(a Cityscapes image is 4 x 8 tiles, ADE20K 2 x 3; ``features.sources``). Its
views are random-resized crops of the tile resized to the model input, and
its full view is exactly the clean tile of the feature files, so the stage-2
denoiser learns the map the ``dvt`` variant applies to the ``clean`` files.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
import pandas as pd
import torch

from .. import __version__
from ..errors import ConfigError
from ..features.pipeline import load_manifest, resolve_device
from ..features.sources import base_tiling, make_source
from ..features.store import FeatureWriter, iter_features, read_attrs, read_features
from ..heap import fix_mmap_threshold
from ..models.extractor import build_extractor
from ..models.registry import resolve
from .stage1 import Stage1Settings, denoise_image
from .stage2 import Denoiser, Stage2Settings, denoise, save_checkpoint, train_denoiser

log = logging.getLogger(__name__)
PathLike = str | os.PathLike


def select_tiles(n_images: int, n_tiles: int, limit: int | None, seed: int) -> list[tuple[int, int]]:
    """``limit`` distinct ``(image, tile)`` pairs drawn with ``seed`` (all when ``limit`` is None), sorted."""
    total = n_images * n_tiles
    if limit is None or limit >= total:
        picks = np.arange(total)
    else:
        picks = np.sort(np.random.default_rng(seed).choice(total, size=int(limit), replace=False))
    return [(int(i // n_tiles), int(i % n_tiles)) for i in picks]


def run_stage1(
    *, model_key: str, model_overrides: Mapping[str, Any] | None, weights_dir: PathLike,
    sources: Sequence[Mapping[str, Any]], settings: Stage1Settings, out_path: PathLike, preset: str,
    seed: int = 0, device: str = "auto", figure_tiles: int = 4,
) -> pd.DataFrame:
    """Stage 1 on the selected tiles of every source; one ``.npz`` for the model; returns per-tile timings.

    ``sources``: ``{dataset, root, manifest, max_tiles}`` each (training
    manifests only; the workflow never passes an evaluation split). The
    ``.npz`` holds ``raw``, ``denoised`` (F), ``artifact`` (G) as float16
    (n, gh, gw, C), the tile keys, per-tile loss and seconds, the first
    ``figure_tiles`` tiles as images, and ``attrs`` (JSON provenance).
    """
    spec = resolve(model_key, model_overrides)
    torch_device = resolve_device(device)
    encode = _last_layer_encoder(spec, weights_dir, torch_device)

    keys, raws, cleans, artifacts, thumbs, timings = [], [], [], [], [], []
    for source_index, src in enumerate(sources):
        dataset = src["dataset"]
        table = load_manifest(src["manifest"])
        tiles = make_source(dataset, src["root"], table, spec, "clean", tiling=base_tiling(dataset), seed=seed)
        picks = select_tiles(len(table), tiles.tiling.n_tiles, src.get("max_tiles"), seed + source_index)
        grid = tiles.grid
        log.info("%s: stage 1 on %d tiles of %s (%d images), grid %s, %d views x %d steps on %s",
                 model_key, len(picks), dataset, len(table), grid, settings.views, settings.steps, torch_device)
        cached: tuple[int, Any] | None = None
        for image_index, tile_id in picks:
            if cached is None or cached[0] != image_index:
                cached = (image_index, tiles[image_index])
            item = cached[1]
            tile = item.tiles[tile_id]
            tile_seed = seed * 1_000_003 + len(keys)
            result = denoise_image(tile, encode, mean=spec.mean, std=spec.std, input_size=spec.input_size,
                                   grid=grid, settings=settings, seed=tile_seed, device=torch_device)
            keys.append((dataset, item.sample_id, tile_id))
            raws.append(result.raw)
            cleans.append(result.denoised)
            artifacts.append(result.artifact)
            if len(thumbs) < figure_tiles:
                thumbs.append(cv2.resize(tile, (spec.input_size, spec.input_size), interpolation=cv2.INTER_AREA))
            timings.append({"dataset": dataset, "sample_id": item.sample_id, "tile_id": tile_id,
                            "seconds_views": result.seconds_views, "seconds_fit": result.seconds_fit,
                            "loss": result.loss})
            log.info("%s %s tile %d: views %.2f s, fit %.2f s, loss %.4f", dataset, item.sample_id, tile_id,
                     result.seconds_views, result.seconds_fit, result.loss)
    if not keys:
        raise ConfigError(f"dvt stage 1 for {model_key}: no training tiles selected (check dvt.stage1_tiles)")
    timing = pd.DataFrame(timings)
    attrs = {
        "model": spec.key, "arch": spec.arch, "weights": spec.weights_label, "preset": preset, "seed": seed,
        "layer": spec.depth, "grid": list(grid), "device": str(torch_device), "settings": _plain(settings),
        "sources": [{k: str(v) for k, v in s.items()} for s in sources], "n_tiles": len(keys),
        "seconds_per_tile": float((timing["seconds_views"] + timing["seconds_fit"]).mean()),
        "vitlocal_version": __version__,
    }
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f"{out_path.stem}.tmp-{os.getpid()}.npz")
    np.savez(
        tmp, raw=np.stack(raws).astype(np.float16), denoised=np.stack(cleans).astype(np.float16),
        artifact=np.stack(artifacts).astype(np.float16), images=np.stack(thumbs),
        dataset=np.array([k[0] for k in keys]), sample_id=np.array([k[1] for k in keys]),
        tile_id=np.array([k[2] for k in keys]), loss=timing["loss"].to_numpy(),
        seconds_views=timing["seconds_views"].to_numpy(), seconds_fit=timing["seconds_fit"].to_numpy(),
        attrs=np.array(json.dumps(attrs)),
    )
    os.replace(tmp, out_path)
    log.info("%s: %d tiles, %.2f s per tile (views %.2f + fit %.2f) on %s -> %s", model_key, len(keys),
             attrs["seconds_per_tile"], timing["seconds_views"].mean(), timing["seconds_fit"].mean(),
             torch_device, out_path)
    return timing


def _last_layer_encoder(spec: Any, weights_dir: PathLike, device: torch.device):
    """``x -> last block's patch tokens`` (final norm applied): what DVT denoises."""
    extractor = build_extractor(spec, weights_dir, device)
    depth = spec.depth
    return lambda x: extractor.forward_layers(x, [depth])[0][depth]


def _plain(settings: Any) -> dict[str, Any]:
    import dataclasses

    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(settings).items()}


def read_stage1(path: PathLike) -> dict[str, Any]:
    """The arrays of a stage-1 ``.npz`` (float32) and its ``attrs``."""
    with np.load(path, allow_pickle=False) as data:
        out = {k: data[k] for k in data.files}
    out["attrs"] = json.loads(str(out["attrs"]))
    for key in ("raw", "denoised", "artifact"):
        out[key] = out[key].astype(np.float32)
    return out


def run_stage2(
    *, stage1_path: PathLike, settings: Stage2Settings, out_path: PathLike, seed: int = 0, device: str = "auto",
) -> dict[str, Any]:
    """Train the denoiser on one model's stage-1 outputs (raw -> F); write the checkpoint + sidecar."""
    data = read_stage1(stage1_path)
    torch_device = resolve_device(device)
    start = time.perf_counter()
    model, losses = train_denoiser(data["raw"], data["denoised"], settings, seed=seed, device=torch_device)
    attrs = data["attrs"]
    provenance = {
        "model": attrs["model"], "arch": attrs["arch"], "weights": attrs["weights"], "preset": attrs["preset"],
        "layer": attrs["layer"], "trained_on": {"stage1": str(stage1_path), "n_tiles": int(len(data["raw"])),
                                                "sources": attrs["sources"]},
        "stage1_settings": attrs["settings"], "stage2_settings": _plain(settings), "seed": seed,
        "loss_first": losses[0], "loss_last": losses[-1], "seconds": time.perf_counter() - start,
        "device": str(torch_device),
    }
    record = save_checkpoint(model.cpu(), out_path, provenance)
    log.info("%s: denoiser trained %d steps on %d tiles, loss %.4f -> %.4f, sha256 %s", attrs["model"],
             settings.steps, len(data["raw"]), losses[0], losses[-1], record["sha256"][:12])
    return record


#: Tiles per denoiser call and per write. The block's activations dominate the job's memory (attention
#: and MLP of 64 ViT-B tiles: ~280 MB; 256 tiles: 1.2 GB more peak RSS, measured), and 12.5k tokens a call
#: still fill a GPU's GEMMs.
DENOISE_TILES = 64


def denoise_feature_file(
    in_path: PathLike, model: Denoiser, out_path: PathLike, *, variant: str = "dvt",
    checkpoint: Mapping[str, Any] | None = None, device: str = "auto", dtype: str = "float16",
) -> int:
    """The ``dvt`` variant: ``model`` applied tile by tile to the last stored layer of ``in_path``.

    Same patches, labels and metadata; only the last layer is stored (the
    layer DVT denoises). Streams the file row group by row group (peak memory
    ~ one group, whatever the file's size). Returns the number of patches written.
    """
    attrs = read_attrs(in_path)
    layer = max(int(v) for v in attrs["layers"])
    gh, gw = (int(v) for v in attrs["grid"])
    per_tile = gh * gw
    torch_device = resolve_device(device)
    fix_mmap_threshold()  # flat peak memory over a long file (vitlocal.heap)
    meta_left, x_left = None, None  # a tile cut by a row-group boundary waits for its other part
    n_written, chunk = 0, DENOISE_TILES * per_tile
    with FeatureWriter(out_path, _denoised_attrs(attrs, variant, layer, dict(checkpoint or {})), dtype=dtype) as writer:
        for meta, layers in iter_features(in_path, [layer]):
            x = layers.pop(layer)
            if meta_left is not None:
                meta, x = pd.concat([meta_left, meta], ignore_index=True), np.concatenate([x_left, x])
            whole = len(meta) - len(meta) % per_tile
            meta_left, x_left = meta.iloc[whole:].reset_index(drop=True), x[whole:].copy()  # a copy frees x
            _check_tile_order(meta.iloc[:whole], gw, per_tile, in_path, n_written)
            for start in range(0, whole, chunk):
                stop = min(whole, start + chunk)
                out = denoise(model, x[start:stop].reshape(-1, gh, gw, x.shape[1]), DENOISE_TILES, torch_device)
                writer.write(meta.iloc[start:stop].reset_index(drop=True), {layer: out.reshape(stop - start, -1)})
                del out
            n_written += whole
            del meta, layers, x  # before the next group is read: one group in memory, not two
        if meta_left is not None and len(meta_left):
            raise ConfigError(f"{in_path}: {len(meta_left)} patches after the last whole tile of the {gh}x{gw} grid")
    return n_written


def _check_tile_order(meta: pd.DataFrame, gw: int, per_tile: int, path: PathLike, offset: int) -> None:
    """Stage 2 sees whole tiles: every ``per_tile`` rows must be one tile's patches in row-major order."""
    position = meta["patch_row"].to_numpy().astype(np.int64) * gw + meta["patch_col"].to_numpy()
    wrong = np.flatnonzero(position != np.tile(np.arange(per_tile), len(meta) // per_tile))
    if len(wrong):
        raise ConfigError(f"{path}: patches are not stored tile by tile in row-major order "
                          f"(first out of place: row {offset + int(wrong[0])}; grid {per_tile // gw}x{gw})")


def _denoised_attrs(attrs: Mapping[str, Any], variant: str, layer: int, denoiser: Mapping[str, Any]) -> dict:
    """A raw file's provenance for its denoised counterpart (the writer fills in sizes and dates)."""
    new_attrs = {**attrs, "variant": variant, "layers": [layer], "denoiser": dict(denoiser),
                 "raw_variant": attrs["variant"]}
    for key in ("dtype", "dims", "n_patches", "n_tiles", "has_cls", "created", "format_version"):
        new_attrs.pop(key, None)
    return new_attrs


def stage1_feature_file(
    in_path: PathLike, out_path: PathLike, *, model_key: str, model_overrides: Mapping[str, Any] | None,
    weights_dir: PathLike, root: PathLike, manifest: PathLike, settings: Stage1Settings, seed: int = 0,
    device: str = "auto", dtype: str = "float16", variant: str = "dvt1",
) -> dict[str, float]:
    """The ``dvt1`` variant: stage 1's ``F`` of every tile of a ``clean`` feature file, in its patch order.

    No denoiser: each tile is decomposed on its own (``views`` crops, ``steps``
    of fitting), so the cost is stage 1's per tile times the file's tiles: for
    small sets. The tiles are rebuilt from ``root`` and ``manifest`` exactly as
    the file was extracted (its full view is the file's clean tile). Returns
    patches written, tiles and seconds per tile.
    """
    attrs = read_attrs(in_path)
    if attrs["variant"] != "clean":
        raise ConfigError(f"{in_path}: dvt1 is computed from clean feature files, this one is {attrs['variant']!r}")
    spec = resolve(model_key, model_overrides)
    if attrs["model"] != spec.key:
        raise ConfigError(f"{in_path} holds {attrs['model']!r} features; dvt1 was asked for {spec.key!r}")
    layer = max(int(v) for v in attrs["layers"])
    meta, _ = read_features(in_path, [])
    dataset = attrs["dataset"]
    torch_device = resolve_device(device)
    encode = _last_layer_encoder(spec, weights_dir, torch_device)
    source = make_source(dataset, root, load_manifest(manifest), spec, "clean", tiling=base_tiling(dataset),
                         seed=int(attrs.get("seed", seed)))
    by_sample = {sample: rows for sample, rows in meta.groupby("sample_id", sort=False).indices.items()}
    denoiser = {"method": "stage1", "settings": _plain(settings), "seed": seed}
    seconds, n_tiles = 0.0, 0
    with FeatureWriter(out_path, _denoised_attrs(attrs, variant, layer, denoiser), dtype=dtype) as writer:
        for index in range(len(source)):
            item = source[index]
            rows = by_sample.pop(item.sample_id, None)
            if rows is None:
                continue
            part = meta.iloc[rows].reset_index(drop=True)
            tile_of, row_of, col_of = (part[k].to_numpy() for k in ("tile_id", "patch_row", "patch_col"))
            out = None
            for tile_id in dict.fromkeys(tile_of):
                result = denoise_image(item.tiles[int(tile_id)], encode, mean=spec.mean, std=spec.std,
                                       input_size=spec.input_size, grid=source.grid, settings=settings,
                                       seed=seed * 1_000_003 + n_tiles, device=torch_device)
                if out is None:
                    out = np.empty((len(part), result.denoised.shape[-1]), dtype=np.float32)
                at = tile_of == tile_id  # each row gets its own patch, whatever the file's row order
                out[at] = result.denoised[row_of[at], col_of[at]]
                seconds += result.seconds_views + result.seconds_fit
                n_tiles += 1
            writer.write(part, {layer: out})
        if by_sample:
            raise ConfigError(f"{in_path}: {len(by_sample)} samples (e.g. {next(iter(by_sample))!r}) are not in "
                              f"{manifest}; dvt1 needs the manifest the file was extracted from")
    per_tile = seconds / max(n_tiles, 1)
    log.info("%s: stage 1 on %d tiles, %.2f s per tile -> %s", in_path, n_tiles, per_tile, out_path)
    return {"patches": float(len(meta)), "tiles": float(n_tiles), "seconds_per_tile": per_tile}
