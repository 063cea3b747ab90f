"""Extraction benchmark: is the pipeline model-bound, and is reading features fast?

Measures on this machine, in one run, with synthetic PNGs (no dataset needed):

1. model-only forward throughput on random tensors (all 12 layers requested,
   tokens fetched to the host as float16, as stored);
2. end-to-end throughput (decode PNG -> tile -> preprocess -> forward ->
   write Parquet) for the same model and tile count, and the ratio of the two
   (target >= 0.9 on CPU), whole run and steady state (without the DataLoader
   worker's start-up and the first batch's decode, a fixed cost per file),
   and end to end with no loader worker (decoding in the main process);
3. feature-file read throughput vs ``np.load`` of the same arrays (target >= 0.8);
4. peak RSS of an end-to-end run on N and 2N images (memory must not grow);
5. the storage-layout comparison that chose the file format
   (``docs/feature_format.md``).

Run ``python bench/extract.py --quick`` (ViT-B/16, few images) or
``--model tiny``; prints markdown tables. Throughputs are medians of
``--repeats`` interleaved runs (model-only, end-to-end, model-only, ...), so a
shared machine's load moves both alike.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset

from vitlocal.features.engine import ImageTiles, default_autocast, extract
from vitlocal.features.store import FeatureWriter, blob_rows, read_features
from vitlocal.io import read_rgb, write_png
from vitlocal.models.extractor import build_extractor
from vitlocal.models.registry import ModelSpec, demo_variant, resolve
from vitlocal.synthetic.textures import texture
from vitlocal.tiling import TilingSpec, preprocess_tiles, tile_image

TILING = TilingSpec(None, 2, 4)  # 512x1024 -> 8 tiles of 256 -> 224, the Cityscapes tile path
IMAGE_HW = (512, 1024)
ATTRS = {
    "variant": "clean",
    "dataset": "synthetic",
    "split": "bench",
    "preset": "bench",
    "patch_labels": "nearest_exact",
    "seed": 0,
}


@dataclass(frozen=True)
class Setup:
    spec: ModelSpec
    device: str
    batch_size: int
    num_workers: int


def model_spec(name: str) -> ModelSpec:
    """ViT-B/16 with random weights (the cost of every ViT-B in the study), or its tiny stand-in."""
    base = resolve("dino", {"weights": "random"})
    return demo_variant(base) if name == "tiny" else base


def write_pngs(root: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` random-texture PNGs of ``IMAGE_HW`` (textures compress like photos, unlike white noise)."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        rgb = tuple(int(v) for v in rng.integers(40, 216, 3))
        image = texture(*IMAGE_HW, rgb, rng, cell=float(rng.uniform(4, 32)), amplitude=60.0)
        paths.append(root / f"img{i:04d}.png")
        write_png(paths[-1], image)
    return paths


class PngTiles(Dataset):
    """Tile source over PNG files: decode once, cut into tiles, all-ignore labels."""

    def __init__(self, paths: list[Path], grid: tuple[int, int]) -> None:
        self.paths, self.grid = paths, grid

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> ImageTiles:
        image = read_rgb(self.paths[i])
        tiles = tile_image(image, TILING)
        labels = np.full((len(tiles), *self.grid), 255, np.uint8)
        return ImageTiles(self.paths[i].stem, tiles, labels, image.shape[:2])


def model_only(setup: Setup, n_tiles: int) -> float:
    """Seconds to run ``n_tiles`` random tiles through the model in batches (after one warm-up batch)."""
    model = build_extractor(setup.spec, "unused-random-weights", setup.device)
    layers = list(range(1, setup.spec.depth + 1))
    x = torch.randn(setup.batch_size, 3, setup.spec.input_size, setup.spec.input_size)
    amp_dtype = default_autocast(torch.device(setup.device))

    def step(batch: torch.Tensor) -> None:
        amp = torch.autocast(setup.device, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
        with torch.inference_mode(), amp:
            patch, _ = model.forward_layers(batch.to(setup.device), layers)
            for t in patch.values():
                t.to(torch.float16).cpu()

    step(x)
    start = time.perf_counter()
    for i in range(0, n_tiles, setup.batch_size):
        step(x[: min(setup.batch_size, n_tiles - i)])
    if setup.device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def end_to_end(setup: Setup, paths: list[Path], out: Path, row_group_mb: float = 128) -> tuple[float, float]:
    """Seconds for the full pipeline over ``paths`` into ``out`` (file committed), and seconds to its first forward."""
    spec = setup.spec
    model = build_extractor(spec, "unused-random-weights", setup.device)
    attrs = {**ATTRS, "model": spec.key, "arch": spec.arch, "weights": spec.weights_label}
    first: list[float] = []

    def forward(x: torch.Tensor, layers: list[int]):
        if not first:
            first.append(time.perf_counter())
        return model.forward_layers(x, layers)

    start = time.perf_counter()
    with FeatureWriter(out, attrs, row_group_mb=row_group_mb) as writer:
        extract(
            PngTiles(paths, spec.grid),
            forward,
            preprocess=preprocess_tiles,
            layers=list(range(1, spec.depth + 1)),
            mean=spec.mean,
            std=spec.std,
            out_size=spec.input_size,
            grid=spec.grid,
            writer=writer,
            batch_size=setup.batch_size,
            device=setup.device,
            num_workers=setup.num_workers,
            progress=False,
        )
    return time.perf_counter() - start, first[0] - start


def best_of(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def touch(arrays) -> float:
    """Read one value per 4 KB page so lazily mapped data is really loaded."""
    return float(sum(a.reshape(-1)[:: 4096 // a.itemsize].astype(np.float32).sum() for a in arrays))


def read_vs_npload(path: Path, tmp: Path, repeats: int = 15) -> tuple[float, float, int]:
    """Median seconds of interleaved runs: ``read_features`` (all layers and metadata) vs ``np.load`` of the arrays."""
    _, arrays = read_features(path)
    npys = []
    for layer, values in arrays.items():
        npys.append(tmp / f"layer{layer}.npy")
        np.save(npys[-1], values)
    runs = {"parquet": lambda: touch(read_features(path)[1].values()), "npy": lambda: touch([np.load(p) for p in npys])}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            times[name].append(best_of(fn, 1))
    return statistics.median(times["parquet"]), statistics.median(times["npy"]), sum(a.nbytes for a in arrays.values())


def _rss_child(queue, setup: Setup, paths: list[Path], out: Path, row_group_mb: float) -> None:
    from common import status_mib  # VmHWM: ru_maxrss would carry the parent's peak across the spawn

    end_to_end(setup, paths, out, row_group_mb)
    queue.put(status_mib("VmHWM"))


def peak_rss_mb(setup: Setup, paths: list[Path], out: Path, row_group_mb: float) -> float:
    """Peak RSS of a fresh process running the pipeline (loader workers excluded: they hold no features)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_rss_child, args=(queue, setup, paths, out, row_group_mb))
    child.start()
    peak = queue.get()
    child.join()
    return peak


