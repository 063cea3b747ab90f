"""bench/fullsize.py: the work it counts on the paper config, and its projection arithmetic (no model run)."""

from __future__ import annotations

from collections import defaultdict

import pytest
import yaml
from conftest import PROJECT, bench_module


@pytest.fixture(scope="module")
def fullsize():
    return bench_module("fullsize")


@pytest.fixture(scope="module")
def work(fullsize):
    return fullsize.Work(yaml.safe_load((PROJECT / "config.yaml").read_text()))


def test_cityscapes_sizes_match_the_paper(work):
    main = work.shape(work.layout.feature_file("cityscapes", "set4", "dino"))
    val = work.shape(work.layout.feature_file("cityscapes", "val", "dino"))
    assert (main.images, main.tiles_per_image, main.patches_per_tile) == (72, 32, 196)
    assert (main.images * main.tiles_per_image, val.images * val.tiles_per_image) == (2304, 960)
    assert (main.rows, val.rows) == (451_584, 188_160)
    assert work.images("cityscapes", "set8") == 144  # 142 distinct images, repeats kept as trained
    full = work.shape(work.layout.feature_file("cityscapes", "val", "dino", "full"))
    assert (full.tiles_per_image, full.patches_per_tile) == (1, 64 * 128)
    assert work.shape(work.layout.feature_file("cityscapes", "val", "dinov2")).patches_per_tile == 256


def test_fig2_files_store_every_layer(work):
    shape = work.shape
    assert work.stored_layers(shape(work.layout.feature_file("cityscapes", "val", "dino"))) == list(range(1, 13))
    assert work.stored_layers(shape(work.layout.feature_file("cityscapes", "set2", "dino"))) == [12]
    assert work.stored_layers(shape(work.layout.feature_file("cityscapes", "val", "dino", "blur-2"))) == [12]


def test_subset_sizes(work):
    assert (work.images("ade20k", "train"), work.images("ade20k", "val")) == (600, 300)
    assert work.images("fair1m", "train") == 295
    assert work.images("bdd100k", "val") == 4 * 200


def test_layerwise_knn_flops_per_layer(fullsize, work):
    units = defaultdict(float)
    fullsize.PLANNERS["layerwise"](work, fullsize.EXPERIMENTS["layerwise"].inputs(work.layout, "dino"), "dino", units)
    assert units["knn_gflop"] == pytest.approx(12 * 2 * 451_584 * 188_160 * 768 / 1e9)
    assert "linear_100k_epochs" not in units  # Fig 2 is k-NN only


def test_degradation_counts_one_linear_fit_and_thirteen_searches(fullsize, work):
    units = defaultdict(float)
    inputs = fullsize.EXPERIMENTS["degradation"].inputs(work.layout, "dino")
    fullsize.PLANNERS["degradation"](work, inputs, "dino", units)
    assert units["knn_gflop"] == pytest.approx(13 * 2 * 451_584 * 188_160 * 768 / 1e9)
    assert units["linear_100k_epochs"] == pytest.approx(451_584 * 100 / 1e5)


def test_every_experiment_has_a_planner_or_is_cheap(fullsize, work):
    cheap = {"feature_variance", "r2", "top_dims_overlap"}
    assert {e for e, _ in work.jobs} - cheap <= set(fullsize.PLANNERS)


def test_whole_study_counts_more_than_one_model(work):
    one, study = work.count({"dino"}), work.count(work.models())
    assert set(one) <= set(study)
    assert all(study[k] >= one[k] for k in one)
    assert study["dvt_stage1_tiles"] == 5 * 2 * 500  # 5 DVT models x (cityscapes, ade20k) x 500 tiles
    assert study["dvt_stage2_tile_steps"] == 5 * 40_000 * 32


def test_projection_arithmetic(fullsize):
    units = {"extract_tiles": 1000.0, "knn_gflop": 5e4, "dvt_stage1_tiles": 2.0}
    costs = {"forward_tile_s": 0.5, "knn_s_per_gflop": 0.01, "dvt_stage1_s_per_tile": 30.0}
    seconds = fullsize.project(units, costs)
    assert seconds == {"extract_tiles": 500.0, "knn_gflop": 500.0, "dvt_stage1_tiles": 60.0}
    host = fullsize.host_seconds({"decode_mp": 400.0, "write_gb": 50.0},
                                 {"decode_s_per_mp": 1.0, "write_s_per_gb": 2.0}, workers=4)
    assert host == {"decode_mp": 100.0, "write_gb": 100.0}
    assert fullsize.gpu_total(seconds, host) == 1060.0  # the host's work hides behind the forward
    assert fullsize.gpu_total(seconds, {"decode_mp": 900.0, "write_gb": 10.0}) == 1460.0  # ... unless slower
    assert fullsize.dominant(seconds) in {"extract_tiles", "knn_gflop"}


