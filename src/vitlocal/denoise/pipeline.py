"""What the DVT rules call: stage-1 outputs -> denoiser; raw files -> ``dvt`` files; clean files -> ``dvt1`` files.

Stage 1 on training tiles runs as shard jobs (``shards``). Unit of stage 1:
one *tile*, the image the ViT sees in this study's protocol (a Cityscapes
image is 4 x 8 tiles, ADE20K 2 x 3; ``features.sources``). Its views are
random-resized crops of the tile resized to the model input, and its full
view is exactly the clean tile of the feature files, so the stage-2 denoiser
learns the map the ``dvt`` variant applies to the ``clean`` files.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..features.pipeline import load_manifest, resolve_device
from ..features.sources import base_tiling, make_source
from ..features.store import FeatureWriter, iter_features, read_attrs, read_features
from ..heap import fix_mmap_threshold
from ..models.registry import resolve
from .shards import fit_tiles, last_layer_encoder, settings_record
from .stage1 import Stage1Settings
from .stage1_files import read_npz, remove_leftovers
from .stage2 import Denoiser, Stage2Settings, denoise, save_checkpoint, train_denoiser

log = logging.getLogger(__name__)
PathLike = str | os.PathLike


def read_stage1(path: PathLike, model: str | None = None) -> dict[str, Any]:
    """The arrays of a stage-1 ``.npz`` (float32) and its ``attrs``; ``model``: refuse another model's file."""
    out = read_npz(path)
    if model is not None and out["attrs"].get("model") != model:
        raise ConfigError(f"{path} holds stage 1 of model {out['attrs'].get('model')!r}, read for model {model!r}")
    for key in ("raw", "denoised", "artifact"):
        out[key] = out[key].astype(np.float32)
    return out