# ---- storage layouts -------------------------------------------------------


def _fsl(x: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])


def _blob(x: np.ndarray) -> pa.Array:
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(x.shape[1] * x.itemsize), len(x), [None, pa.py_buffer(x)])


def _read_column(path: Path, x: np.ndarray, blob: bool) -> np.ndarray:
    pf = pq.ParquetFile(path, memory_map=True)
    out, start = np.empty_like(x), 0
    for group in range(pf.num_row_groups):
        chunk = pf.read_row_group(group, columns=["e"], use_threads=False).column("e").combine_chunks()
        rows = blob_rows(chunk, x.dtype, x.shape[1]) if blob else chunk.values.to_numpy(zero_copy_only=False)
        out[start : start + len(chunk)] = rows.reshape(-1, x.shape[1])
        start += len(chunk)
    return out


def layout_table(n_rows: int, tmp: Path, dim: int = 768, seed: int = 0) -> list[tuple[str, float, float, float]]:
    """(layout, write s, size MB, read s) for one float16 (n_rows, dim) layer, row groups of 128 MB."""
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.1, 3.0, dim).astype(np.float32)  # per-dimension spread, like real features
    x = (rng.standard_normal((n_rows, dim), dtype=np.float32) * scale).astype(np.float16)
    rows_per_group = (128 << 20) // (dim * 2)
    results = []

    def parquet(name: str, array: pa.Array, compression: str, blob: bool) -> None:
        path = tmp / "layout.parquet"
        write = lambda: pq.write_table(  # noqa: E731
            pa.table({"e": array}), path, compression=compression, use_dictionary=False,
            write_statistics=False, row_group_size=rows_per_group,
        )
        t_write = best_of(write, 2)
        t_read = best_of(lambda: touch([_read_column(path, x, blob)]))
        assert np.array_equal(_read_column(path, x, blob), x)
        results.append((name, t_write, path.stat().st_size / 1e6, t_read))

    npy = tmp / "layout.npy"
    results.append(("npy (np.save / np.load)", best_of(lambda: np.save(npy, x), 2), npy.stat().st_size / 1e6,
                    best_of(lambda: touch([np.load(npy)]))))
    parquet("fixed_size_binary blob, uncompressed (chosen)", _blob(x), "none", True)
    parquet("fixed_size_binary blob, zstd", _blob(x), "zstd", True)
    parquet("fixed_size_list<float16>, uncompressed", _fsl(x), "none", False)
    parquet("fixed_size_list<float16>, zstd", _fsl(x), "zstd", False)
    if n_rows <= 20_000:  # thousands of columns: only feasible on small arrays
        path = tmp / "columns.parquet"
        table = lambda: pa.table({f"d{j}": x[:, j] for j in range(dim)})  # noqa: E731
        t_write = best_of(lambda: pq.write_table(table(), path, compression="zstd", use_dictionary=False), 1)
        t_read = best_of(lambda: touch([np.stack([c.to_numpy() for c in pq.read_table(path).columns], axis=1)]), 2)
        results.append(("column per dimension, zstd", t_write, path.stat().st_size / 1e6, t_read))
    return results


# ---- report ----------------------------------------------------------------


