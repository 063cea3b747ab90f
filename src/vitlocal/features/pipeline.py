"""Manifest -> feature file: the one call the extraction rule makes.

:func:`extract_features` validates everything that can be checked without a
model (dataset, variant, layers, dtypes), resolves the model spec, builds the
tile source and the extractor, runs the engine and commits the Parquet file
atomically with a provenance record (``store.read_attrs``) naming the model,
its weights, the data and every setting that changes the numbers.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import torch

from vitlocal import __version__
from vitlocal.errors import ConfigError
from vitlocal.features.degrade import FREQUENCY_BANDS, FREQUENCY_NOISE_SIGMA
from vitlocal.features.engine import ExtractStats, extract
from vitlocal.features.sources import FULL, DegradeSettings, TileSource, base_tiling, make_source, split_variant
from vitlocal.features.store import FeatureWriter
from vitlocal.models.extractor import build_extractor
from vitlocal.models.registry import ModelSpec, resolve
from vitlocal.subsets import read_manifest
from vitlocal.tiling import TilingSpec, preprocess_tiles

log = logging.getLogger(__name__)

AUTOCAST = {"bfloat16": torch.bfloat16, "float16": torch.float16, "none": None}
DATA_SOURCES = ("official", "synthetic")


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else as torch reads it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"device {device!r}: {err}; expected 'auto', 'cpu', 'cuda' or 'cuda:<n>'") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but torch sees no CUDA device (use 'auto' or 'cpu')")
    return resolved


def loader_workers(requested: int, device: torch.device) -> int:
    """DataLoader workers for one extraction: all asked for on a GPU; on the CPU, only onto cores the forward leaves free.

    On the CPU the forward already runs on torch's threads; a worker on one of
    those cores only competes with it, and costs its spawn (~2.5 s per file
    here, bench/RESULTS.md) while decoding a Cityscapes image takes ~0.05 s.
    """
    if device.type != "cpu" or requested <= 0:
        return max(0, requested)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = max(0, min(requested, cores - torch.get_num_threads()))
    if workers < requested:
        log.info("CPU run: %d of %d loader workers (%d cores, %d torch threads for the forward)",
                 workers, requested, cores, torch.get_num_threads())
    return workers


def autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The CUDA autocast dtype named ``name``; none on CPU (the config says: ignored there)."""
    if name not in AUTOCAST:
        raise ConfigError(f"autocast {name!r}; expected one of {sorted(AUTOCAST)}")
    return AUTOCAST[name] if device.type == "cuda" else None


def check_layers(layers: Sequence[int], spec: ModelSpec) -> list[int]:
    """Sorted unique 1-based block indices, or an error naming the layer, the model and its depth.

    Never clipped to the depth: which layers a model has is the caller's
    decision, and a silently shorter file would break the per-layer figures.
    """
    wanted = sorted({int(layer) for layer in layers})
    if not wanted:
        raise ConfigError(f"model {spec.key!r}: no layers asked for")
    bad = [layer for layer in wanted if not 1 <= layer <= spec.depth]
    if bad:
        raise ConfigError(
            f"layer(s) {bad} do not exist in model {spec.key!r} (arch {spec.arch}, depth {spec.depth}); "
            f"layers are 1-based block indices 1..{spec.depth}"
        )
    return wanted


