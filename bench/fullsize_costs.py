"""Per-unit costs of the full-size projection (``bench/fullsize.py`` part 2): measured on this CPU, estimated for a GPU.

CPU: the ViT-B/16 forward of a 224 tile, decode + tile of a full-size
Cityscapes PNG, the 1-NN's GFLOP/s, a linear-probe epoch, the Parquet write.
GPU: ``bench/gpu.py``'s ``results.json`` where given, else the datasheet at
``EFFICIENCY``: an estimate, not a measurement.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATASHEET, VIT_B_GFLOP  # noqa: E402
from fullsize_dvt import dvt_cpu_costs, dvt_gpu_costs  # noqa: E402
from fullsize_work import BDD_FRAMES_PER_VIDEO, IMAGE_HW, TRACK_VIDEO_CPU_S, _mp  # noqa: E402

from vitlocal.models.registry import ModelSpec, resolve  # noqa: E402

# ---- GPU estimate ------------------------------------------------------------------------------
#: Conservative fractions of the datasheet peak assumed when no bench/gpu.py results are given: eager ViT-B
#: in bf16 autocast (many small kernels, LayerNorm/GELU/softmax memory-bound), and one large fp32 GEMM.
EFFICIENCY = {"bf16": 0.15, "fp32": 0.3}
#: Floor per optimiser step or per kernel-bound frame on a GPU (launch latency), seconds.
GPU_STEP_FLOOR_S = 1e-3
GOAL_GPU_S = 20 * 60
REFERENCE_GPU = "H100"


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


def cpu_costs(m: Mapping[str, Any], stage1_s: float) -> dict[str, float]:
    """Per-unit CPU costs: measured ones, the RESULTS.md ones, DVT stage 1 at ``stage1_s`` a tile
    (``fullsize_dvt.stage1_tile_costs``) and the DVT stage-2 ones derived by FLOPs."""
    forward_s = m["forward_tile_s"]
    return {
        "forward_tile_s": forward_s,
        "decode_s_per_mp": m["decode_s"]["clean"] / _mp(IMAGE_HW["cityscapes"]),
        "freqnoise_s_per_mp": (m["decode_s"]["freqnoise-1"] - m["decode_s"]["clean"]) / _mp(IMAGE_HW["cityscapes"]),
        "write_s_per_gb": 1 / m["write_gb_per_s"],
        "knn_s_per_gflop": 1 / m["knn_gflops"],
        "linear_s_per_100k_epoch": m["linear_s_per_100k_epoch"],
        "tracking_s_per_frame": TRACK_VIDEO_CPU_S / BDD_FRAMES_PER_VIDEO,
        **dvt_cpu_costs(forward_s, stage1_s),
    }


# =============================================================================== per-unit costs (GPU)


# =============================================================================== per-unit costs (GPU)


def gpu_costs(results: Mapping[str, Any] | None, gaps: int, stage1: tuple[float, str]
              ) -> tuple[dict[str, float], dict[str, str]]:
    """Per-unit GPU costs and where each comes from: bench/gpu.py results where given, else the datasheet;
    DVT stage 1 is ``(seconds a tile, source)`` of ``fullsize_dvt.stage1_tile_costs``."""
    sections = (results or {}).get("sections", {})
    fig = {name: s.get("figures", {}) for name, s in sections.items() if s.get("status") == "ok"}
    bf16, _, fp32 = DATASHEET[REFERENCE_GPU]
    source: dict[str, str] = {}
    est = f"estimate, not measured: {REFERENCE_GPU} datasheet"

    if "images_per_s" in fig.get("vit", {}).get("best_eager", {}):
        forward = 1 / fig["vit"]["best_eager"]["images_per_s"]
        source["forward_tile_s"] = f"measured (bench/gpu.py vit, batch {fig['vit']['best_eager']['batch']})"
    else:
        forward = VIT_B_GFLOP / (bf16 * 1e3 * EFFICIENCY["bf16"])
        source["forward_tile_s"] = (f"{est} bf16 {bf16} TFLOP/s x {EFFICIENCY['bf16']:.0%}, "
                                    f"{VIT_B_GFLOP} GFLOP/tile")
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
    dvt_costs, dvt_sources = dvt_gpu_costs(forward, stage1)
    return {
        "forward_tile_s": forward,
        "decode_s_per_mp": 0.0,  # host stages, overlapped with the forward: see host_seconds
        "freqnoise_s_per_mp": 0.0,
        "write_s_per_gb": 0.0,
        "knn_s_per_gflop": knn,
        "linear_s_per_100k_epoch": linear,
        "tracking_s_per_frame": GPU_STEP_FLOOR_S * gaps,
        **dvt_costs,
    }, {
        **source,
        "decode_s_per_mp": "host CPU: this machine's cost / extraction.num_workers, overlapped with the forward",
        "freqnoise_s_per_mp": "host CPU, in the loader workers with the decode",
        "write_s_per_gb": "host CPU: this machine's Parquet write cost (one writer), overlapped with the forward",
        "tracking_s_per_frame": f"estimate: {GPU_STEP_FLOOR_S * 1e3:.0f} ms per gap per frame (kernel-bound)",
        **dvt_sources,
    }


# =============================================================================== projection
