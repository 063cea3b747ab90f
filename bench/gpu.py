"""One short GPU benchmark, ready before a GPU is lent: every figure in one run of <= 5 minutes.

``python bench/gpu.py --out bench/gpu-results`` on one H100/H200 (about 3-4
minutes), ``python bench/gpu.py --tiny --out DIR`` on a CPU in seconds (what
``tests/test_bench_gpu.py`` runs). Sections, each timed through the package's
own code (``vitlocal.models``, ``vitlocal.features``, ``vitlocal.probes``):

1. ``peak``: the card's matmul throughput (bf16, TF32, fp32), measured with
   large ``torch.matmul`` calls, beside the datasheet's dense figure;
2. ``vit``: ViT-B/16 at 224, bf16 autocast, model-only images/s over a batch
   sweep (tokens of all 12 blocks, left on the device), against the
   35.2 GFLOP/image roofline;
3. ``extraction``: PNG decode in DataLoader workers -> tile -> forward ->
   Parquet, end to end, against the same model on the same tile count with
   its outputs copied to the host (``bench/extract.py``'s two measures);
4. ``knn``: the paper-size Cityscapes 1-NN (451,584 x 188,160 x 768, raw dot)
   in fp32 (the pipeline's default), TF32 and bf16, and the agreement of
   TF32/bf16 with fp32 on a sample of queries;
5. ``linear``: linear-probe epochs/s on the same gallery features;
6. ``dvt``: DVT stage 1 at paper settings, seconds per tile one at a time
   vs batched (``bench/dvt.py``, quick mode, about a minute);
7. ``compile``: ``torch.compile`` of the ViT at the best eager batch size,
   and whether it helps (last: its compile time is the least predictable).

A failing section is recorded (error and traceback) and the run goes on;
``results.json`` and ``results.md`` are rewritten after every section, so a
run cut short still leaves what it measured. Sections are skipped once the
time budget (``--budget-s``) is spent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dvt as dvt_bench  # noqa: E402  (bench/dvt.py: DVT stage 1 per tile, one at a time vs batched)
import extract as extract_bench  # noqa: E402  (bench/extract.py: PNG source, model-only and end-to-end timers)
from common import DATASHEET, VIT_B_GFLOP  # noqa: E402,F401  (gpu.DATASHEET: the figures fullsize projects with)

from vitlocal.models.extractor import build_extractor  # noqa: E402
from vitlocal.probes import knn  # noqa: E402
from vitlocal.probes.linear import train_linear_probe  # noqa: E402

#: Cityscapes 1-NN of the paper: 72 train x 30 val images, 32 tiles x 196 patches each.
PAPER_KNN = (451_584, 188_160, 768)
CLASSES = 19



#: Sizes per mode. ``gpu`` fits ~4 minutes on an H100 (the 1-NN's three precisions take most of it).
SIZES: dict[str, dict[str, Any]] = {
    "gpu": dict(peak_n=8192, peak_repeats=10, batches=[32, 64, 128, 256, 512, 1024], vit_steps=10, vit_budget_s=60,
                images=192, extract_batch=256, workers=max(1, min(8, (os.cpu_count() or 2) - 2)),
                knn_size=PAPER_KNN, knn_sample=8192, linear_epochs=5),
    "tiny": dict(peak_n=512, peak_repeats=2, batches=[2, 4], vit_steps=2, vit_budget_s=30, images=2,
                 extract_batch=8, workers=0, knn_size=(4096, 1024, 64), knn_sample=256, linear_epochs=2),
}


def datasheet(device: torch.device) -> tuple[float, float, float] | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peaks for key, peaks in DATASHEET.items() if key in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return result, time.perf_counter() - start


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


@contextlib.contextmanager
def tf32(enabled: bool):
    """TF32 tensor-core matmuls on or off (torch's default is off: true fp32)."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


# ---- sections ----------------------------------------------------------------


def bench_peak(cfg: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Best-of-N TFLOP/s of an n^3 matmul per precision (the ceiling every later figure is read against)."""
    n, repeats = cfg.peak_n, cfg.peak_repeats
    out: dict[str, Any] = {"matmul_n": n}
    precisions = [("bf16", torch.bfloat16, False), ("tf32", torch.float32, True), ("fp32", torch.float32, False)]
    if device.type != "cuda":
        precisions = [("fp32", torch.float32, False)]
    for name, dtype, allow in precisions:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        with tf32(allow):
            a @ b  # warm-up (kernel selection)
            best = min(timed(lambda: a @ b, device)[1] for _ in range(repeats))
        out[f"{name}_tflops"] = 2 * n**3 / best / 1e12
    sheet = datasheet(device)
    if sheet is not None:
        out.update(datasheet_bf16_tflops=sheet[0], datasheet_tf32_tflops=sheet[1], datasheet_fp32_tflops=sheet[2])
    return out


def vit_spec(tiny: bool):
    return extract_bench.model_spec("tiny" if tiny else "vitb")


def _images_per_s(forward: Callable[[torch.Tensor], Any], x: torch.Tensor, device, steps: int) -> float:
    forward(x)  # warm-up: kernel selection, (compiled) graph capture

    def run() -> None:
        for _ in range(steps):
            forward(x)  # outputs dropped at once: a batch of 1024 holds ~7 GB of tokens

    return steps * len(x) / timed(run, device)[1]


class VitRunner:
    """ViT-B/16 (or the tiny stand-in) and its bf16 (GPU) forward over all blocks, as the pipeline calls it."""

    def __init__(self, cfg: argparse.Namespace, device: torch.device, results: dict[str, Any]) -> None:
        self.spec = vit_spec(cfg.tiny)
        self.model = build_extractor(self.spec, "unused-random-weights", device)
        self.layers = list(range(1, self.spec.depth + 1))
        self.amp = torch.bfloat16 if device.type == "cuda" else None
        self.cfg, self.device = cfg, device
        peak = results.get("peak", {})
        self.peak_tflops = peak.get("datasheet_bf16_tflops") or peak.get("bf16_tflops") or peak.get("fp32_tflops")

    def forward(self, forward_layers: Callable[..., Any]) -> Callable[[torch.Tensor], Any]:
        def run(x: torch.Tensor):
            with torch.inference_mode(), autocast(self.device, self.amp):
                return forward_layers(x, self.layers)

        return run

    def row(self, batch: int, mode: str, forward_layers: Callable[..., Any]) -> dict[str, Any]:
        size = self.spec.input_size
        x = torch.randn(batch, 3, size, size, device=self.device)
        ips = _images_per_s(self.forward(forward_layers), x, self.device, self.cfg.vit_steps)
        r: dict[str, Any] = {"batch": batch, "mode": mode, "images_per_s": ips}
        if not self.cfg.tiny:
            r["tflops"] = ips * VIT_B_GFLOP / 1e3
            if self.peak_tflops:
                r["roofline_images_per_s"] = self.peak_tflops * 1e3 / VIT_B_GFLOP
                r["fraction_of_roofline"] = r["tflops"] / self.peak_tflops
        return r


def bench_vit(cfg: argparse.Namespace, device: torch.device, results: dict[str, Any]) -> dict[str, Any]:
    """Eager model-only images/s per batch size (until out of memory or the section's budget)."""
    vit = VitRunner(cfg, device, results)
    sweep, deadline = [], time.monotonic() + cfg.vit_budget_s
    for batch in cfg.batches:
        if time.monotonic() > deadline:
            sweep.append({"batch": batch, "mode": "eager", "skipped": "section budget spent"})
            continue
        try:
            sweep.append(vit.row(batch, "eager", vit.model.forward_layers))
        except torch.cuda.OutOfMemoryError:
            sweep.append({"batch": batch, "mode": "eager", "error": "out of memory"})
            break
        print(f"  vit eager batch {batch}: {sweep[-1]['images_per_s']:.1f} images/s", flush=True)
    out: dict[str, Any] = {"model": vit.spec.key, "arch": vit.spec.arch, "embed_dim": vit.spec.embed_dim}
    eager = [r for r in sweep if "images_per_s" in r]
    if eager:
        out["best_eager"] = max(eager, key=lambda r: r["images_per_s"])
    out["sweep"] = sweep
    return out


def bench_compile(cfg: argparse.Namespace, device: torch.device, results: dict[str, Any]) -> dict[str, Any]:
    """``torch.compile`` at the best eager batch size; last, as its compile time is the least predictable."""
    best = results.get("vit", {}).get("best_eager")
    if best is None:
        raise RuntimeError("no eager figure to compare with (the vit section failed or was skipped)")
    vit = VitRunner(cfg, device, results)
    start = time.perf_counter()
    row = vit.row(best["batch"], "compiled", torch.compile(vit.model.forward_layers))
    row["compile_and_run_s"] = time.perf_counter() - start
    row["speedup_vs_eager"] = row["images_per_s"] / best["images_per_s"]
    row["helps"] = row["speedup_vs_eager"] > 1.02
    return row


def bench_extraction(cfg: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """End-to-end PNG -> Parquet vs model-only (outputs copied to the host) on the same tiles."""
    setup = extract_bench.Setup(vit_spec(cfg.tiny), device.type, cfg.extract_batch, cfg.workers)
    n_tiles = cfg.images * extract_bench.TILING.n_tiles
    with tempfile.TemporaryDirectory(prefix="vitlocal-gpu-bench-", dir=cfg.tmp) as tmp_name:
        tmp = Path(tmp_name)
        start = time.perf_counter()
        paths = extract_bench.write_pngs(tmp / "png", cfg.images)
        t_write_png = time.perf_counter() - start
        print(f"  wrote {len(paths)} PNGs in {t_write_png:.1f} s", flush=True)
        t_model = extract_bench.model_only(setup, n_tiles)
        print(f"  model-only: {n_tiles / t_model:.1f} tiles/s", flush=True)
        extract_bench.end_to_end(setup, paths[:1], tmp / "features.parquet")  # one-off per-process costs
        t_e2e, t_first = extract_bench.end_to_end(setup, paths, tmp / "features.parquet")
        size = (tmp / "features.parquet").stat().st_size
    return {
        "images": cfg.images,
        "image_hw": list(extract_bench.IMAGE_HW),
        "tiles": n_tiles,
        "layers": setup.spec.depth,
        "batch": cfg.extract_batch,
        "loader_workers": cfg.workers,
        "model_only_tiles_per_s": n_tiles / t_model,
        "end_to_end_tiles_per_s": n_tiles / t_e2e,
        "end_to_end_over_model_only": t_model / t_e2e,
        "startup_s": t_first,
        "steady_state_over_model_only": t_model / (t_e2e - t_first),
        "feature_file_gb": size / 1e9,
        "write_gb_per_s": size / 1e9 / t_e2e,
    }


def synthetic_features(n: int, dim: int, device: torch.device, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float16 features (as stored) of ``CLASSES`` Gaussian classes, generated on the device."""
    gen = torch.Generator(device=device).manual_seed(seed)
    centers = torch.randn(CLASSES, dim, generator=torch.Generator(device=device).manual_seed(0), device=device)
    y = torch.randint(0, CLASSES, (n,), generator=gen, device=device)
    x = torch.empty(n, dim, dtype=torch.float16, device=device)
    for start in range(0, n, 65536):  # in chunks: no n x dim float32 temporary
        stop = min(n, start + 65536)
        x[start:stop] = torch.randn(stop - start, dim, generator=gen, device=device) + centers[y[start:stop]]
    return x, y


def search(gallery: torch.Tensor, query: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Exact 1-NN (raw dot) indices through ``knn``'s own blockwise search, in ``dtype``.

    ``knn.nearest_neighbors`` returns numpy scores and so cannot run in
    bfloat16; this loops over query blocks with its block search instead.
    """
    block = knn.auto_block_size(gallery.shape[1], 1, device, dtype)
    out = torch.empty(len(query), dtype=torch.int64, device=device)
    with torch.inference_mode():
        for q0 in range(0, len(query), block):
            q = knn._to_block(query, q0, q0 + block, device, dtype, "dot", "query_x")
            _, idx = knn._search_block_row(gallery, q, 1, "dot", block, device, dtype)
            out[q0 : q0 + len(q)] = idx[:, 0]
    return out


def bench_knn(cfg: argparse.Namespace, device: torch.device, state: dict[str, Any]) -> dict[str, Any]:
    n_train, n_query, dim = cfg.knn_size
    gallery, train_y = synthetic_features(n_train, dim, device, seed=1)
    query, _ = synthetic_features(n_query, dim, device, seed=2)
    state.update(gallery=gallery, train_y=train_y)  # the linear probe reuses them
    flop = 2 * n_train * n_query * dim
    out: dict[str, Any] = {"n_train": n_train, "n_query": n_query, "dim": dim, "metric": "dot", "pflop": flop / 1e15}
    precisions = [("fp32", torch.float32, False), ("tf32", torch.float32, True), ("bf16", torch.bfloat16, False)]
    if device.type != "cuda":
        precisions = [("fp32", torch.float32, False), ("bf16", torch.bfloat16, False)]
    sample = torch.randperm(n_query, generator=torch.Generator().manual_seed(0))[: cfg.knn_sample].to(device)
    reference = None
    for name, dtype, allow in precisions:
        with tf32(allow):
            if name == "fp32":  # the pipeline's own entry point, as the experiments call it
                _, seconds = timed(
                    lambda: knn.nearest_neighbors(gallery, query, metric="dot", device=device), device
                )
            else:
                _, seconds = timed(lambda: search(gallery, query, dtype, device), device)
            picked = search(gallery, query[sample], dtype, device)
        out[f"{name}_s"] = seconds
        out[f"{name}_tflops"] = flop / seconds / 1e12
        if reference is None:
            reference = picked
        else:
            out[f"{name}_identical_to_fp32_pct"] = 100 * (picked == reference).float().mean().item()
        print(f"  1-NN {name}: {seconds:.2f} s", flush=True)
    out["agreement_sample"] = len(sample)
    return out


def bench_linear(cfg: argparse.Namespace, device: torch.device, state: dict[str, Any]) -> dict[str, Any]:
    if "gallery" not in state:
        state["gallery"], state["train_y"] = synthetic_features(cfg.knn_size[0], cfg.knn_size[2], device, seed=1)
    x, y = state["gallery"], state["train_y"].cpu().numpy()
    train_linear_probe(x, y, CLASSES, epochs=1, device=device)  # warm-up
    (_, settings), seconds = timed(
        lambda: train_linear_probe(x, y, CLASSES, epochs=cfg.linear_epochs, device=device), device
    )
    return {
        "rows": len(y),
        "dim": x.shape[1],
        "epochs": cfg.linear_epochs,
        "batch_size": settings["batch_size"],
        "epochs_per_s": cfg.linear_epochs / seconds,
        "seconds": seconds,
    }


# ---- report ------------------------------------------------------------------


def machine(device: torch.device) -> dict[str, Any]:
    info = {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "device": str(device),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=props.total_memory / 2**30, cuda=torch.version.cuda)
    return info


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# bench/gpu.py — {report['machine'].get('gpu', report['machine']['device'])}", ""]
    lines += [f"`{json.dumps(report['machine'])}`", "", "| section | status | figures |", "|---|---|---|"]
    for name, section in report["sections"].items():
        figures = section.get("figures", {})
        flat = []
        for key, value in figures.items():
            if key == "sweep":
                flat += [
                    f"batch {r['batch']}: " + (_fmt(r["images_per_s"]) + " img/s" if "images_per_s" in r
                                               else r.get("error") or r.get("skipped", ""))
                    for r in value
                ]
            elif isinstance(value, dict):
                flat.append(f"{key}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in value.items()))
            else:
                flat.append(f"{key} {_fmt(value)}")
        status = section["status"] + (f" ({section['seconds']:.1f} s)" if "seconds" in section else "")
        detail = "; ".join(flat) or section.get("error", section.get("reason", ""))
        lines.append(f"| {name} | {status} | {detail} |")
    return "\n".join(lines) + "\n"


def write(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "results.md").write_text(markdown(report))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json and results.md")
    parser.add_argument("--tiny", action="store_true", help="CPU, tiny model and sizes: seconds (for the tests)")
    parser.add_argument("--device", help="default: cuda when available, else cpu")
    parser.add_argument("--budget-s", type=float, default=280.0, help="skip sections once this much time is spent")
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), help="default: all (--tiny: all but compile)")
    parser.add_argument("--tmp", help="folder for the PNGs and the feature file (default: system temp)")
    cfg = parser.parse_args(argv)
    if cfg.tiny:
        cfg.device = cfg.device or "cpu"
        torch.set_num_threads(1)  # tiny ops on a shared CPU: a second thread only waits (measured 4-10x slower)
    if cfg.sections is None:  # compiling on a CPU needs a C++ toolchain and minutes, DVT at paper size a minute
        cfg.sections = [name for name in SECTIONS if not (cfg.tiny and name in ("compile", "dvt"))]
    for key, value in SIZES["tiny" if cfg.tiny else "gpu"].items():
        setattr(cfg, key, value)
    return cfg


SECTIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "peak": lambda cfg, dev, results, state: bench_peak(cfg, dev),
    "vit": lambda cfg, dev, results, state: bench_vit(cfg, dev, results),
    "extraction": lambda cfg, dev, results, state: bench_extraction(cfg, dev),
    "knn": lambda cfg, dev, results, state: bench_knn(cfg, dev, state),
    "linear": lambda cfg, dev, results, state: bench_linear(cfg, dev, state),
    "dvt": lambda cfg, dev, results, state: dvt_bench.gpu_section(dev),
    "compile": lambda cfg, dev, results, state: bench_compile(cfg, dev, results),
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = parse_args(argv)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    report: dict[str, Any] = {"machine": machine(device), "tiny": cfg.tiny, "sections": {}}
    figures: dict[str, Any] = {}
    state: dict[str, Any] = {}
    start = time.monotonic()
    print(f"bench/gpu.py on {report['machine'].get('gpu', device)}; results -> {cfg.out}", flush=True)
    for name in cfg.sections:
        spent = time.monotonic() - start
        if spent > cfg.budget_s:
            report["sections"][name] = {"status": "skipped", "reason": f"budget of {cfg.budget_s:.0f} s spent"}
            write(report, cfg.out)
            continue
        print(f"[{spent:6.1f} s] {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            figures[name] = SECTIONS[name](cfg, device, figures, state)
            entry = {"status": "ok", "figures": figures[name]}
        except Exception as err:  # a benchmark section must not cost the others their one shot
            entry = {"status": "failed", "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
            print(entry["traceback"], file=sys.stderr, flush=True)
        entry["seconds"] = time.perf_counter() - t0
        report["sections"][name] = entry
        write(report, cfg.out)
        print(f"[{time.monotonic() - start:6.1f} s] {name}: {entry['status']} in {entry['seconds']:.1f} s", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report["total_s"] = time.monotonic() - start
    write(report, cfg.out)
    print(markdown(report), flush=True)
    return report


if __name__ == "__main__":
    main()