def test_vit_flops_match_the_roofline_figure(fullsize):
    assert fullsize.BASE_TILE_GFLOP == pytest.approx(35.2, rel=0.03)  # bench/gpu.py's 17.6 GMAC x 2


def test_gpu_costs_from_a_results_json(fullsize):
    results = {"sections": {
        "vit": {"status": "ok", "figures": {"best_eager": {"batch": 512, "images_per_s": 2000.0}}},
        "knn": {"status": "ok", "figures": {"fp32_tflops": 40.0}},
        "linear": {"status": "ok", "figures": {"epochs_per_s": 4.0, "rows": 400_000}},
    }}
    costs, sources = fullsize.gpu_costs(results, gaps=30, stage1=(30.6, "paper"))
    assert costs["forward_tile_s"] == pytest.approx(1 / 2000)
    assert costs["knn_s_per_gflop"] == pytest.approx(1 / 40e3)
    assert costs["linear_s_per_100k_epoch"] == pytest.approx(1 / 4 / 4)
    assert sources["forward_tile_s"].startswith("measured")
    estimated, sources = fullsize.gpu_costs(None, gaps=30, stage1=(30.6, "paper"))
    assert estimated["knn_s_per_gflop"] == pytest.approx(1 / (66.9e3 * fullsize.EFFICIENCY["fp32"]))
    assert "not measured" in sources["knn_s_per_gflop"]


@pytest.mark.parametrize("card_dvt", [False, True])
def test_card_projection_scales_the_measured_parts_and_counts_its_searches(fullsize, card_dvt):
    """The card line: CPU parts at the ViT-B reference for dino, scaled by rows (and width^2 for the ridge) for
    DINOv2's 16 x 16 patches; GPU parts: the k-NN searches (raw, each top-m removal, BatchNorm; for each m the
    held-out quarter of the train images against the rest; with card.dvt, DVT's files for a model of dvt.models)
    and the linear probes (raw, best m, BatchNorm; DVT's), from the card's protocol (studies/card/compute.py)."""
    card = bench_module("fullsize_card")
    config = yaml.safe_load((PROJECT / "config.yaml").read_text())
    assert config["card"]["dvt"] is False  # config.yaml: no card needs DVT unless asked
    config["card"]["dvt"] = card_dvt
    work = fullsize.Work(config)
    measured = {"dim": 768, "reference_s": {part: 1.0 for part in card.CPU_PARTS}}
    gpu = {"knn_s_per_gflop": 1e-3, "linear_s_per_100k_epoch": 0.5, "dvt_denoise_s_per_tile": 0.01}
    out = card.project(work, measured, gpu)
    dino, dinov2 = out["dino"], out["dinov2"]
    assert dino["cpu_s"] == {part: pytest.approx(1.0) for part in card.CPU_PARTS}
    removed = [m for m in config["variance"]["removed_dims"] if 0 <= m < 768]
    train, val = 451_584, 188_160
    val_dims = 768 + sum(768 - m for m in removed if m > 0) + 768 + 768 * card_dvt  # raw, top-m, BatchNorm, DVT
    held_out = sum(2 * round(0.75 * train) * round(0.25 * train) * (768 - m) for m in sorted(set(removed)))
    assert "dino" in config["dvt"]["models"]
    assert dino["units"]["knn_gflop"] == pytest.approx((2 * train * val * val_dims + held_out) / 1e9)
    probes = 4 if card_dvt else 3  # raw, best m, BatchNorm (, DVT)
    assert dino["gpu_s"]["linear"] == pytest.approx(probes * train * 100 / 1e5 * 0.5)
    assert dino["gpu_s"].get("dvt_denoise", 0) == pytest.approx(30 * 32 * 0.01 * card_dvt)  # 30 val images x 32 tiles
    assert dinov2["cpu_s"]["ridge"] == pytest.approx(256 / 196) and dinov2["cpu_s"]["bootstrap"] == 1.0
    assert dino["total_s"] == pytest.approx(len(card.CPU_PARTS) + sum(dino["gpu_s"].values()))
