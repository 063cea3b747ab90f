"""What regenerating the whole paper preset costs: work counted from the config, per-unit costs measured here.

``python bench/fullsize.py [--config config.yaml] [--quick] [--gpu-json R] [--dvt-json D] [--out DIR]``

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
   block); a linear-probe epoch; the card's own diagnostics part by part
   (``fullsize_card.py``). Tracking and DVT stage 1 are too slow to measure
   here: their figures come from ``bench/RESULTS.md`` (stage 1: from
   ``--dvt-json`` / ``--gpu-json`` where given).
3. **Peak RSS of every stage at full size**, each in a fresh process at n and
   2n images: extraction (``vitlocal.features`` pipeline, synthetic full-size
   Cityscapes in the official layout), the 1-NN and the linear probe (on the
   main train set's row count and half of it) and DVT denoising of the
   extracted files.
4. **Projection**: units x per-unit cost = hours, on this CPU and on one GPU
   (per-unit GPU costs from ``bench/gpu.py``'s ``results.json`` when given,
   else the H100 datasheet at ``EFFICIENCY``: an estimate, not a measurement).

Parts: ``fullsize_work.py`` (1), ``fullsize_costs.py`` (2), ``fullsize_memory.py``
(3), ``fullsize_dvt.py`` (everything DVT), ``fullsize_card.py`` (the card's own
diagnostics: a ``card`` line per model, its cost beyond the experiments it
reads on one H100), this file (4, the report, ``main``).

Prints the markdown report; ``--out DIR`` also writes ``projection.json`` and
``projection.md``. About 8 minutes on 2 quiet cores (``--quick``: smaller
measurements, about 4 minutes; the card's part ~2 min / ~30 s of it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_machine  # noqa: E402
from fullsize_costs import (  # noqa: E402,F401  (EFFICIENCY: re-exported for tests/test_bench_fullsize.py)
    EFFICIENCY, GOAL_GPU_S, REFERENCE_GPU, cpu_costs, gpu_costs, measure_decode, measure_forward, measure_knn,
    measure_linear, measure_write, synthetic_patches, write_cityscapes,
)
import fullsize_card  # noqa: E402  (the card's own diagnostics: per-part CPU cost, projected)
from fullsize_dvt import fullsize_lines, fullsize_stage1, stage1_tile_costs  # noqa: E402
from fullsize_memory import extrapolate, memory_table  # noqa: E402
from fullsize_work import (  # noqa: E402,F401  (re-exported: the tests count work through this module)
    BASE_TILE_GFLOP, EXPERIMENTS, PLANNERS, PROJECT, STAGES, TRACK_VIDEO_CPU_S, Work,
)

from vitlocal.features.sources import FULL  # noqa: E402


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


def _load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def assemble(work: Work, model: str, measured: Mapping[str, Any], memory: list, gpu_json: Mapping | None,
             config_name: str, dvt_json: Mapping | None = None) -> dict[str, Any]:
    """Everything the report shows, as one JSON-able dict (DVT stage 1's tables and lines: one projection)."""
    scopes = {f"one model ({model})": {model}, "whole study": work.models()}
    units = {name: work.count(models) for name, models in scopes.items()}
    stage1 = fullsize_stage1(work.config, gpu_json, dvt_json)
    stage1_costs = stage1_tile_costs(stage1)
    cpu = cpu_costs(measured, stage1_costs["cpu"][0])
    gpu, sources = gpu_costs(gpu_json, len(work.config["tracking"]["gaps"]), stage1_costs["gpu"])
    workers = work.config["extraction"]["num_workers"]
    host = {s: host_seconds(u, cpu, workers) for s, u in units.items()}
    no_dvt = {s: {k: v for k, v in u.items() if not k.startswith("dvt_stage")} for s, u in units.items()}
    gpu_secs = project(units["whole study"], gpu)
    no_dvt_secs = project(no_dvt["whole study"], gpu)
    shapes = {p: work.shape(p) for p in work.feature_files({model}) if p.endswith(".parquet")}
    return {
        "config": config_name, "machine": cpu_machine(), "measured": dict(measured), "units": units,
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
        "memory": memory, "largest": dict(work.largest), "dvt_stage1": stage1,
        "card": fullsize_card.project(work, measured["card"], gpu) if "card" in measured else {},
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
    card = fullsize_card.time_parts(tmp / "card", quick, list(work.config["variance"]["removed_dims"]))
    return {"card": card, "forward_batch": batch, "forward_tile_s": forward, "decode_s": decode, "knn_queries": n_query,
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
    dvt_json = json.loads(args.dvt_json.read_text()) if args.dvt_json else None
    data = assemble(work, args.model, measured, memory, gpu_json, str(args.config.name), dvt_json)
    data.update(load_before=load_before, load_after=_load(), bench_s=time.monotonic() - start)
    card = fullsize_card.card_lines(data["card"], measured["card"], data["gpu_sources"]["knn_s_per_gflop"])
    text = "\n".join([report(data), *fullsize_lines(data["dvt_stage1"]), *card])
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "projection.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
        (args.out / "projection.md").write_text(text + "\n")
    return data


if __name__ == "__main__":
    main()
