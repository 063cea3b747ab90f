"""bench/dvt.py and bench/fullsize_dvt.py: extrapolation and stage-1 projection arithmetic by hand, one tiny run."""

from __future__ import annotations

import pytest
import yaml
from conftest import PROJECT, bench_module

from vitlocal.denoise.stage1 import Stage1Settings


@pytest.fixture(scope="module")
def dvt():
    return bench_module("dvt")


@pytest.fixture(scope="module")
def fullsize_dvt():
    return bench_module("fullsize_dvt")


def test_fit_line_separates_setup_from_steps(dvt):
    assert dvt.fit_line((10, 40), (7.0, 16.0)) == pytest.approx((4.0, 0.3))  # 4 s + 0.3 s a step


def test_projection_of_the_paper_preset_at_30_s_a_tile(fullsize_dvt):
    """5 models x 1,000 tiles at 30 s: 41.7 h of fitting (the old figure); 50 shards of 100 tiles."""
    row = fullsize_dvt.stage1_projection(30.0, tiles_per_model=1000, models=5, tiles_per_job=100)
    assert row["fit_hours"] == pytest.approx(5000 * 30 / 3600)  # 41.67 h
    assert row["shards"] == 50
    assert row["device_hours"] == pytest.approx(50 * (60 + 3000) / 3600)
    assert row["wall_hours"][1] == pytest.approx(row["device_hours"])
    assert row["wall_hours"][8] == pytest.approx(7 * 3060 / 3600)  # 50 shards on 8 devices: 7 rounds
    uneven = fullsize_dvt.stage1_projection(10.0, tiles_per_model=250, models=1, tiles_per_job=100)
    assert uneven["shards"] == 3 and uneven["wall_hours"][8] == pytest.approx((60 + 1000) / 3600)


def test_fullsize_section_uses_measured_figures(fullsize_dvt):
    config = yaml.safe_load((PROJECT / "config.yaml").read_text())
    cpu = {"device": "cpu", "one_at_a_time": {"tile_s": 7200.0}, "batched": {"tile_s": 1800.0}}
    gpu = {"device": "H100", "one_at_a_time": {"tile_s": 12.0}}
    data = fullsize_dvt.fullsize_stage1(config, {"sections": {"dvt": {"status": "ok", "figures": gpu}}},
                               {"devices": {"cpu": cpu}})
    rows = list(data["rows"].values())
    assert [r["tile_s"] for r in rows] == [30.0, 1800.0, 12.0]  # paper figure, CPU (batched: faster), GPU
    assert rows[0]["fit_hours"] == pytest.approx(41.67, abs=0.01)
    text = "\n".join(fullsize_dvt.fullsize_lines(data))
    assert "| 50 |" in text and "bench/gpu.py dvt section, one_at_a_time, H100" in text
    # The main tables' per-tile cost is the same projection: device-hours (start-up included) over the tiles.
    costs = fullsize_dvt.stage1_tile_costs(data)
    assert costs["cpu"][0] == pytest.approx(rows[1]["device_hours"] * 3600 / 5000)
    assert costs["gpu"][0] == pytest.approx((60 + 100 * 12.0) / 100) and "H100" in costs["gpu"][1]


def test_main_tables_default_to_the_papers_30_s_with_shard_start_up(fullsize_dvt):
    config = yaml.safe_load((PROJECT / "config.yaml").read_text())
    costs = fullsize_dvt.stage1_tile_costs(fullsize_dvt.fullsize_stage1(config, None, None))
    assert costs["gpu"][0] == pytest.approx(30.0 + 60 / 100)  # 50 shards x (60 s + 100 x 30 s) / 5,000 tiles
    assert costs["cpu"][0] == pytest.approx(7200.0 + 60 / 100)


def test_tiny_run_reports_both_paths_and_the_ratio_line(dvt, monkeypatch):
    settings = Stage1Settings(views=4, steps=100, tokens_per_step=32, levels=2, features_per_level=2,
                              base_resolution=2, max_resolution=4, batch_size=4)
    monkeypatch.setattr(dvt, "views_seconds", lambda settings, device, batch: 1.0)
    figures = dvt.bench("cpu", settings=settings, sizes={"steps": (1, 3), "tiles": 2, "view_batch": 2})
    one = figures["one_at_a_time"]
    assert one["tile_s"] == pytest.approx(1.0 + one["fixed_s"] + 100 * one["step_s"]) and one["step_s"] >= 0
    line = dvt.summary_line(figures)
    if dvt.BATCHED is None:
        assert "not timed" in figures["batched"]["status"]
        assert line.startswith("stage-1 tiles/hour: batched n/a vs one-at-a-time ") and "(ratio n/a)" in line
    else:
        assert figures["ratio"] > 0 and line.startswith("stage-1 tiles/hour: batched ")
