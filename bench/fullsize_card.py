"""The card's own diagnostics at full size (issue 22 §3): each part's CPU cost measured here, projected to one H100.

``python bench/fullsize_card.py [--quick] [--config config.yaml] [--gpu-json R]`` (``bench/fullsize.py``
runs :func:`measure` and prints :func:`card_lines` as its ``card`` lines).

``studies/card/compute.card_rows`` reads the last layer of the Cityscapes
main-train (72 images) and val (30 images) feature files once. Its parts are
timed by calling the card's own functions, in its order, on files of random
ViT-B features (C = 768, 4 x 8 tiles of 14 x 14 patches an image, the paper's
Cityscapes tiling) written with the project's ``FeatureWriter``, and full-size
synthetic Cityscapes labels, on a slice of the images (``SIZES``), scaled to the
real sizes:

- CPU-bound (numpy on the host; a GPU run does them on its host CPU, assumed
  as fast per core as this one): ``read`` (``load_split`` of both files),
  ``rank`` (per-dimension variance, labelled training rows), ``remove_top_m``
  (the 10 top-m removals, train and val copies), ``batchnorm``, ``confusions``
  (per-image confusion matrices of the 12 k-NN levels and the linear probe: the
  label PNGs decoded once, then cached), ``bootstrap`` (19 numbers x 1,000
  resamples, at the real 30 images), ``variance`` (per-image sums), ``high_norm``
  and ``ridge`` (Gram of the training patches, float32 blocks summed in float64; position R²);
- GPU-bound: the 12 exact 1-NN searches and the linear probe, counted by
  ``fullsize_work``'s ``card`` planner and costed like every other experiment's
  (``fullsize_costs.gpu_costs``: bench/gpu.py's figures where given, else the
  datasheet estimate).

Per model, each CPU part is scaled from the ViT-B reference by ``SCALING``
(rows x width, rows x width² for the ridge's Gram, the images for the label
work and the bootstrap). Quick mode: under 2 minutes on 2 loaded cores.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fullsize_costs import REFERENCE_GPU, cityscapes_manifest, gpu_costs, write_cityscapes  # noqa: E402
from fullsize_work import EXPERIMENTS, PLANNERS, PROJECT, Work  # noqa: E402

#: The issue's goal: the card's cost beyond the experiments it reads, one ViT-B on one H100.
GOAL_S = 5 * 60
#: Reference sizes (ViT-B/16, the paper's Cityscapes tiling): images, tiles an image, patch grid, width.
TRAIN_IMAGES, VAL_IMAGES, TILES, GRID, DIM = 72, 30, 32, (14, 14), 768
PATCHES = TILES * GRID[0] * GRID[1]
#: Images of the measured slice per mode: (train, val).
SIZES = {True: (6, 3), False: (24, 10)}
#: Part -> what its cost grows with: "rows" (patches x width), "train" (training patches x width²),
#: "val_rows" (val patches x width), "fixed" (the val images' labels and per-image sums).
SCALING = {"read": "rows", "rank": "rows", "remove_top_m": "rows", "batchnorm": "rows", "confusions": "fixed", "bootstrap": "fixed", "variance": "val_rows",
           "high_norm": "rows", "ridge": "train"}
CPU_PARTS = tuple(SCALING)


def _write(path: Path, images: list[str], dim: int, seed: int) -> None:
    """A last-layer feature file of random float16 features and labels (255 = ignore, ~10 %) for ``images``."""
    from vitlocal.features.store import FeatureWriter

    rng = np.random.default_rng(seed)
    tile, row, col = (a.reshape(-1) for a in np.indices((TILES, *GRID)))
    attrs = {"model": "dino", "arch": "vit_base_patch16_224", "weights": "random", "variant": "clean",
             "dataset": "cityscapes", "split": path.stem, "preset": "bench (random features: not a result)",
             "patch_labels": "nearest_exact", "seed": seed, "data_source": "synthetic",
             "tiling": {"resize_to": None, "rows": 4, "cols": 8, "out_size": [224, 224]}, "grid": list(GRID),
             "layers": [12]}
    with FeatureWriter(path, attrs) as writer:
        for sample in images:
            labels = rng.integers(0, 19, PATCHES)
            labels[rng.random(PATCHES) < 0.1] = 255
            meta = pd.DataFrame({"sample_id": sample, "tile_id": tile, "patch_row": row, "patch_col": col,
                                 "label": labels, "image_h": 1024, "image_w": 2048})
            writer.write(meta, {12: rng.standard_normal((PATCHES, dim), dtype=np.float32).astype(np.float16)})


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def time_parts(tmp: Path, quick: bool, removed_dims: list[int], resamples: int = 1000) -> dict[str, Any]:
    """Seconds of each CPU part of ``card_rows`` at the reference sizes (measured on a slice, scaled)."""
    from vitlocal.evaluation.segmentation import EvalTarget, labelled, load_split, with_features
    from vitlocal.probes.variance import batchnorm_standardise, feature_variance, remove_dims, top_variance_dims
    from vitlocal.studies.card import compute
    from vitlocal.studies.card.bootstrap import bootstrap, miou_of, ratio_of
    from vitlocal.tiling import TilingSpec

    n_train, n_val = SIZES[quick]
    tmp.mkdir(parents=True, exist_ok=True)
    root = write_cityscapes(tmp / "cityscapes", 1, n_val)
    manifest = cityscapes_manifest(root, "val", n_val)
    _write(tmp / "train.parquet", [f"train_{i}" for i in range(n_train)], DIM, 1)
    _write(tmp / "val.parquet", list(manifest["sample_id"].astype(str)), DIM, 2)
    target = EvalTarget.load("cityscapes", root, manifest, TilingSpec(None, 4, 8))
    levels = 2 + len([m for m in removed_dims if 0 < m < DIM])  # raw, each top-m, BatchNorm
    raw: dict[str, float] = {}

    raw["read"], (val, full) = _timed(lambda: (load_split(tmp / "val.parquet"), load_split(tmp / "train.parquet")))

    raw["rank"], (variances, train) = _timed(lambda: (feature_variance(full.x), labelled(full)))

    def remove() -> None:
        for m in sorted({m for m in removed_dims if 0 < m < DIM}):
            top = top_variance_dims(variances, m)
            with_features(train, remove_dims(train.x, top)), with_features(val, remove_dims(val.x, top))
    raw["remove_top_m"], _ = _timed(remove)
    raw["batchnorm"], _ = _timed(lambda: batchnorm_standardise(train.x, val.x))

    preds = np.random.default_rng(3).integers(0, 19, len(val.labels))
    cold, confusions = _timed(lambda: compute.per_image_confusions(val, preds, target))  # decodes the labels
    warm, _ = _timed(lambda: compute.per_image_confusions(val, preds, target))  # cached, as the later calls
    raw["confusions"] = (cold + levels * warm) * VAL_IMAGES / n_val  # levels k-NN + 1 linear, per val image

    image = compute.image_index(val, target.manifest)
    raw["variance"], stats = _timed(lambda: compute.variance_stats(val.x, image, n_val))

    def high_norm() -> np.ndarray:
        threshold = compute.high_norm_threshold(np.linalg.norm(full.x, axis=1))
        return compute.high_norm_stats(np.linalg.norm(val.x, axis=1), val.labels, image, n_val, threshold, [0, 1])
    raw["high_norm"], hn = _timed(high_norm)

    def ridge() -> np.ndarray:
        predict = compute.fit_ridge(full.x, compute.grid_positions(full))
        return compute.position_stats(predict(val.x), compute.grid_positions(val), image, n_val)
    raw["ridge"], pos = _timed(ridge)

    # The bootstrap at the real 30 images: this slice's per-image statistics, repeated to 30 units.
    def units(a: np.ndarray) -> np.ndarray:
        return np.resize(a, (VAL_IMAGES, *a.shape[1:]))

    def boot() -> None:
        for _ in range(levels + 1):
            bootstrap(units(confusions), miou_of, resamples=resamples)
        for k in compute.TOP_DIMS:
            bootstrap(units(stats), compute.top_share(k), resamples=resamples)
        for cols in ([0, 1], [3, 2], [5, 4]):
            bootstrap(units(hn[:, cols]), ratio_of, resamples=resamples)
        bootstrap(units(pos), compute.position_r2, resamples=resamples)
    raw["bootstrap"], _ = _timed(boot)

    rows = {"train": n_train * PATCHES, "val": n_val * PATCHES}
    full_rows = {"train": TRAIN_IMAGES * PATCHES, "val": VAL_IMAGES * PATCHES}
    factor = {"rows": sum(full_rows.values()) / sum(rows.values()), "train": full_rows["train"] / rows["train"],
              "val_rows": full_rows["val"] / rows["val"], "fixed": 1.0}
    seconds = {part: raw[part] * factor[SCALING[part]] for part in CPU_PARTS}
    return {"slice_images": {"train": n_train, "val": n_val}, "slice_s": raw, "reference_s": seconds,
            "levels": levels, "resamples": resamples, "dim": DIM}


def project(work: Work, measured: Mapping[str, Any], gpu: Mapping[str, float]) -> dict[str, dict[str, Any]]:
    """Per card model: CPU parts scaled from the ViT-B reference, GPU parts (1-NN, linear) from the planner's units."""
    out = {}
    for model in sorted(m for e, m in work.jobs if e == "card"):
        inputs = EXPERIMENTS["card"].inputs(work.layout, model)
        train, val = work.shape(inputs["train"]), work.shape(inputs["val"])
        width = train.dim / measured["dim"]
        rows = (train.rows + val.rows) / ((TRAIN_IMAGES + VAL_IMAGES) * PATCHES)
        scale = {"rows": rows * width, "train": train.rows / (TRAIN_IMAGES * PATCHES) * width**2,
                 "val_rows": val.rows / (VAL_IMAGES * PATCHES) * width, "fixed": val.images / VAL_IMAGES}
        cpu = {p: measured["reference_s"][p] * scale[SCALING[p]] for p in CPU_PARTS}
        units = collections.defaultdict(float)
        PLANNERS["card"](work, inputs, model, units)
        device = {"knn": units["knn_gflop"] * gpu["knn_s_per_gflop"],
                  "linear": units["linear_100k_epochs"] * gpu["linear_s_per_100k_epoch"]}
        if units["dvt_denoise_tiles"]:  # the DVT post-processor's timed pass (a model of dvt.models)
            device["dvt_denoise"] = units["dvt_denoise_tiles"] * gpu["dvt_denoise_s_per_tile"]
        out[model] = {"cpu_s": cpu, "gpu_s": device, "units": {k: units[k] for k in ("knn_gflop", "linear_100k_epochs")},
                      "total_s": sum(cpu.values()) + sum(device.values()), "dim": train.dim,
                      "rows": {"train": train.rows, "val": val.rows}}
    return out