def machine() -> str:
    with open("/proc/cpuinfo") as fh:
        cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "?")
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    threads = torch.get_num_threads()
    return f"{platform.node()}: {os.cpu_count()} CPUs ({cpu}){gpu}, torch {torch.__version__}, {threads} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8 images (4 and 8 for RSS), 20k-row layout table")
    parser.add_argument("--model", choices=["vitb", "tiny"], default="vitb")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, help="images for the throughput runs (default 8 quick, 32 full)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=min(4, max(1, (os.cpu_count() or 2) // 2)))
    parser.add_argument("--layout-rows", type=int, help="rows of the layout table (default 20k quick, 200k full)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved model-only / end-to-end pairs (medians)")
    args = parser.parse_args()
    n_images = args.images or (8 if args.quick else 32)
    layout_rows = args.layout_rows or (20_000 if args.quick else 200_000)
    setup = Setup(model_spec(args.model), args.device, args.batch_size, args.workers)
    tiles_per_image = TILING.n_tiles

    with tempfile.TemporaryDirectory(prefix="vitlocal-bench-") as tmp_name:
        tmp = Path(tmp_name)
        paths = write_pngs(tmp / "png", 2 * max(n_images, 4))
        n_tiles = n_images * tiles_per_image
        end_to_end(setup, paths[:1], tmp / "features.parquet")  # one-off per-process costs
        in_process = replace(setup, num_workers=0)
        t_model, t_e2e, t_first, t_e2e_in_process = [], [], [], []
        for _ in range(args.repeats):
            t_model.append(model_only(setup, n_tiles))
            total, first = end_to_end(setup, paths[:n_images], tmp / "features.parquet")
            t_e2e.append(total)
            t_first.append(first)
            t_e2e_in_process.append(end_to_end(in_process, paths[:n_images], tmp / "features.parquet")[0])
        t_read, t_npy, n_bytes = read_vs_npload(tmp / "features.parquet", tmp)
        rss_n = max(4, n_images // 2)
        rss = [peak_rss_mb(setup, paths[:k], tmp / f"rss{k}.parquet", 8) for k in (rss_n, 2 * rss_n)]
        layouts = layout_table(layout_rows, tmp)

    median = statistics.median
    ratios = [m / e for m, e in zip(t_model, t_e2e)]
    steady = [m / (e - f) for m, e, f in zip(t_model, t_e2e, t_first)]
    in_process_ratios = [m / e for m, e in zip(t_model, t_e2e_in_process)]
    print(f"## Extraction benchmark\n\n{machine()}, load average {os.getloadavg()[0]:.1f}\n")
    print(f"model {setup.spec.key} ({setup.spec.arch}, width {setup.spec.embed_dim}, {setup.spec.weights_label}), "
          f"device {setup.device}, batch {setup.batch_size}, {setup.num_workers} loader workers, "
          f"{n_images} images of {IMAGE_HW[0]}x{IMAGE_HW[1]} -> {n_tiles} tiles, "
          f"all {setup.spec.depth} layers, float16; medians of {args.repeats} interleaved runs\n")
    print("| measure | value |\n|---|---|")
    print(f"| model-only | {n_tiles / median(t_model):.2f} tiles/s ({n_tiles / median(t_model) / tiles_per_image:.2f} images/s) |")
    print(f"| end-to-end (PNG -> Parquet) | {n_tiles / median(t_e2e):.2f} tiles/s ({n_images / median(t_e2e):.2f} images/s) |")
    print(f"| end-to-end / model-only | {median(ratios):.2f} (runs {', '.join(f'{r:.2f}' for r in ratios)}; target >= 0.9) |")
    print(f"| start-up: DataLoader worker + first decode | {median(t_first):.1f} s per file |")
    print(f"| end-to-end, no loader worker (decode in the main process) / model-only | {median(in_process_ratios):.2f} "
          f"(runs {', '.join(f'{r:.2f}' for r in in_process_ratios)}) |")
    print(f"| steady state (without start-up) / model-only | {median(steady):.2f} (runs {', '.join(f'{r:.2f}' for r in steady)}) |")
    print(f"| read_features (all layers, {n_bytes / 1e6:.0f} MB) | {n_bytes / t_read / 1e9:.2f} GB/s |")
    print(f"| np.load of the same arrays | {n_bytes / t_npy / 1e9:.2f} GB/s |")
    print(f"| read / np.load | {t_npy / t_read:.2f} (target >= 0.8) |")
    print(f"| peak RSS (VmHWM), {rss_n} / {2 * rss_n} images (8 MB row groups) | {rss[0]:.0f} / {rss[1]:.0f} MiB |")
    print(f"\n### Storage layouts: one float16 layer ({layout_rows} x 768), 128 MB row groups, best of 5\n")
    print("Read with Arrow's decoder (`read_features` reads the chosen layout's pages directly: see above).\n")
    print("| layout | write s | size MB | read s | read vs np.load |\n|---|---|---|---|---|")
    base = layouts[0][3]
    for name, t_write, size, t_read_layout in layouts:
        print(f"| {name} | {t_write:.3f} | {size:.1f} | {t_read_layout:.3f} | {base / t_read_layout:.2f}x |")


if __name__ == "__main__":
    main()