def load_manifest(manifest: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    """A manifest given as a DataFrame or a CSV path written by ``subsets.write_manifest``."""
    if isinstance(manifest, pd.DataFrame):
        table, where = manifest, "the manifest DataFrame"
    else:
        table, where = read_manifest(manifest), f"manifest {manifest}"
    if len(table) == 0:
        raise ConfigError(f"{where} is empty: nothing to extract")
    return table.reset_index(drop=True)


def tiling_record(tiling: TilingSpec) -> dict[str, Any]:
    """JSON form of the tiling actually used."""
    out = tiling.out_hw
    return {
        "resize_to": list(tiling.resize_to) if tiling.resize_to is not None else None,
        "rows": tiling.rows,
        "cols": tiling.cols,
        "out_size": list(out),
    }


def feature_attrs(
    *,
    spec: ModelSpec,
    source: TileSource,
    dataset: str,
    subset: str,
    variant: str,
    layers: Sequence[int],
    preset: str,
    patch_label_method: str,
    seed: int,
    dtype: str,
    data_source: str,
    settings: DegradeSettings,
    autocast: torch.dtype | None,
    n_images: int,
) -> dict[str, Any]:
    """Provenance record of one feature file (``store.REQUIRED_ATTRS`` and everything that changes the numbers)."""
    return {
        "model": spec.key,
        "arch": spec.arch,
        "weights": spec.weights_label,
        "model_spec": spec.to_dict(),
        "layers": list(layers),
        "variant": variant,
        "mode": FULL if variant == FULL else "tiled",
        "dataset": dataset,
        "split": subset,
        "data_source": data_source,
        "n_images": n_images,
        "preset": preset,
        "tiling": tiling_record(source.tiling),
        "grid": list(source.grid),
        "patch_labels": patch_label_method,
        "seed": seed,
        "dtype": dtype,
        "autocast": "none" if autocast is None else str(autocast).removeprefix("torch."),
        "vitlocal_version": __version__,
        # Only frequency noise reads the bands: other files do not depend on them.
        **({"frequency_bands": [list(band) for band in settings.bands], "frequency_noise_sigma": settings.freq_sigma}
           if split_variant(variant)[0].kind == "freqnoise" else {}),
    }


def extract_features(
    *,
    variant: str = "clean",
    out_path: str | os.PathLike,
    **settings: Any,
) -> ExtractStats:
    """Extract one variant into ``out_path``; see :func:`extract_feature_files` for the settings."""
    return extract_feature_files(variants=[variant], out_paths=[out_path], **settings)[0]


def extract_feature_files(
    *,
    dataset: str,
    root: str | os.PathLike,
    manifest: pd.DataFrame | str | os.PathLike,
    model_key: str,
    layers: Sequence[int],
    variants: Sequence[str],
    out_paths: Sequence[str | os.PathLike],
    preset: str,
    weights_dir: str | os.PathLike,
    model_overrides: Mapping[str, Any] | None = None,
    subset: str | None = None,
    device: str = "auto",
    batch_size: int = 64,
    num_workers: int = 0,
    dtype: str = "float16",
    autocast: str = "bfloat16",
    patch_label_method: str = "nearest_exact",
    seed: int = 0,
    bands: Sequence[Sequence[float]] = FREQUENCY_BANDS,
    freq_sigma: float = FREQUENCY_NOISE_SIGMA,
    frame_size: Sequence[int] | None = None,
    data_source: str = "official",
    progress: bool = True,
    extractors: dict[bool, Any] | None = None,
) -> list[ExtractStats]:
    """Extract the patch tokens of ``layers`` for every manifest row, one Parquet file per variant.

    ``variants[i]`` goes to ``out_paths[i]``; the model is built (and its
    checkpoint read) once for all of them. A variant is a degradation name
    (``"clean"``, ``"blur-4"``, ``"shift-3"``, ...) or ``"full"`` (whole
    image, interpolated position embedding; see ``features.sources``).
    ``subset`` names the manifest in the provenance record (default: the
    manifest file's stem). ``bands``/``freq_sigma`` are the frequency-noise
    settings, ``frame_size`` the tracking frame ``(H, W)``. ``device="auto"``:
    CUDA if available, else CPU; ``autocast`` applies on CUDA only;
    ``num_workers`` is capped on the CPU (:func:`loader_workers`). Each file
    appears only if its whole run succeeds. ``extractors``: a cache of built
    models (by ``dynamic_img_size``) shared between calls on one model.
    """
    if data_source not in DATA_SOURCES:
        raise ConfigError(f"data_source {data_source!r}; expected one of {DATA_SOURCES}")
    if len(variants) != len(out_paths):
        raise ConfigError(f"{len(variants)} variants for {len(out_paths)} output files")
    if subset is None:
        if isinstance(manifest, pd.DataFrame):
            raise ConfigError("extract_features: give 'subset' when the manifest is a DataFrame")
        subset = Path(manifest).stem
    for variant in variants:
        split_variant(variant)  # reject a bad name before any file or model is touched
    spec = resolve(model_key, model_overrides)
    layers = check_layers(layers, spec)
    torch_device = resolve_device(device)
    amp = autocast_dtype(autocast, torch_device)
    workers = loader_workers(num_workers, torch_device)
    table = load_manifest(manifest)
    settings = DegradeSettings(tuple(tuple(band) for band in bands), freq_sigma)
    # By dynamic_img_size: "full" needs interpolated position embeddings.
    extractors = {} if extractors is None else extractors
    all_stats = []
    for variant, out_path in zip(variants, out_paths):
        source = make_source(
            dataset,
            root,
            table,
            spec,
            variant,
            tiling=base_tiling(dataset, frame_size),
            patch_label_method=patch_label_method,
            seed=seed,
            settings=settings,
        )
        dynamic = variant == FULL
        if dynamic not in extractors:
            extractors[dynamic] = build_extractor(spec, weights_dir, torch_device, dynamic_img_size=dynamic)
        attrs = feature_attrs(
            spec=spec, source=source, dataset=dataset, subset=subset, variant=variant, layers=layers,
            preset=preset, patch_label_method=patch_label_method, seed=seed, dtype=dtype,
            data_source=data_source, settings=settings, autocast=amp, n_images=len(table),
        )
        log.info(
            "%s/%s %s: %d images x %d tiles of %s -> %s patches, model %s (%s), layers %s, %s",
            dataset, subset, variant, len(table), source.tiling.n_tiles, source.tiling.out_hw, source.grid,
            spec.key, spec.weights_label, layers, torch_device,
        )
        with FeatureWriter(out_path, attrs, dtype=dtype) as writer:
            stats = extract(
                source,
                extractors[dynamic].forward_layers,
                preprocess=preprocess_tiles,
                layers=layers,
                mean=spec.mean,
                std=spec.std,
                out_size=source.tiling.out_size,
                grid=source.grid,
                writer=writer,
                batch_size=batch_size,
                device=torch_device,
                num_workers=workers,
                autocast=amp,
                images_per_load=max(1, batch_size // source.tiling.n_tiles),
                progress=progress,
            )
        log.info(
            "wrote %s: %d images, %d tiles, %d patches in %.1f s (batch size %d)",
            out_path, stats.images, stats.tiles, stats.patches, stats.seconds, stats.batch_size,
        )
        all_stats.append(stats)
    return all_stats


def extract_planned_files(
    *,
    files: Sequence[Mapping[str, Any]],
    manifests: Mapping[str, str | os.PathLike],
    **settings: Any,
) -> list[ExtractStats]:
    """One extraction job of the plan (``features.plan``): ``files`` = ``{subset, variant, layers, path}`` each.

    The model is built once for the whole job; the files of one subset and one
    set of layers (``manifests[subset]``) are made by one
    :func:`extract_feature_files` call.
    """
    groups: dict[tuple[str, tuple[int, ...]], list[Mapping[str, Any]]] = {}
    for entry in files:
        groups.setdefault((entry["subset"], tuple(entry["layers"])), []).append(entry)
    extractors: dict[bool, Any] = {}
    stats = []
    for (subset, layers), entries in groups.items():
        stats += extract_feature_files(
            subset=subset,
            manifest=manifests[subset],
            layers=list(layers),
            variants=[entry["variant"] for entry in entries],
            out_paths=[entry["path"] for entry in entries],
            extractors=extractors,
            **settings,
        )
    return stats
