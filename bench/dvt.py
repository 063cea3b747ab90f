"""DVT stage 1 at paper settings: seconds per tile fitted one at a time vs batched, and what stage 1 then costs.

``python bench/dvt.py [--quick] [--device cpu|cuda] [--config config.yaml] [--out DIR]``

Per tile, at the config's ``dvt.stage1`` settings (paper: 768 views + the full
tile, 2,048 tokens a step, 20k steps) and ViT-B's dims (C = 768, 14 x 14
patches of a 224 tile):

- ``views``: ViT-B/16 (random weights) on one batch of views, scaled to the
  tile's 769 views (the features every fit starts from);
- ``fit``: the package's own stage-1 call (``stage1.denoise_image``, and
  ``stage1.denoise_images`` for ``B`` tiles at once when that exists: the
  ``BATCHED`` hook) on real crop geometry, with a stand-in encoder (random
  tokens, so the ViT is timed once, above), run at two step counts ``s1 <
  s2``: time = fixed + steps x per-step, both solved from the two runs, so
  the view rendering and set-up are not counted as steps; extrapolated to
  the configured steps.

Tile seconds = views + fixed + steps x per-step (per tile: batched runs divide
by ``B``). Prints ``stage-1 tiles/hour: batched N vs one-at-a-time M (ratio R)``
per device, writes ``dvt.json`` to ``--out``. ``bench/gpu.py`` calls
:func:`bench` as its ``dvt`` section; ``bench/fullsize.py`` projects stage 1
from these figures (``fullsize_dvt.stage1_projection``). Quick mode: under 5
minutes of wall time on two quiet cores (about a minute of CPU time).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import yaml

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT / "src"))

from vitlocal.denoise import stage1  # noqa: E402
from vitlocal.denoise.settings import split_stage1_config  # noqa: E402
from vitlocal.models.extractor import build_extractor  # noqa: E402
from vitlocal.models.registry import resolve  # noqa: E402

#: ViT-B/16 at 224: width, patch grid, input size.
DIM, GRID, INPUT = 768, (14, 14), 224
#: The batched fit, ``denoise_images(tiles, encode, *, mean, std, input_size, grid, settings, seeds, device)``
#: (issue 20 §1), where stage1.py has it; else only the one-at-a-time path is timed.
BATCHED: Callable[..., Any] | None = getattr(stage1, "denoise_images", None)
#: Sizes per mode: step counts (s1, s2), tiles per batched call, views per ViT batch.
SIZES = {
    ("cpu", True): {"steps": (2, 6), "tiles": 2, "view_batch": 4},
    ("cpu", False): {"steps": (10, 40), "tiles": 4, "view_batch": 16},
    ("cuda", True): {"steps": (20, 120), "tiles": 8, "view_batch": 256},
    ("cuda", False): {"steps": (50, 400), "tiles": 16, "view_batch": 256},
}


def paper_settings(config: Path = PROJECT / "config.yaml") -> stage1.Stage1Settings:
    """The fit's settings of ``config``'s ``dvt.stage1`` (schema defaults for keys it leaves out)."""
    section = yaml.safe_load(config.read_text()).get("dvt", {}).get("stage1", {})
    return split_stage1_config(section)[0]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def views_seconds(settings: stage1.Stage1Settings, device: torch.device, batch: int) -> float:
    """ViT-B/16 forward (last block, random weights) of one tile's ``views + 1`` views, from one timed batch."""
    spec = resolve("dino", {"weights": "random"})
    extractor = build_extractor(spec, "unused", device)
    x = torch.randn(batch, 3, INPUT, INPUT, device=device)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        extractor.forward_layers(x[:2], [spec.depth])  # warm-up
        seconds = _timed(lambda: extractor.forward_layers(x, [spec.depth]), device)
    return seconds / batch * (settings.views + 1)


def stand_in_encoder(seed: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """Random last-layer tokens of ViT-B's shape for any batch of views (the ViT is timed apart)."""
    gen = torch.Generator().manual_seed(seed)
    return lambda x: torch.randn(x.shape[0], GRID[0] * GRID[1], DIM, generator=gen).to(x.device)


def _tiles(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(INPUT, INPUT, 3), dtype=np.uint8) for _ in range(n)]


def fit_line(steps: Sequence[int], seconds: Sequence[float]) -> tuple[float, float]:
    """``(fixed, per_step)`` of ``seconds = fixed + steps x per_step`` through the two runs (fixed >= 0)."""
    (s1, s2), (t1, t2) = steps, seconds
    per_step = max(0.0, (t2 - t1) / (s2 - s1))
    return max(0.0, t1 - s1 * per_step), per_step