def card_lines(projection: Mapping[str, Mapping[str, Any]], measured: Mapping[str, Any], source: str) -> list[str]:
    """The report section: one ``card`` line per model, then what was measured."""
    ref = measured["reference_s"]
    lines = ["## The card's own diagnostics (bench/fullsize_card.py)", "",
             (f"Its cost beyond the experiments it reads, on one {REFERENCE_GPU} (goal: <= {GOAL_S // 60} min for a "
              f"ViT-B). GPU-bound: {measured['levels']} exact 1-NN searches and one linear probe ({source}); "
              "CPU-bound, run on the host (as fast per core as this machine, assumed): "
              + ", ".join(CPU_PARTS) + "."), ""]
    for model, p in projection.items():
        cpu, dev = p["cpu_s"], p["gpu_s"]
        verdict = "meets" if p["total_s"] <= GOAL_S else "does NOT meet"
        lines.append(f"- card {model} (C = {p['dim']}, {p['rows']['train']:,} / {p['rows']['val']:,} rows): "
                     f"**{p['total_s'] / 60:.1f} min** ({verdict} the goal): GPU k-NN {dev['knn']:.0f} s "
                     f"({p['units']['knn_gflop'] / 1e3:,.0f} TFLOP), linear {dev['linear']:.0f} s; CPU "
                     + ", ".join(f"{k} {v:.1f} s" for k, v in cpu.items()))
    sliced = measured["slice_images"]
    return [*lines, "", (f"CPU parts measured on {sliced['train']} train / {sliced['val']} val images of random "
                         f"ViT-B features (the bootstrap at 30 images x {measured['resamples']} resamples), scaled to "
                         "72 / 30 images: " + ", ".join(f"{k} {v:.1f} s" for k, v in ref.items())
                         + f" (sum {sum(ref.values()):.0f} s)."), ""]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=PROJECT / "config.yaml")
    parser.add_argument("--quick", action="store_true", help="a smaller slice: under 2 minutes on 2 cores")
    parser.add_argument("--gpu-json", type=Path, help="bench/gpu.py results.json for measured GPU costs")
    args = parser.parse_args(argv)
    work = Work(yaml.safe_load(args.config.read_text()))
    gpu_json = json.loads(args.gpu_json.read_text()) if args.gpu_json else None
    gpu, sources = gpu_costs(gpu_json, 0, (float("nan"), "not used by the card"))
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vitlocal-card-") as tmp:
        measured = time_parts(Path(tmp), args.quick, list(work.config["variance"]["removed_dims"]))
    measured["bench_s"] = time.monotonic() - start
    projection = project(work, measured, gpu)
    print("\n".join(card_lines(projection, measured, sources["knn_s_per_gflop"])))
    print(f"measured in {measured['bench_s']:.0f} s", file=sys.stderr)
    return {"measured": measured, "projection": projection}


if __name__ == "__main__":
    main()
