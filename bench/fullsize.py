"""What regenerating the whole paper preset costs: work counted from the config, per-unit costs measured here.

``python bench/fullsize.py [--config config.yaml] [--quick] [--gpu-json R] [--out DIR]``

1. **Work**, counted from the config and the study registry
   (``vitlocal.studies``: every experiment job the built figures draw and
   the feature files it reads), for one model (``--model``, default
   ``dino``) and for the whole study: tiles through the ViT (in ViT-B/16-224
   FLOP equivalents), megapixels decoded, 1-NN GFLOP (2 x queries x gallery x
   dims per search), linear-probe sample-epochs, tracking frames, DVT stage-1
   tiles and stage-2 tile-steps.
2. **Per-unit costs**, measured on this CPU at the real sizes with ViT-B/16
   random weights: the forward of a 224 tile (batch 32, all 12 layers' tokens
   cast to float16 on the host, as extraction does); decode + tile of one
   full-size 1024x2048 Cityscapes PNG (clean and frequency noise, the
   costliest variant); the 1-NN at the real 451,584-row gallery width (a
   slice of the 188,160 queries, scaled by FLOPs: the search is one GEMM per
   block); a linear-probe epoch. Tracking and DVT stage 1 are too slow to
   measure here: their figures come from ``bench/RESULTS.md``.
3. **Peak RSS of every stage at full size**, each in a fresh process at n and
   2n images: extraction (``vitlocal.features`` pipeline, synthetic full-size
   Cityscapes in the official layout), the 1-NN and the linear probe (on the
   main train set's row count and half of it) and DVT denoising of the
   extracted files.
4. **Projection**: units x per-unit cost = hours, on this CPU and on one GPU
   (per-unit GPU costs from ``bench/gpu.py``'s ``results.json`` when given,
   else the H100 datasheet at ``EFFICIENCY``: an estimate, not a measurement).

Prints the markdown report; ``--out DIR`` also writes ``projection.json`` and
``projection.md``. About 6 minutes on 2 quiet cores (``--quick``: smaller
measurements, about 3 minutes).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import queue as queue_module
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dvt as dvt_bench  # noqa: E402  (bench/dvt.py: DVT stage 1 per-tile costs and its projection)
import gpu as gpu_bench

from vitlocal.datasets.cityscapes import read_subset_list
from vitlocal.features.sources import FULL, base_tiling, round_to_patch
from vitlocal.layout import Layout
from vitlocal.models.registry import ModelSpec, resolve
from vitlocal.studies import EXPERIMENTS, OUTPUTS

PROJECT = Path(__file__).resolve().parents[1]
RESULTS = "results/paper"

# ---- sizes the code cannot know without the data ------------------------------------------------
#: Decoded image size (H, W) per dataset: datasets.md (Cityscapes 2048x1024 PNG, BDD100K 1280x720,
#: UC Merced / RESISC45 256x256); MOT17 mostly 1920x1080 (its seqinfo.ini); ADE20K and FAIR1M vary:
#: [assumption] ADE20K ~512x683 JPEG, FAIR1M one ~1000x1000 TIFF read per 224 crop.
IMAGE_HW = {"cityscapes": (1024, 2048), "ade20k": (512, 683), "fair1m": (1000, 1000), "bdd100k": (720, 1280),
            "mot17": (1080, 1920), "ucmerced": (256, 256), "resisc45": (256, 256)}
#: datasets.md: BDD100K MOT 2020 has 200 val videos of ~200 frames.
BDD_VIDEOS, BDD_FRAMES_PER_VIDEO = 200, 200
#: MOT17 train seqLength (seqinfo.ini of MOT17-02/04/05/09/10/11/13): 600+1050+837+525+654+900+750.
MOT17_TRAIN_FRAMES = 5316
#: datasets.md: UC Merced 21 classes x 100, NWPU-RESISC45 45 x 700.
SCENE_IMAGES = {"ucmerced": 21 * 100, "resisc45": 45 * 700}
#: paper.md (Fig 6): 5,850 object-patch queries per FAIR1M variant at 14x14 patches (DINOv2's 16x16: 7,623).
FAIR1M_OBJECT_PATCHES_196 = 5850
#: paper.md: FAIR1M 37 fine classes x 8 crops - 1 (bus has 7) = 295.
FAIR1M_SHORT = 1
#: bench/RESULTS.md "Study costs": one BDD100K-sized video (200 frames) 16.3 s; DVT stage 1, one tile at the
#: paper's settings ~2 h on one core (views 7 min + fit 111 min).
TRACK_VIDEO_CPU_S = 16.3
DVT_STAGE1_TILE_CPU_S = 2 * 3600.0
#: config.yaml dvt.stage1_tiles comment: the DVT paper's ~30 GPU-seconds per image (not measured here).
DVT_STAGE1_TILE_GPU_S = 30.0
#: MAE decoder of Table 4: 8 blocks of width 512 (mae_vit_base_patch16_dec512d8b) beside ViT-B's encoder.
MAE_DECODER = (8, 512)

# ---- GPU estimate ------------------------------------------------------------------------------
#: Conservative fractions of the datasheet peak assumed when no bench/gpu.py results are given: eager ViT-B
#: in bf16 autocast (many small kernels, LayerNorm/GELU/softmax memory-bound), and one large fp32 GEMM.
EFFICIENCY = {"bf16": 0.15, "fp32": 0.3}
#: Floor per optimiser step or per kernel-bound frame on a GPU (launch latency), seconds.
GPU_STEP_FLOOR_S = 1e-3
GOAL_GPU_S = 20 * 60
REFERENCE_GPU = "H100"


# =============================================================================== work counting


def vit_gflop(depth: int, dim: int, tokens: int) -> float:
    """Forward GFLOP of a ViT: per block 24 N d^2 (qkv, proj, MLP x4) + 4 N^2 d (attention)."""
    return depth * (24 * tokens * dim**2 + 4 * tokens**2 * dim) / 1e9


BASE_TILE_GFLOP = vit_gflop(12, 768, 196)


@dataclass(frozen=True)
class FileShape:
    """What one feature file holds: images, ViT forwards, patches per forward, width."""

    dataset: str
    subset: str
    model: str
    variant: str
    images: int
    tiles_per_image: int
    patches_per_tile: int
    dim: int

    @property
    def rows(self) -> int:
        return self.images * self.tiles_per_image * self.patches_per_tile


class Work:
    """Counts one preset's units of work from its config and the study registry."""

    def __init__(self, config: Mapping[str, Any], root: Path = PROJECT) -> None:
        self.config, self.root = config, root
        self.layout = Layout(config, RESULTS)
        figures = [name for name, out in OUTPUTS.items() if out.is_built(self.layout)]
        jobs: dict[tuple[str, str], None] = {}
        for name in figures:
            jobs.update(dict.fromkeys(OUTPUTS[name].jobs(self.layout)))
        self.jobs = list(jobs)
        self._specs: dict[str, ModelSpec] = {}
        #: memory stage -> the most rows (in 768-dim equivalents) it holds at once in any counted job
        self.largest: dict[str, int] = defaultdict(int)

    def spec(self, model: str) -> ModelSpec:
        if model not in self._specs:
            self._specs[model] = resolve(model, self.config.get("models", {}).get(model))
        return self._specs[model]

    # ---- sizes
    def images(self, dataset: str, subset: str) -> int:
        """Images (frames, crops) of one manifest, from the config (Cityscapes: the authors' lists)."""
        sub = self.config["subsets"]
        if dataset == "cityscapes":
            cs = sub["cityscapes"]
            name = cs["val_set"] if subset == "val" else cs["train_sets"][subset]
            return len(read_subset_list(self.root / cs["lists_dir"] / name))  # set8's repeats kept, as trained
        if dataset == "ade20k":
            from vitlocal.datasets.ade20k import NUM_CLASSES

            return NUM_CLASSES * sub["ade20k"]["train_per_class" if subset == "train" else "val_per_class"]
        if dataset == "fair1m":
            from vitlocal.datasets.fair1m import CLASSES

            return len(CLASSES) * sub["fair1m"]["per_class"] - FAIR1M_SHORT
        if dataset == "bdd100k":
            return self.videos("bdd100k") * BDD_FRAMES_PER_VIDEO
        if dataset == "mot17":
            return MOT17_TRAIN_FRAMES if sub["mot17"].get("sequences") is None else _mot17_sequences_unknown()
        return SCENE_IMAGES[dataset]

    def videos(self, dataset: str) -> int:
        if dataset == "bdd100k":
            return self.config["subsets"]["bdd100k"]["n_videos"] or BDD_VIDEOS
        return 7  # datasets.md: MOT17 train sequences 02 04 05 09 10 11 13

    def shape(self, path: str) -> FileShape:
        """The shape of a feature file named by ``Layout.feature_file``."""
        dataset, subset, model, name = path.split("/features/", 1)[1].split("/")
        variant = name.rsplit(".", 1)[0]
        spec = self.spec(model)
        base = base_tiling(dataset, self.config["tracking"]["frame_size"])
        if variant == FULL:
            h, w = base.resize_to or IMAGE_HW[dataset]
            tiles, patches = 1, (round_to_patch(h, spec.patch_size) // spec.patch_size) * (
                round_to_patch(w, spec.patch_size) // spec.patch_size)
        else:
            tiles, patches = base.n_tiles, (spec.input_size // spec.patch_size) ** 2
        return FileShape(dataset, subset, model, variant, self.images(dataset, subset), tiles, patches,
                         spec.embed_dim)

    def feature_files(self, models: set[str]) -> list[str]:
        files: dict[str, None] = {}
        for experiment, model in self.jobs:
            if model in models:
                files.update(dict.fromkeys(p for p in _flatten(EXPERIMENTS[experiment].inputs(self.layout, model))
                                           if "/features/" in p))
        return list(files)

    def models(self) -> set[str]:
        return {model for _, model in self.jobs}

    # ---- units
    def count(self, models: set[str]) -> dict[str, float]:
        """Units of work per stage for ``models`` (see ``STAGES``)."""
        units: dict[str, float] = defaultdict(float)
        for path in self.feature_files(models):
            self._extraction(path, units)
        for experiment, model in self.jobs:
            if model in models:
                PLANNERS.get(experiment, _not_counted)(self, EXPERIMENTS[experiment].inputs(self.layout, model),
                                                       model, units)
        for model in models & set(self.config.get("dvt", {}).get("models", [])):
            self._dvt_training(model, units)
        return dict(units)

    def _extraction(self, path: str, units: dict[str, float]) -> None:
        if path.endswith(".npz"):  # scene GSD features: every image at every scale, one tile each
            dataset, _, model = path.split("/features/", 1)[1].split("/")[:3]
            n = SCENE_IMAGES[dataset] * len(self.config["scene"]["scales"])
            units["extract_tiles"] += n * self.tile_equivalents(model, 1, (self.spec(model).input_size
                                                                           // self.spec(model).patch_size) ** 2)
            units["decode_mp"] += SCENE_IMAGES[dataset] * _mp(IMAGE_HW[dataset])
            return
        shape = self.shape(path)
        if shape.variant.split("-")[0] == "dvt1":  # stage 1's F on every tile of the file (dvt.stage1_tasks)
            units["dvt_stage1_tiles"] += shape.images * shape.tiles_per_image
            return
        if shape.variant.split("-")[0] == "dvt":  # a stage-2 denoiser pass over the raw file: one block per tile
            units["dvt_denoise_tiles"] += shape.images * shape.tiles_per_image
            units["write_gb"] += shape.rows * shape.dim * 2 / 1e9
            self._hold("dvt_denoise", shape.rows * shape.dim)
            return
        units["extract_tiles"] += shape.images * self.tile_equivalents(
            shape.model, shape.tiles_per_image, shape.patches_per_tile)
        units["decode_mp"] += shape.images * _mp(IMAGE_HW[shape.dataset])
        if shape.variant.startswith("freqnoise"):
            units["freqnoise_mp"] += shape.images * _mp(IMAGE_HW[shape.dataset])
        units["write_gb"] += shape.rows * len(self.stored_layers(shape)) * shape.dim * 2 / 1e9

    def stored_layers(self, shape: FileShape) -> list[int]:
        """rules/common.smk ``layers_for``: Fig 2's files (main Cityscapes split and val, clean) hold every layer."""
        depth = self.spec(shape.model).depth
        if shape.dataset == "cityscapes" and shape.subset in (self.layout.main_train_set, "val") \
                and shape.variant == "clean":
            return sorted({layer for layer in self.config["extraction"]["layers"] if layer <= depth} | {depth})
        return [depth]

    def tile_equivalents(self, model: str, tiles: int, tokens: int) -> float:
        """Forwards of ``tiles`` inputs of ``tokens`` patches, in ViT-B/16-224 tiles (by FLOPs)."""
        spec = self.spec(model)
        return tiles * vit_gflop(spec.depth, spec.embed_dim, tokens) / BASE_TILE_GFLOP

    def knn(self, units: dict[str, float], gallery: int, queries: int, dims: int, searches: int = 1) -> None:
        units["knn_gflop"] += searches * 2 * gallery * queries * dims / 1e9
        self._hold("knn", gallery * dims)

    def linear(self, units: dict[str, float], rows: int, dims: int) -> None:
        """Sample-epochs (x 1e5) scaled to 768 dims: an epoch is a (rows x d) @ (d x C) forward and backward."""
        units["linear_100k_epochs"] += rows * self.config["probes"]["linear_epochs"] * dims / 768 / 1e5
        self._hold("linear", rows * dims)

    def _hold(self, stage: str, values: int) -> None:
        self.largest[stage] = max(self.largest[stage], values // 768)

    def _dvt_training(self, model: str, units: dict[str, float]) -> None:
        dvt = self.config["dvt"]
        units["dvt_stage1_tiles"] += dvt["stage1_tiles"] * len(dvt["stage1_subsets"])
        units["dvt_stage2_tile_steps"] += dvt["stage2"]["steps"] * dvt["stage2"]["batch_size"]


def _mot17_sequences_unknown() -> int:
    raise SystemExit("subsets.mot17.sequences is set: the frame count per sequence is only known for all 7")


def _mp(hw: tuple[int, int]) -> float:
    return hw[0] * hw[1] / 1e6


def _flatten(inputs: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for value in inputs.values():
        out += _flatten(value) if isinstance(value, dict) else [value]
    return out


# ---- one planner per experiment: the searches and fits its compute function runs


def _seg(work: Work, train: str, val: str, units: dict[str, float], dims: int | None = None, *,
         linear: bool = True) -> None:
    t, v = work.shape(train), work.shape(val)
    work.knn(units, t.rows, v.rows, dims or t.dim)
    if linear:
        work.linear(units, t.rows, dims or t.dim)


def _train_size(work, inputs, model, units):
    for path in inputs["train_sets"].values():
        _seg(work, path, inputs["val"], units)


def _layerwise(work, inputs, model, units):
    layers = [layer for layer in work.config["extraction"]["layers"] if layer <= work.spec(model).depth]
    for _ in layers:
        _seg(work, inputs["train"], inputs["val"], units, linear=False)


def _degradation(work, inputs, model, units):
    t = work.shape(inputs["train"])
    work.linear(units, t.rows, t.dim)  # trained once on the clean train set
    for path in inputs["val_variants"].values():
        _seg(work, inputs["train"], path, units, linear=False)


def _pair(work, inputs, model, units):
    _seg(work, inputs["train"], inputs["val"], units)


def _variance_removal(work, inputs, model, units):
    dim = work.shape(inputs["train"]).dim
    for m in work.config["variance"]["removed_dims"]:
        if m < dim:
            _seg(work, inputs["train"], inputs["val"], units, dim - m)
    _seg(work, inputs["train"], inputs["val"], units, linear=False)  # k-NN on BatchNorm-standardised features


def _retrieval(work, inputs, model, units, removed: bool | None = None):
    gallery = work.shape(inputs["gallery"])
    queries = sum(FAIR1M_OBJECT_PATCHES_196 * work.shape(p).patches_per_tile / 196 for p in inputs["queries"].values())
    work.knn(units, gallery.rows, round(queries), gallery.dim)
    if removed if removed is not None else model in work.config["retrieval"]["removed_models"]:
        work.knn(units, gallery.rows, round(queries), gallery.dim - work.config["retrieval"]["removed_dims"])


def _scene_knn(work, inputs, model, units):
    share = work.config["scene"]["train_fraction"]
    for dataset in inputs["features"]:
        n = SCENE_IMAGES[dataset]
        dims = work.spec(model).embed_dim
        # [CLS] and mean patch token, each with and without the top dims, at every scale.
        work.knn(units, round(share * n), round((1 - share) * n), dims, 4 * len(work.config["scene"]["scales"]))


def _reconstruction(work, inputs, model, units):
    scene = work.config["scene"]
    tiles = base_tiling("cityscapes").n_tiles
    val = scene["reconstruction_images"] or work.images("cityscapes", "val")
    ranked = scene["rank_images"] or work.images("cityscapes", work.layout.main_train_set)
    depth, dim = MAE_DECODER
    decoder = vit_gflop(depth, dim, 197) / BASE_TILE_GFLOP
    # intact and zeroed top dims, at each mask ratio: encoder + decoder; ranking: encoder only.
    units["extract_tiles"] += val * tiles * 2 * len(scene["mask_ratios"]) * (1 + decoder) + ranked * tiles
    units["decode_mp"] += (val + ranked) * _mp(IMAGE_HW["cityscapes"])


def _tracking(work, inputs, model, units, copies: int = 1):
    dataset = work.shape(next(iter(_flatten(inputs)))).dataset
    frames = work.images(dataset, work.layout.split(dataset))
    units["tracking_frames"] += copies * frames


def _full_vs_tile(work, inputs, model, units):
    _tracking(work, {"features": inputs["features"]["tiled"]}, model, units, copies=len(inputs["features"]))


def _cityscapes_full_vs_tile(work, inputs, model, units):
    for mode in inputs["train"]:
        _seg(work, inputs["train"][mode], inputs["val"][mode], units)


def _dvt(planner: Callable[..., None]) -> Callable[..., None]:
    """A DVT task: the mirrored study's computation on the raw and on each denoised level's files."""
    def plan(work, inputs, model, units):
        for level in DVT_LEVELS:
            if level in inputs:
                planner(work, inputs[level], model, units)
    return plan


#: Feature levels a DVT experiment compares: raw, stage-2 denoised, stage-1 F (``dvt.stage1_tasks``).
DVT_LEVELS = ("raw", "dvt", "dvt1")


def _not_counted(work, inputs, model, units):
    """Variance spectra, top-dims overlap, ridge R^2: seconds next to the probes."""


PLANNERS: dict[str, Callable[..., None]] = {
    "train_size": _train_size,
    "layerwise": _layerwise,
    "degradation": _degradation,
    "ade20k": _pair,
    "variance_removal": _variance_removal,
    "fair1m_retrieval": _retrieval,
    "scene_knn": _scene_knn,
    "reconstruction": _reconstruction,
    "tracking": _tracking,
    "tracking_mot17": _tracking,
    "tracking_full_vs_tile": _full_vs_tile,
    "cityscapes_full_vs_tile": _cityscapes_full_vs_tile,
    "dvt_cityscapes": _dvt(_pair),
    "dvt_ade20k": _dvt(_pair),
    "dvt_robustness": _dvt(_degradation),
    "dvt_retrieval": _dvt(lambda w, i, m, u: _retrieval(w, i, m, u, removed=False)),
    "dvt_tracking": _dvt(lambda w, i, m, u: _tracking(w, {"features": i}, m, u)),
}

#: stage -> (unit name, per-unit cost key, what it is).
STAGES: dict[str, tuple[str, str, str]] = {
    "extract_tiles": ("ViT-B/16-224 tile forwards (FLOP-equivalent)", "forward_tile_s",
                      "ViT forwards of every feature file (and Table 4's encoder/decoder)"),
    "decode_mp": ("megapixels decoded", "decode_s_per_mp", "image decode + variant + tiling (loader workers)"),
    "freqnoise_mp": ("megapixels", "freqnoise_s_per_mp", "frequency noise (FFT of the image) beyond the decode"),
    "write_gb": ("GB of float16 tokens written", "write_s_per_gb", "Parquet feature files (writer)"),
    "knn_gflop": ("GFLOP (2 q g d)", "knn_s_per_gflop", "exact 1-NN searches (segmentation, retrieval, scene)"),
    "linear_100k_epochs": ("1e5 sample-epochs at 768 dims", "linear_s_per_100k_epoch", "linear probes"),
    "tracking_frames": ("frames", "tracking_s_per_frame", "ROIAlign + nearest-object matching over all gaps"),
    "dvt_stage1_tiles": ("tiles", "dvt_stage1_s_per_tile", "DVT per-tile decomposition (paper settings)"),
    "dvt_stage2_tile_steps": ("tile-steps", "dvt_stage2_s_per_tile_step", "DVT denoiser training"),
    "dvt_denoise_tiles": ("tiles", "dvt_denoise_s_per_tile", "DVT denoiser applied to feature files"),
}


# =============================================================================== per-unit costs (CPU)


def _vitb() -> ModelSpec:
    return resolve("dino", {"weights": "random"})


def measure_forward(batch: int, batches: int) -> float:
    """Seconds per 224 tile: ViT-B/16, all 12 layers' tokens cast to float16 on the host (after a warm-up)."""
    from vitlocal.models.extractor import build_extractor

    spec = _vitb()
    model = build_extractor(spec, "unused-random-weights", "cpu")
    layers = list(range(1, spec.depth + 1))
    x = torch.randn(batch, 3, spec.input_size, spec.input_size)

    def step(inputs: torch.Tensor) -> None:
        with torch.inference_mode():
            patch, _ = model.forward_layers(inputs, layers)
            for t in patch.values():
                t.to(torch.float16).cpu()

    step(x[:4])
    start = time.perf_counter()
    for _ in range(batches):
        step(x)
    return (time.perf_counter() - start) / (batch * batches)


def write_cityscapes(root: Path, n_train: int, n_val: int) -> Path:
    """Full-size (1024x2048) synthetic Cityscapes in the official layout."""
    from vitlocal.synthetic import cityscapes

    frames = cityscapes.default_frames(["aachen"], ["frankfurt"], {"train": n_train, "val": n_val})
    return cityscapes.write(root, frames=frames)


def cityscapes_manifest(root: Path, split: str, n: int):
    from vitlocal.datasets.cityscapes import list_images

    return list_images(root, split).head(n).reset_index(drop=True)


def measure_decode(root: Path) -> dict[str, float]:
    """Seconds per full-size image: decode PNG + labels, apply the variant, tile, label the patches."""
    from vitlocal.features.sources import make_source

    manifest = cityscapes_manifest(root, "val", 1)
    out = {}
    for variant in ("clean", "freqnoise-1"):
        source = make_source("cityscapes", root, manifest, _vitb(), variant)
        source[0]
        start = time.perf_counter()
        source[0]
        out[variant] = time.perf_counter() - start
    return out


def measure_write(path: Path, out: Path, copies: int) -> dict[str, float]:
    """GB/s of ``FeatureWriter`` writing ``copies`` times the rows and 12 layers of an extracted file."""
    from vitlocal.features.store import FeatureWriter, read_attrs, read_features

    meta, layers = read_features(path)
    n_bytes = copies * sum(a.nbytes for a in layers.values())
    start = time.perf_counter()
    with FeatureWriter(out, read_attrs(path)) as writer:
        for _ in range(copies):
            writer.write(meta, layers)
    return {"write_gb": n_bytes / 1e9, "write_gb_per_s": n_bytes / 1e9 / (time.perf_counter() - start)}


def synthetic_patches(n: int, dim: int = 768, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """float16 features (as stored) and 19-class labels, generated in chunks."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, dim), np.float16)
    for start in range(0, n, 65536):
        stop = min(n, start + 65536)
        x[start:stop] = rng.standard_normal((stop - start, dim), dtype=np.float32)
    return x, rng.integers(0, 19, n).astype(np.int64)


def measure_knn(gallery: np.ndarray, n_query: int) -> tuple[float, float]:
    """Achieved GFLOP/s of ``nearest_neighbors`` (raw dot) for ``n_query`` queries against the full gallery."""
    from vitlocal.probes.knn import nearest_neighbors

    query = gallery[:n_query].copy()
    nearest_neighbors(gallery[:4096], query[:256], metric="dot")  # warm-up: BLAS threads, buffers
    start = time.perf_counter()
    nearest_neighbors(gallery, query, metric="dot")
    seconds = time.perf_counter() - start
    return 2 * len(gallery) * n_query * gallery.shape[1] / seconds / 1e9, seconds


def measure_linear(x: np.ndarray, y: np.ndarray, epochs: int) -> float:
    """Seconds per epoch per 1e5 samples (batch 4096, Adam, 19 classes), after one warm-up epoch."""
    from vitlocal.probes.linear import train_linear_probe

    train_linear_probe(x[:8192], y[:8192], 19, epochs=1)
    start = time.perf_counter()
    train_linear_probe(x, y, 19, epochs=epochs)
    return (time.perf_counter() - start) / epochs / (len(x) / 1e5)


def cpu_costs(m: Mapping[str, Any]) -> dict[str, float]:
    """Per-unit CPU costs: measured ones, the RESULTS.md ones, and the DVT stage-2 ones derived by FLOPs."""
    forward_s = m["forward_tile_s"]
    return {
        "forward_tile_s": forward_s,
        "decode_s_per_mp": m["decode_s"]["clean"] / _mp(IMAGE_HW["cityscapes"]),
        "freqnoise_s_per_mp": (m["decode_s"]["freqnoise-1"] - m["decode_s"]["clean"]) / _mp(IMAGE_HW["cityscapes"]),
        "write_s_per_gb": 1 / m["write_gb_per_s"],
        "knn_s_per_gflop": 1 / m["knn_gflops"],
        "linear_s_per_100k_epoch": m["linear_s_per_100k_epoch"],
        "tracking_s_per_frame": TRACK_VIDEO_CPU_S / BDD_FRAMES_PER_VIDEO,
        "dvt_stage1_s_per_tile": DVT_STAGE1_TILE_CPU_S,
        # one Transformer block of 12, forward + backward (~3x forward)
        "dvt_stage2_s_per_tile_step": 3 * forward_s / 12,
        "dvt_denoise_s_per_tile": forward_s / 12,
    }


# =============================================================================== per-unit costs (GPU)


def gpu_costs(results: Mapping[str, Any] | None, gaps: int) -> tuple[dict[str, float], dict[str, str]]:
    """Per-unit GPU costs and where each comes from: bench/gpu.py results where given, else the datasheet."""
    sections = (results or {}).get("sections", {})
    fig = {name: s.get("figures", {}) for name, s in sections.items() if s.get("status") == "ok"}
    bf16, _, fp32 = gpu_bench.DATASHEET[REFERENCE_GPU]
    source: dict[str, str] = {}
    est = f"estimate, not measured: {REFERENCE_GPU} datasheet"

    if "images_per_s" in fig.get("vit", {}).get("best_eager", {}):
        forward = 1 / fig["vit"]["best_eager"]["images_per_s"]
        source["forward_tile_s"] = f"measured (bench/gpu.py vit, batch {fig['vit']['best_eager']['batch']})"
    else:
        forward = gpu_bench.VIT_B_GFLOP / (bf16 * 1e3 * EFFICIENCY["bf16"])
        source["forward_tile_s"] = (f"{est} bf16 {bf16} TFLOP/s x {EFFICIENCY['bf16']:.0%}, "
                                    f"{gpu_bench.VIT_B_GFLOP} GFLOP/tile")
    if "fp32_tflops" in fig.get("knn", {}):
        knn = 1 / (fig["knn"]["fp32_tflops"] * 1e3)
        source["knn_s_per_gflop"] = "measured (bench/gpu.py knn, fp32, the pipeline's default)"
    else:
        knn = 1 / (fp32 * 1e3 * EFFICIENCY["fp32"])
        source["knn_s_per_gflop"] = (f"{est} fp32 {fp32} TFLOP/s x {EFFICIENCY['fp32']:.0%} "
                                     "(the pipeline searches in fp32)")
    if "epochs_per_s" in fig.get("linear", {}):
        linear = 1 / fig["linear"]["epochs_per_s"] / (fig["linear"]["rows"] / 1e5)
        source["linear_s_per_100k_epoch"] = "measured (bench/gpu.py linear)"
    else:
        linear = 1e5 / 4096 * GPU_STEP_FLOOR_S
        source["linear_s_per_100k_epoch"] = f"estimate: {GPU_STEP_FLOOR_S * 1e3:.0f} ms per 4096-row Adam step (launch-bound)"
    return {
        "forward_tile_s": forward,
        "decode_s_per_mp": 0.0,  # host stages, overlapped with the forward: see host_seconds
        "freqnoise_s_per_mp": 0.0,
        "write_s_per_gb": 0.0,
        "knn_s_per_gflop": knn,
        "linear_s_per_100k_epoch": linear,
        "tracking_s_per_frame": GPU_STEP_FLOOR_S * gaps,
        "dvt_stage1_s_per_tile": DVT_STAGE1_TILE_GPU_S,
        "dvt_stage2_s_per_tile_step": 3 * forward / 12,
        "dvt_denoise_s_per_tile": forward / 12,
    }, {
        **source,
        "decode_s_per_mp": "host CPU: this machine's cost / extraction.num_workers, overlapped with the forward",
        "freqnoise_s_per_mp": "host CPU, in the loader workers with the decode",
        "write_s_per_gb": "host CPU: this machine's Parquet write cost (one writer), overlapped with the forward",
        "tracking_s_per_frame": f"estimate: {GPU_STEP_FLOOR_S * 1e3:.0f} ms per gap per frame (kernel-bound)",
        "dvt_stage1_s_per_tile": "the DVT paper's ~30 GPU-s per image (config.yaml dvt comment), not measured",
        "dvt_stage2_s_per_tile_step": "3 x one block of 12 of the forward (fwd + bwd), by FLOPs",
        "dvt_denoise_s_per_tile": "one block of 12 of the forward, by FLOPs",
    }


# =============================================================================== projection


def project(units: Mapping[str, float], costs: Mapping[str, float]) -> dict[str, float]:
    """Seconds per stage: units x per-unit cost."""
    return {stage: n * costs[STAGES[stage][1]] for stage, n in units.items()}


#: Stages a GPU run does on the host CPU, beside the device.
HOST_STAGES = ("decode_mp", "freqnoise_mp", "write_gb")


def host_seconds(units: Mapping[str, float], cpu: Mapping[str, float], workers: int) -> dict[str, float]:
    """Host-side work of a GPU run: decoding in ``workers`` loader processes, writing in the main one."""
    cost = {stage: n * cpu[STAGES[stage][1]] for stage, n in units.items() if stage in HOST_STAGES}
    loader = cost.get("decode_mp", 0.0) + cost.get("freqnoise_mp", 0.0)
    return {"decode_mp": loader / workers, "write_gb": cost.get("write_gb", 0.0)}


def gpu_total(seconds: Mapping[str, float], host: Mapping[str, float]) -> float:
    """One GPU: device stages one after another; the host stages overlap the forward (the slowest counts)."""
    device = sum(s for stage, s in seconds.items() if stage not in ("extract_tiles", *HOST_STAGES))
    return device + max(seconds.get("extract_tiles", 0.0), *host.values())


def dominant(seconds: Mapping[str, float]) -> str:
    return max(seconds, key=seconds.get)


# =============================================================================== peak RSS at full size


def _child(queue, stage: str, args: dict[str, Any]) -> None:
    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            samples.append(status_mib("VmRSS"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    STAGE_RUNNERS[stage](**args)
    done.set()
    sampler.join()
    half = len(samples) // 2
    queue.put({"peak": status_mib("VmHWM"), "halves": [max(samples[:half] or [0]), max(samples[half:] or [0])]})


def status_mib(key: str) -> float:
    """A /proc/self/status figure. Peak RSS is VmHWM, not ru_maxrss: Linux carries ru_maxrss across the exec
    of a spawned child (it would report this parent's peak); VmHWM belongs to the new address space."""
    with open("/proc/self/status") as fh:
        line = next(line for line in fh if line.startswith(f"{key}:"))
    return int(line.split()[1]) / 1024


def peak_rss(stage: str, **args: Any) -> dict[str, Any]:
    """Peak RSS (MiB) of a fresh process running one stage, and its peak in each half of the stage's run."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(queue, stage, args))
    child.start()
    while True:  # a child that dies before reporting must not leave us waiting
        try:
            peak = queue.get(timeout=1)
            break
        except queue_module.Empty:
            if not child.is_alive():
                raise RuntimeError(f"{stage} ({args}) child exited with {child.exitcode} before reporting") from None
    child.join()
    return peak


def run_extract(root: str, n: int, out: str) -> None:
    from vitlocal.features.pipeline import extract_feature_files

    extract_feature_files(
        dataset="cityscapes", root=root, manifest=cityscapes_manifest(Path(root), "train", n), subset="train",
        model_key="dino", model_overrides={"weights": "random"}, layers=list(range(1, 13)), variants=["clean"],
        out_paths=[out], preset="bench", weights_dir="unused", device="cpu", batch_size=32, num_workers=1,
        progress=False,
    )


def run_knn(rows: int, queries: int) -> None:
    from vitlocal.probes.knn import nearest_neighbors

    x, _ = synthetic_patches(rows)
    nearest_neighbors(x, x[:queries].copy(), metric="dot")


def run_linear(rows: int) -> None:
    from vitlocal.probes.linear import train_linear_probe

    x, y = synthetic_patches(rows)
    train_linear_probe(x, y, 19, epochs=1)


def replicate_last_layer(src: Path, out: Path, copies: int) -> int:
    """A feature file of ``copies`` x ``src``'s rows, last layer only: a denoising input of any size, cheaply."""
    from vitlocal.features.store import FeatureWriter, read_attrs, read_features

    attrs = read_attrs(src)
    layer = max(int(v) for v in attrs["layers"])
    meta, layers = read_features(src, [layer])
    with FeatureWriter(out, {**attrs, "layers": [layer]}) as writer:
        for _ in range(copies):
            writer.write(meta, layers)
    return copies * len(meta)


def run_denoise(path: str, out: str) -> None:
    from vitlocal.denoise.pipeline import denoise_feature_file
    from vitlocal.denoise.stage2 import Denoiser
    from vitlocal.features.store import read_attrs

    attrs = read_attrs(path)
    denoise_feature_file(path, Denoiser(768, attrs["grid"]), out, device="cpu")


STAGE_RUNNERS: dict[str, Callable[..., None]] = {
    "extraction": run_extract, "knn": run_knn, "linear": run_linear, "dvt_denoise": run_denoise,
}


def memory_table(root: Path, tmp: Path, gallery_rows: int, n_images: int, queries: int) -> list[dict[str, Any]]:
    """Peak RSS of each stage at n and 2n (images, or rows: the main train set's and half of it)."""
    half, sizes = gallery_rows // 2, (n_images, 2 * n_images)
    files = {k: tmp / f"rss{k}.parquet" for k in sizes}
    extraction = [peak_rss("extraction", root=str(root), n=k, out=str(files[k])) for k in sizes]
    # Denoising inputs at a quarter / half of the main train set: past the denoiser's 256-tile batch.
    copies = [max(1, gallery_rows // d // (sizes[1] * 6272)) for d in (4, 2)]
    inputs = [tmp / f"denoise{c}.parquet" for c in copies]
    denoise_rows = [replicate_last_layer(files[sizes[1]], p, c) for p, c in zip(inputs, copies)]
    denoise = [peak_rss("dvt_denoise", path=str(p), out=str(tmp / f"dvt-{p.name}")) for p in inputs]
    knn = [peak_rss("knn", rows=r, queries=queries) for r in (half, gallery_rows)]
    linear = [peak_rss("linear", rows=r) for r in (half, gallery_rows)]
    tile_rows = base_tiling("cityscapes").n_tiles * 196
    return [
        _memory_row("extraction", "extraction (PNG -> Parquet, 12 layers, batch 32, 1 loader worker asked, none on 2 cores)",
                    f"{sizes[0]} / {sizes[1]} full-size images", [k * tile_rows for k in sizes], extraction,
                    "streams (128 MB row groups): must not grow with the images", streams=True),
        _memory_row("dvt_denoise", "DVT denoising of a feature file (last layer)",
                    f"{denoise_rows[0]:,} / {denoise_rows[1]:,} rows", denoise_rows, denoise,
                    "streams row group by row group: must not grow with the rows", streams=True),
        _memory_row("knn", f"1-NN, {queries} queries", f"{half:,} / {gallery_rows:,} gallery rows",
                    [half, gallery_rows], knn, "holds the gallery (float16) by design; search blocks bounded"),
        _memory_row("linear", "linear probe, 1 epoch", f"{half:,} / {gallery_rows:,} rows", [half, gallery_rows],
                    linear, "holds the training rows by design"),
    ]


def _memory_row(key: str, stage: str, n: str, rows: list[int], peaks: list[dict[str, Any]], design: str, *,
                streams: bool = False) -> dict[str, Any]:
    return {"key": key, "stage": stage, "n": n, "rows": rows, "mib": [p["peak"] for p in peaks],
            "halves": peaks[1]["halves"], "streams": streams, "design": design}


def extrapolate(row: Mapping[str, Any], rows: int) -> float:
    """Peak MiB at ``rows`` (768 dims), on the line through the two measured points; flat for a streaming stage."""
    (r1, r2), (m1, m2) = row["rows"], row["mib"]
    return m2 if row["streams"] else m1 + (m2 - m1) * (rows - r1) / (r2 - r1)


# =============================================================================== report


def _h(seconds: float) -> str:
    return f"{seconds / 3600:,.2f} h" if seconds >= 3600 else f"{seconds / 60:,.1f} min" if seconds >= 60 \
        else f"{seconds:,.2f} s"


def stage_table(units: Mapping[str, float], costs: Mapping[str, float], label: str) -> list[str]:
    secs = project(units, costs)
    lines = [f"| stage | units | per-unit ({label}) | {label} time |", "|---|---|---|---|"]
    for stage, (name, key, _) in STAGES.items():
        if stage in units:
            lines.append(f"| {stage} | {units[stage]:,.0f} {name} | {costs[key]:.3g} s | {_h(secs[stage])} |")
    lines.append(f"| **total** | | | **{_h(sum(secs.values()))}** |")
    return lines


def _measured_section(m: Mapping[str, Any]) -> list[str]:
    rows = {
        f"forward per 224 tile (batch {m['forward_batch']}, 12 layers -> float16 on the host)":
            f"{m['forward_tile_s']:.3f} s ({1 / m['forward_tile_s']:.2f} tiles/s)",
        "decode + tile one 1024x2048 Cityscapes PNG (clean / freqnoise-1)":
            f"{m['decode_s']['clean']:.2f} s / {m['decode_s']['freqnoise-1']:.2f} s",
        f"1-NN raw dot, {m['knn_queries']:,} queries x {m['knn_gallery']:,} gallery x 768":
            (f"{m['knn_s']:.1f} s = {m['knn_gflops']:.0f} GFLOP/s (a slice of the 188,160 queries: "
             "full searches are scaled by FLOPs)"),
        f"Parquet write, {m['write_gb']:.2f} GB of float16 tokens (FeatureWriter, 12 layers)":
            f"{m['write_gb_per_s']:.2f} GB/s (page cache, no fsync)",
        f"linear probe, {m['linear_rows']:,} rows, {m['linear_epochs']} epochs":
            f"{m['linear_s_per_100k_epoch']:.2f} s per epoch per 1e5 samples",
        "tracking, DVT stage 1": (f"not measured: bench/RESULTS.md \"Study costs\" ({TRACK_VIDEO_CPU_S} s per "
                                  "200-frame video; ~2 h per stage-1 tile)"),
    }
    return ["## Per-unit costs measured here (CPU, ViT-B/16 random weights)", "", "| measure | value |",
            "|---|---|", *(f"| {k} | {v} |" for k, v in rows.items()), ""]


def _work_section(data: Mapping[str, Any]) -> list[str]:
    units = data["units"]
    lines = ["## Work counted from the config", "", "| stage | what (unit) | " + " | ".join(units) + " |",
             "|---|---|" + "---|" * len(units)]
    for stage, (name, _, what) in STAGES.items():
        counts = " | ".join(f"{u.get(stage, 0):,.0f}" for u in units.values())
        lines.append(f"| {stage} | {what} ({name}) | {counts} |")
    return [*lines, "", (f"Feature files: {data['files']}. 1-NN FLOPs count every patch (the probes drop "
                         "ignore-labelled gallery patches first: an upper bound)."), ""]


FORMULA = ("Formula: stage time = units x per-unit cost. CPU total = sum over stages (one process, these cores). "
           "GPU total = sum of the device stages (all but extract_tiles and the host stages decode_mp, "
           "freqnoise_mp, write_gb) + max(extract_tiles x forward_tile_s(GPU), (decode_mp x decode_s_per_mp + "
           "freqnoise_mp x freqnoise_s_per_mp)(CPU) / extraction.num_workers, write_gb x write_s_per_gb(CPU)): "
           "decoding (loader workers) and writing run on the host, overlapped with the forward; the host is "
           "assumed as fast per core as this one.")


def _projection_section(data: Mapping[str, Any]) -> list[str]:
    cpu, gpu = data["cpu_costs"], data["gpu_costs"]
    lines = ["## Projection", "", FORMULA, ""]
    for scope, u in data["units"].items():
        host = data["host_s"][scope]
        lines += [f"### {scope}: CPU (this machine, {os.cpu_count()} cores)", "", *stage_table(u, cpu, "CPU"), "",
                  f"### {scope}: one GPU", "", *stage_table(u, gpu, "GPU"), "",
                  (f"Host side, overlapped with the forward: decode + frequency noise {_h(host['decode_mp'])}, "
                   f"write {_h(host['write_gb'])}; **one-GPU total: {_h(data['gpu_total_s'][scope])}**, "
                   f"without DVT stages 1 and 2: {_h(data['gpu_total_no_dvt_s'][scope])}."), ""]
    return [*lines, "GPU per-unit costs:", "",
            *(f"- `{k}`: {gpu[k]:.3g} s — {v}" for k, v in data["gpu_sources"].items()), ""]


def _memory_section(data: Mapping[str, Any]) -> list[str]:
    largest = data["largest"]
    lines = ["## Peak RSS at full size (fresh process per run)", "",
             "| stage | n / 2n | peak RSS MiB | design | largest in the study: rows (768-dim) -> MiB |",
             "|---|---|---|---|---|"]
    for r in data["memory"]:
        grew = r["mib"][1] - r["mib"][0]
        big = (f"{largest[r['key']]:,} -> {extrapolate(r, largest[r['key']]):,.0f}" if r["key"] in largest
               else "streams: as at 2n")
        halves = f"; 2n run's peak, 1st / 2nd half: {r['halves'][0]:.0f} / {r['halves'][1]:.0f}"
        lines.append(f"| {r['stage']} | {r['n']} | {r['mib'][0]:.0f} / {r['mib'][1]:.0f} ({grew:+.0f}{halves}) | "
                     f"{r['design']} | {big} |")
    return [*lines, "", ("Last column: the most rows one job of the study holds in that stage (the largest "
                         "gallery, training set, denoised file), on the line through the two measured points. "
                         "Peak RSS is VmHWM of a fresh spawned process (torch and the package imported: "
                         "~1 GB of it); a loader worker's own process would not be in it, and the config's batch 64 "
                         "holds twice batch 32's tokens."), ""]


def _verdict_section(data: Mapping[str, Any]) -> list[str]:
    study, no_dvt = data["gpu_total_s"]["whole study"], data["gpu_total_no_dvt_s"]["whole study"]
    top = data["dominant_gpu"]
    top_s = project(data["units"]["whole study"], data["gpu_costs"])[top]
    measured = "measured by bench/gpu.py where marked" if data["gpu_json"] else "estimates, not measured"
    return ["## Verdict", "", (
        f"Goal: the whole paper in <= 20 minutes on one {REFERENCE_GPU}. Estimate: **{_h(study)}**: it "
        f"{'meets' if study <= GOAL_GPU_S else 'does NOT meet'} the goal; the dominant stage is `{top}` "
        f"({_h(top_s)}). Without DVT stages 1 and 2: {_h(no_dvt)} "
        f"({'meets' if no_dvt <= GOAL_GPU_S else 'does not meet'} it either), dominated by "
        f"`{data['dominant_gpu_no_dvt']}`. GPU figures: {measured}."), ""]


def report(data: Mapping[str, Any]) -> str:
    head = [f"# Full-size projection of the paper preset ({data['config']})", "",
            (f"{data['machine']}; load average before / after: {data['load_before']} / {data['load_after']}; "
             f"benchmark ran {data['bench_s']:.0f} s"), ""]
    sections = (_measured_section(data["measured"]), _work_section(data), _projection_section(data),
                _memory_section(data), _verdict_section(data))
    return "\n".join(head + [line for section in sections for line in section])


def machine() -> str:
    with open("/proc/cpuinfo") as fh:
        cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "?")
    return f"{platform.node()}: {os.cpu_count()} CPUs ({cpu}), torch {torch.__version__}, {torch.get_num_threads()} threads"


def _load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def assemble(work: Work, model: str, measured: Mapping[str, Any], memory: list, gpu_json: Mapping | None,
             config_name: str) -> dict[str, Any]:
    """Everything the report shows, as one JSON-able dict."""
    scopes = {f"one model ({model})": {model}, "whole study": work.models()}
    units = {name: work.count(models) for name, models in scopes.items()}
    cpu = cpu_costs(measured)
    gpu, sources = gpu_costs(gpu_json, len(work.config["tracking"]["gaps"]))
    workers = work.config["extraction"]["num_workers"]
    host = {s: host_seconds(u, cpu, workers) for s, u in units.items()}
    no_dvt = {s: {k: v for k, v in u.items() if not k.startswith("dvt_stage")} for s, u in units.items()}
    gpu_secs = project(units["whole study"], gpu)
    no_dvt_secs = project(no_dvt["whole study"], gpu)
    shapes = {p: work.shape(p) for p in work.feature_files({model}) if p.endswith(".parquet")}
    return {
        "config": config_name, "machine": machine(), "measured": dict(measured), "units": units,
        "cpu_costs": cpu, "gpu_costs": gpu, "gpu_sources": sources, "gpu_json": bool(gpu_json),
        "host_s": host,
        "gpu_total_s": {s: gpu_total(project(u, gpu), host[s]) for s, u in units.items()},
        "gpu_total_no_dvt_s": {s: gpu_total(project(u, gpu), host[s]) for s, u in no_dvt.items()},
        "cpu_total_s": {s: sum(project(u, cpu).values()) for s, u in units.items()},
        "dominant_gpu": dominant(gpu_secs), "dominant_gpu_no_dvt": dominant(no_dvt_secs),
        "files": (f"{len(shapes)} for {model} (Cityscapes "
                  + ", ".join(f"{s.subset}/{s.variant} {s.rows:,} rows" for s in shapes.values()
                              if s.dataset == "cityscapes" and s.variant in ("clean", FULL))
                  + f"), {len(work.feature_files(work.models()))} in the whole study"),
        "memory": memory, "largest": dict(work.largest),
    }


def measure(tmp: Path, work: Work, quick: bool, n_train: int) -> tuple[dict[str, Any], Path]:
    """The per-unit CPU measurements (and the synthetic Cityscapes root the memory runs reuse)."""
    root = write_cityscapes(tmp / "cityscapes", n_train, 1)
    batch = 32
    forward = measure_forward(batch, 1)
    decode = measure_decode(root)
    main = work.shape(work.layout.feature_file("cityscapes", work.layout.main_train_set, "dino"))
    gallery, labels = synthetic_patches(main.rows)
    n_query = 512 if quick else 2048
    gflops, knn_s = measure_knn(gallery, n_query)
    linear_rows, epochs = (100_000, 1) if quick else (200_000, 2)
    linear = measure_linear(gallery[:linear_rows], labels[:linear_rows], epochs)
    del gallery, labels
    return {"forward_batch": batch, "forward_tile_s": forward, "decode_s": decode, "knn_queries": n_query,
            "knn_gallery": main.rows, "knn_s": knn_s, "knn_gflops": gflops, "linear_rows": linear_rows,
            "linear_epochs": epochs, "linear_s_per_100k_epoch": linear}, root


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=PROJECT / "config.yaml")
    parser.add_argument("--model", default="dino", help="the one model of the per-model projection")
    parser.add_argument("--quick", action="store_true", help="smaller 1-NN slice and linear probe, fewer queries")
    parser.add_argument("--memory-images", type=int,
                        help="n of the extraction's n / 2n peak-RSS runs (default 2, --quick 1; 4 adds ~2 min)")
    parser.add_argument("--gpu-json", type=Path, help="bench/gpu.py results.json for measured GPU costs")
    parser.add_argument("--dvt-json", type=Path, help="bench/dvt.py dvt.json: measured DVT stage-1 costs per tile")
    parser.add_argument("--out", type=Path, help="folder for projection.json and projection.md")
    args = parser.parse_args(argv)
    start, load_before = time.monotonic(), _load()
    config = yaml.safe_load(args.config.read_text())
    work = Work(config)
    if args.model not in work.models():
        raise SystemExit(f"--model {args.model!r} runs no experiment in {args.config}; "
                         f"models: {', '.join(sorted(work.models()))}")
    gpu_json = json.loads(args.gpu_json.read_text()) if args.gpu_json else None
    with tempfile.TemporaryDirectory(prefix="vitlocal-fullsize-") as tmp_name:
        tmp = Path(tmp_name)
        n_images = args.memory_images or (1 if args.quick else 2)
        measured, root = measure(tmp, work, args.quick, 2 * n_images)
        print(f"measured per-unit costs in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
        memory = memory_table(root, tmp, measured["knn_gallery"], n_images, 256 if args.quick else 1024)
        print(f"measured peak memory in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
        measured.update(measure_write(tmp / f"rss{n_images}.parquet", tmp / "write.parquet", 4 // n_images))
    data = assemble(work, args.model, measured, memory, gpu_json, str(args.config.name))
    data.update(load_before=load_before, load_after=_load(), bench_s=time.monotonic() - start)
    dvt_json = json.loads(args.dvt_json.read_text()) if args.dvt_json else None
    data["dvt_stage1"] = dvt_bench.fullsize_stage1(config, gpu_json, dvt_json)
    text = "\n".join([report(data), *dvt_bench.fullsize_lines(data["dvt_stage1"])])
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "projection.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
        (args.out / "projection.md").write_text(text + "\n")
    return data


if __name__ == "__main__":
    main()