def time_fit(settings: stage1.Stage1Settings, device: torch.device, steps: Sequence[int], tiles: int,
             batched: Callable[..., Any] | None) -> dict[str, float]:
    """Fixed and per-step seconds *per tile* of ``tiles`` tiles (batched: one call; else one call per tile)."""
    common = dict(encode=stand_in_encoder(), mean=(0.5,) * 3, std=(0.25,) * 3, input_size=INPUT, grid=GRID,
                  device=device)
    images = _tiles(tiles)
    seconds = []
    for n in steps:
        short = dataclasses.replace(settings, steps=int(n))
        def run(short: stage1.Stage1Settings = short) -> Any:
            if batched is None:
                return [stage1.denoise_image(t, seed=i, settings=short, **common) for i, t in enumerate(images)]
            return batched(images, seeds=list(range(tiles)), settings=short, **common)

        seconds.append(_timed(run, device) / tiles)
    fixed, per_step = fit_line(steps, seconds)
    return {"fixed_s": fixed, "step_s": per_step, "tiles": tiles, "steps_timed": list(steps),
            "seconds_timed": seconds}


def bench(device: torch.device | str, *, quick: bool = True, settings: stage1.Stage1Settings | None = None,
          sizes: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Per-tile seconds one at a time and batched (when :data:`BATCHED` exists) on ``device``: JSON-able figures."""
    device = torch.device(device)
    settings = settings or paper_settings()
    size = dict(sizes or SIZES[(device.type, quick)])
    load = os.getloadavg()[0]
    views = views_seconds(settings, device, size["view_batch"])
    single = time_fit(settings, device, size["steps"], 1, None)
    out: dict[str, Any] = {
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"cpu ({torch.get_num_threads()} threads)"),
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(settings).items()},
        "dims": {"C": DIM, "grid": list(GRID), "input": INPUT}, "views_s_per_tile": views,
        "one_at_a_time": {**single, "tile_s": views + single["fixed_s"] + settings.steps * single["step_s"]},
    }
    if BATCHED is None:
        out["batched"] = {"status": "not timed: vitlocal.denoise.stage1 has no denoise_images (bench/dvt.py BATCHED)"}
    else:
        many = time_fit(settings, device, size["steps"], size["tiles"], BATCHED)
        out["batched"] = {**many, "tile_s": views + many["fixed_s"] + settings.steps * many["step_s"]}
    per_hour = {k: 3600 / v["tile_s"] for k, v in out.items() if isinstance(v, dict) and "tile_s" in v}
    out["tiles_per_hour"] = per_hour
    out["ratio"] = per_hour["batched"] / per_hour["one_at_a_time"] if "batched" in per_hour else None
    out["load"] = [load, os.getloadavg()[0]]  # 1-min load average before / after: wall times on a shared machine
    return out


def gpu_section(device: torch.device) -> dict[str, Any]:
    """bench/gpu.py's ``dvt`` section: quick mode on ``device``, its summary line printed."""
    figures = bench(device, quick=True)
    print(summary_line(figures), flush=True)
    return figures


def summary_line(figures: Mapping[str, Any]) -> str:
    """``stage-1 tiles/hour: batched N vs one-at-a-time M (ratio R)`` (``n/a`` where not timed)."""
    rate = figures["tiles_per_hour"]
    batched = f"{rate['batched']:.3g}" if "batched" in rate else "n/a"
    ratio = f"{figures['ratio']:.2f}" if figures.get("ratio") is not None else "n/a"
    return (f"stage-1 tiles/hour: batched {batched} vs one-at-a-time {rate['one_at_a_time']:.3g} (ratio {ratio})"
            f" on {figures['device']}, load average {figures['load'][0]:.1f} -> {figures['load'][1]:.1f}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer steps and tiles: under 5 minutes on a CPU")
    parser.add_argument("--device", action="append", help="cpu, cuda (repeatable; default: cpu, and cuda if present)")
    parser.add_argument("--config", type=Path, default=PROJECT / "config.yaml", help="its dvt.stage1 settings")
    parser.add_argument("--out", type=Path, help="folder for dvt.json")
    args = parser.parse_args(argv)
    devices = args.device or ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    settings = paper_settings(args.config)
    report: dict[str, Any] = {"config": str(args.config), "quick": args.quick, "devices": {}}
    for name in devices:
        start = time.monotonic()
        figures = bench(name, quick=args.quick, settings=settings)
        figures["bench_s"] = time.monotonic() - start
        report["devices"][name] = figures
        print(summary_line(figures), flush=True)
        print(f"  per tile: views {figures['views_s_per_tile']:.1f} s + fit "
              f"{figures['one_at_a_time']['fixed_s']:.1f} s + {settings.steps} x "
              f"{figures['one_at_a_time']['step_s'] * 1e3:.1f} ms = {figures['one_at_a_time']['tile_s'] / 60:.1f} min "
              f"one at a time ({figures['bench_s']:.0f} s to measure)", flush=True)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "dvt.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