def run_stage2(
    *, stage1_path: PathLike, settings: Stage2Settings, out_path: PathLike, model_key: str, seed: int = 0,
    device: str = "auto",
) -> dict[str, Any]:
    """Train ``model_key``'s denoiser on its stage-1 outputs (raw -> F); write the checkpoint + sidecar.

    A stage-1 file of another model is refused; temporary files of an
    interrupted earlier save of the checkpoint are removed first.
    """
    data = read_stage1(stage1_path)
    if data["attrs"].get("model") != model_key:
        raise ConfigError(f"{stage1_path} holds stage 1 of model {data['attrs'].get('model')!r}; the denoiser "
                          f"{out_path} is for model {model_key!r}")
    for path in (Path(out_path), Path(out_path).with_suffix(".json")):
        remove_leftovers(path)
    torch_device = resolve_device(device)
    start = time.perf_counter()
    model, losses = train_denoiser(data["raw"], data["denoised"], settings, seed=seed, device=torch_device)
    attrs = data["attrs"]
    provenance = {
        "model": attrs["model"], "arch": attrs["arch"], "weights": attrs["weights"], "preset": attrs["preset"],
        "layer": attrs["layer"], "trained_on": {"stage1": str(stage1_path), "n_tiles": int(len(data["raw"])),
                                                "sources": attrs["sources"]},
        "stage1_settings": attrs["settings"], "stage2_settings": settings_record(settings), "seed": seed,
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
    ``checkpoint`` (the denoiser's record, :func:`denoiser_record`): a file of
    another model, layer or width than the checkpoint's is refused, naming both.
    """
    attrs = read_attrs(in_path)
    layer = max(int(v) for v in attrs["layers"])
    gh, gw = (int(v) for v in attrs["grid"])
    record = dict(checkpoint or {})
    _check_denoiser_fits(in_path, attrs, layer, model, record)
    per_tile = gh * gw
    torch_device = resolve_device(device)
    fix_mmap_threshold()  # flat peak memory over a long file (vitlocal.heap)
    meta_left, x_left = None, None  # a tile cut by a row-group boundary waits for its other part
    n_written, chunk = 0, DENOISE_TILES * per_tile
    with FeatureWriter(out_path, _denoised_attrs(attrs, variant, layer, record), dtype=dtype) as writer:
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


#: ``source`` of a checkpoint record for the authors' released denoisers (``dvt.checkpoints``).
RELEASED = "authors' release"


def denoiser_record(record: Mapping[str, Any], path: PathLike, model: Denoiser, spec: Any) -> dict[str, Any]:
    """A checkpoint's record as the ``dvt`` files keep it: its path, model, layer and ``dvt_source``.

    ``dvt_source`` is ``ours@<px>`` or ``released@<px>``: who trained the
    denoiser and at which input size (its position grid x the patch size). The
    authors' releases were trained at 518 / 512 px, not this study's 224; their
    files record no model or layer: they are the model's configured ones (the
    last block).
    """
    out = {**record, "path": str(path)}
    released = record.get("source") == RELEASED
    if released:
        out.setdefault("model", spec.key)
        out.setdefault("layer", spec.depth)
    out["dvt_source"] = f"{'released' if released else 'ours'}@{model.grid[0] * spec.patch_size}"
    return out


def _check_denoiser_fits(path: PathLike, attrs: Mapping[str, Any], layer: int, model: Denoiser,
                         record: Mapping[str, Any]) -> None:
    """Refuse a denoiser made for another model, layer or width than the feature file ``path``."""
    where = record.get("path") or record.get("file") or "the denoiser"
    if "model" in record and record["model"] != attrs["model"]:
        raise ConfigError(f"{where} is model {record['model']!r}'s denoiser; {path} holds model "
                          f"{attrs['model']!r}'s features")
    if "layer" in record and int(record["layer"]) != layer:
        raise ConfigError(f"{where} denoises layer {record['layer']}; the highest layer stored in {path} is {layer}")
    dim = int(attrs.get("dims", {}).get(str(layer), model.dim))
    if dim != model.dim:
        raise ConfigError(f"{where} denoises {model.dim}-wide features; layer {layer} of {path} is {dim} wide")


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
    device: str = "auto", dtype: str = "float16", variant: str = "dvt1", tiles_per_step: int = 1,
) -> dict[str, float]:
    """The ``dvt1`` variant: stage 1's ``F`` of every tile of a ``clean`` feature file, in its patch order.

    No denoiser: each tile is decomposed on its own (``views`` crops, ``steps``
    of fitting), so the cost is stage 1's per tile times the file's tiles: for
    small sets. The tiles are rebuilt from ``root`` and ``manifest`` exactly as
    the file was extracted (its full view is the file's clean tile); an image's
    tiles are fitted ``tiles_per_step`` at a time (``shards.fit_tiles``, as stage
    1's shards). Returns patches written, tiles and seconds per tile.
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
    encode = last_layer_encoder(spec, weights_dir, torch_device)
    source = make_source(dataset, root, load_manifest(manifest), spec, "clean", tiling=base_tiling(dataset),
                         seed=int(attrs.get("seed", seed)))
    by_sample = {sample: rows for sample, rows in meta.groupby("sample_id", sort=False).indices.items()}
    denoiser = {"method": "stage1", "settings": settings_record(settings), "seed": seed}
    seconds, n_tiles = 0.0, 0
    with FeatureWriter(out_path, _denoised_attrs(attrs, variant, layer, denoiser), dtype=dtype) as writer:
        for index in range(len(source)):
            item = source[index]
            rows = by_sample.pop(item.sample_id, None)
            if rows is None:
                continue
            part = meta.iloc[rows].reset_index(drop=True)
            tile_of, row_of, col_of = (part[k].to_numpy() for k in ("tile_id", "patch_row", "patch_col"))
            out = np.empty((len(part), spec.embed_dim), dtype=np.float32)
            tile_ids = list(dict.fromkeys(tile_of))
            for start in range(0, len(tile_ids), tiles_per_step):
                group = tile_ids[start : start + tiles_per_step]
                seeds = [seed * 1_000_003 + n_tiles + k for k in range(len(group))]
                results = fit_tiles([item.tiles[int(t)] for t in group], encode, spec=spec, grid=source.grid,
                                    settings=settings, seeds=seeds, device=torch_device)
                for tile_id, result in zip(group, results):
                    at = tile_of == tile_id  # each row gets its own patch, whatever the file's row order
                    out[at] = result.denoised[row_of[at], col_of[at]]
                    seconds += result.seconds_views + result.seconds_fit
                n_tiles += len(group)
            writer.write(part, {layer: out})
        if by_sample:
            raise ConfigError(f"{in_path}: {len(by_sample)} samples (e.g. {next(iter(by_sample))!r}) are not in "
                              f"{manifest}; dvt1 needs the manifest the file was extracted from")
    per_tile = seconds / max(n_tiles, 1)
    log.info("%s: stage 1 on %d tiles, %.2f s per tile -> %s", in_path, n_tiles, per_tile, out_path)
    return {"patches": float(len(meta)), "tiles": float(n_tiles), "seconds_per_tile": per_tile}
