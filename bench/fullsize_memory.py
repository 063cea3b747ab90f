"""Peak RSS of every stage at full size, each in a fresh process at n and 2n (``bench/fullsize.py`` part 3).

Extraction (synthetic full-size Cityscapes in the official layout), DVT
denoising of the extracted file, the 1-NN and the linear probe (the main
train set's row count and half of it); ``extrapolate`` carries each line to
the largest job of the study.
"""

from __future__ import annotations

import multiprocessing as mp
import queue as queue_module
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import status_mib  # noqa: E402
from fullsize_costs import cityscapes_manifest, synthetic_patches  # noqa: E402
from fullsize_dvt import run_denoise  # noqa: E402

from vitlocal.features.sources import base_tiling  # noqa: E402

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
