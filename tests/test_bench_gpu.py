"""bench/gpu.py gets one shot on a lent GPU: its --tiny run must work here, on CPU, every section."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def test_gpu_bench_tiny_runs_every_section(tmp_path):
    out = tmp_path / "gpu"
    done = subprocess.run(
        [sys.executable, str(PROJECT / "bench" / "gpu.py"), "--tiny", "--out", str(out)],
        cwd=PROJECT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    sections = report["sections"]
    assert list(sections) == ["peak", "vit", "extraction", "knn", "linear"]
    failed = {name: s.get("error") for name, s in sections.items() if s["status"] != "ok"}
    assert not failed, failed
    assert sections["vit"]["figures"]["best_eager"]["images_per_s"] > 0
    assert 0 < sections["extraction"]["figures"]["end_to_end_over_model_only"]
    assert 0 <= sections["knn"]["figures"]["bf16_identical_to_fp32_pct"] <= 100
    assert sections["linear"]["figures"]["epochs_per_s"] > 0
    table = (out / "results.md").read_text()
    assert all(f"| {name} | ok" in table for name in sections)


def test_gpu_bench_records_a_failing_section_and_goes_on(tmp_path, monkeypatch):
    """A section that raises is written down with its error; the later ones still run."""
    monkeypatch.syspath_prepend(str(PROJECT / "bench"))
    gpu = importlib.import_module("gpu")

    def boom(*args):
        raise RuntimeError("boom")

    monkeypatch.setitem(gpu.SECTIONS, "peak", boom)
    gpu.main(["--tiny", "--out", str(tmp_path), "--sections", "peak", "linear"])
    sections = json.loads((tmp_path / "results.json").read_text())["sections"]
    assert sections["peak"]["status"] == "failed" and "boom" in sections["peak"]["error"]
    assert sections["linear"]["status"] == "ok"
