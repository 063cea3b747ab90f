"""DVT wiring: the dvt variant file, tile selection, the registry entries, table_dvt and fig_dvt."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from vitlocal.denoise import pipeline as dvt_pipeline
from vitlocal.denoise.pipeline import denoise_feature_file
from vitlocal.denoise.shards import select_tiles
from vitlocal.denoise.stage2 import Denoiser
from vitlocal.errors import ConfigError
from vitlocal.features.store import FeatureWriter, read_attrs, read_features
from vitlocal.layout import Layout
from vitlocal.studies import EXPERIMENTS, OUTPUTS, STUDY_OF
from vitlocal.studies.dvt.figures import fig_dvt, table_dvt_data

ATTRS = {"model": "dino", "arch": "vit", "weights": "random(seed=2)", "variant": "clean", "dataset": "cityscapes",
         "split": "val", "preset": "demo", "patch_labels": "nearest_exact", "seed": 0, "grid": [2, 3],
         "layers": [6, 12], "data_source": "synthetic"}


def _write_clean(path, n_tiles=3, dim=64, shuffle=False, rows_per_group=None):
    rng = np.random.default_rng(0)
    rows = [(t, r, c) for t in range(n_tiles) for r in range(2) for c in range(3)]
    meta = pd.DataFrame(rows, columns=["tile_id", "patch_row", "patch_col"])
    meta.insert(0, "sample_id", "img0")
    meta["label"] = np.arange(len(meta), dtype=np.uint8) % 4
    meta["image_h"], meta["image_w"] = 96, 144
    if shuffle:
        meta = meta.iloc[::-1].reset_index(drop=True)
    x = rng.normal(size=(len(meta), dim)).astype(np.float32)
    group_mb = {} if rows_per_group is None else {"row_group_mb": rows_per_group * 2 * dim * 4 / 2**20}
    with FeatureWriter(path, ATTRS, dtype="float32", **group_mb) as writer:
        writer.write(meta, {6: x * 0, 12: x})
    return x


def test_dvt_variant_applies_the_denoiser_tile_by_tile(tmp_path):
    x = _write_clean(tmp_path / "clean.parquet")
    torch.manual_seed(0)
    model = Denoiser(64, (2, 3)).eval()
    n = denoise_feature_file(tmp_path / "clean.parquet", model, tmp_path / "dvt.parquet",
                             checkpoint={"sha256": "ab" * 32}, device="cpu", dtype="float32")
    assert n == 18
    meta, layers = read_features(tmp_path / "dvt.parquet")
    assert list(layers) == [12]
    with torch.no_grad():
        expected = model(torch.from_numpy(x).reshape(3, 2, 3, 64)).reshape(18, 64).numpy()
    np.testing.assert_allclose(layers[12], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(meta["label"], np.arange(18) % 4)
    attrs = read_attrs(tmp_path / "dvt.parquet")
    assert attrs["variant"] == "dvt" and attrs["raw_variant"] == "clean" and attrs["denoiser"]["sha256"] == "ab" * 32
    assert attrs["weights"] == ATTRS["weights"] and attrs["data_source"] == "synthetic"


@pytest.mark.parametrize("tiles_per_call", [64, 2])
def test_dvt_variant_streams_row_groups_and_joins_tiles_cut_between_them(tmp_path, monkeypatch, tiles_per_call):
    monkeypatch.setattr(dvt_pipeline, "DENOISE_TILES", tiles_per_call)  # 2: groups also split into calls
    x = _write_clean(tmp_path / "clean.parquet", n_tiles=5, rows_per_group=7)  # 6 patches a tile: every group cuts one
    assert pq.ParquetFile(tmp_path / "clean.parquet").metadata.num_row_groups == 5
    torch.manual_seed(0)
    model = Denoiser(64, (2, 3)).eval()
    n = denoise_feature_file(tmp_path / "clean.parquet", model, tmp_path / "dvt.parquet", device="cpu", dtype="float32")
    assert n == 30
    meta, layers = read_features(tmp_path / "dvt.parquet")
    with torch.no_grad():
        expected = model(torch.from_numpy(x).reshape(5, 2, 3, 64)).reshape(30, 64).numpy()
    np.testing.assert_allclose(layers[12], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(meta[["tile_id", "patch_row", "patch_col"]].to_numpy(),
                                  [(t, r, c) for t in range(5) for r in range(2) for c in range(3)])


def test_dvt_variant_refuses_an_unfinished_tile_and_leaves_no_file(tmp_path):
    rows = [(t, r, c) for t in range(2) for r in range(2) for c in range(3)][:-1]
    meta = pd.DataFrame(rows, columns=["tile_id", "patch_row", "patch_col"])
    meta.insert(0, "sample_id", "img0")
    meta["label"], meta["image_h"], meta["image_w"] = 0, 96, 144
    with FeatureWriter(tmp_path / "clean.parquet", ATTRS, dtype="float32") as writer:
        writer.write(meta, {12: np.zeros((11, 64), np.float32)})
    with pytest.raises(ConfigError, match="5 patches after the last whole tile"):
        denoise_feature_file(tmp_path / "clean.parquet", Denoiser(64, (2, 3)), tmp_path / "dvt.parquet", device="cpu")
    assert not list(tmp_path.glob("dvt.parquet*"))


def test_dvt_variant_refuses_patches_out_of_grid_order(tmp_path):
    _write_clean(tmp_path / "clean.parquet", shuffle=True)
    with pytest.raises(ConfigError, match="row-major"):
        denoise_feature_file(tmp_path / "clean.parquet", Denoiser(64, (2, 3)), tmp_path / "dvt.parquet", device="cpu")


def test_select_tiles_is_seeded_distinct_and_bounded():
    picks = select_tiles(10, 6, 7, seed=3)
    assert picks == select_tiles(10, 6, 7, seed=3) and len(set(picks)) == 7 and picks == sorted(picks)
    assert all(0 <= i < 10 and 0 <= t < 6 for i, t in picks)
    assert select_tiles(2, 3, None, seed=0) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert len(select_tiles(2, 3, 100, seed=0)) == 6


def test_registry_reads_raw_and_dvt_files():
    assert STUDY_OF["table_dvt"] == STUDY_OF["fig_dvt"] == STUDY_OF["dvt_cityscapes"] == "dvt"
    config = {"subsets": {"cityscapes": {"main_train_set": "set4"}}, "datasets": {"cityscapes": {}},
              "degradations": {"blur_kernels": [2], "noise_sigmas": [], "frequency_bands": []},
              "dvt": {"models": ["dino", "deit3"]}, "study_models": []}
    layout = Layout(config, "results/x")
    inputs = EXPERIMENTS["dvt_cityscapes"].inputs(layout, "deit3")
    assert inputs["dvt"]["val"] == "results/x/features/cityscapes/val/deit3/dvt.parquet"
    assert inputs["raw"]["train"] == "results/x/features/cityscapes/set4/deit3/clean.parquet"
    assert OUTPUTS["table_dvt"].jobs(layout) == [("dvt_cityscapes", "dino"), ("dvt_cityscapes", "deit3"),
                                                 ("dvt_robustness", "dino"), ("dvt_robustness", "deit3")]


def test_every_task_reads_the_denoised_counterpart_of_its_raw_files():
    config = {"subsets": {"cityscapes": {"main_train_set": "set4"}, "fair1m": {"split": "train"},
                          "bdd100k": {"split": "val"}},
              "datasets": {d: {} for d in ("cityscapes", "ade20k", "fair1m", "bdd100k")},
              "degradations": {"blur_kernels": [2], "noise_sigmas": [], "frequency_bands": []},
              "transforms": {"shifts": [], "rotations": [5], "scales": []},
              "dvt": {"models": ["dino"]}, "study_models": []}
    layout = Layout(config, "r")
    assert {e for e, _ in OUTPUTS["table_dvt"].jobs(layout)} == {
        "dvt_cityscapes", "dvt_ade20k", "dvt_robustness", "dvt_retrieval", "dvt_tracking"}
    rob = EXPERIMENTS["dvt_robustness"].inputs(layout, "dino")
    assert rob["dvt"]["val_variants"] == {"clean": "r/features/cityscapes/val/dino/dvt.parquet",
                                          "blur-2": "r/features/cityscapes/val/dino/dvt-blur-2.parquet"}
    assert rob["raw"]["val_variants"]["blur-2"] == "r/features/cityscapes/val/dino/blur-2.parquet"
    ret = EXPERIMENTS["dvt_retrieval"].inputs(layout, "dino")
    assert ret["dvt"]["queries"] == {"rotate-5": "r/features/fair1m/train/dino/dvt-rotate-5.parquet",
                                     "blur-2": "r/features/fair1m/train/dino/dvt-blur-2.parquet"}
    assert ret["manifest"] == "r/subsets/fair1m/train.csv"
    tra = EXPERIMENTS["dvt_tracking"].inputs(layout, "dino")
    assert tra == {"raw": "r/features/bdd100k/val/dino/clean.parquet",
                   "dvt": "r/features/bdd100k/val/dino/dvt.parquet", "manifest": "r/subsets/bdd100k/val.csv"}
    ade = EXPERIMENTS["dvt_ade20k"].inputs(layout, "dino")
    assert ade["dvt"] == {"train": "r/features/ade20k/train/dino/dvt.parquet",
                          "val": "r/features/ade20k/val/dino/dvt.parquet"}


def _tidy(experiment, level, value, *, probe="knn", cls="mean", metric="miou", model="dino"):
    return {"experiment": experiment, "dataset": "x", "model": model, "probe": probe, "layer": 12, "level": level,
            "class": cls, "metric": metric, "value": value, "preset": "paper", "weights": "timm:x",
            "knn_metric": "dot", "patch_labels": "nearest_exact", "data": "official"}


def test_table_dvt_sums_up_each_task_as_its_study_reads_it():
    rows = [
        # Fig 3: the clean level (-0) is not averaged in; blur levels 2 and 8 are.
        _tidy("dvt_robustness", "raw:blur-0", 0.9), _tidy("dvt_robustness", "dvt:blur-0", 0.9),
        _tidy("dvt_robustness", "raw:blur-2", 0.4), _tidy("dvt_robustness", "raw:blur-8", 0.2),
        _tidy("dvt_robustness", "dvt:blur-2", 0.5), _tidy("dvt_robustness", "dvt:blur-8", 0.4),
        # Fig 6: same-patch share, transforms and degradations apart; other categories ignored.
        *(_tidy("dvt_retrieval", f"{side}:{v}", x, probe="none", cls="same_patch", metric="share")
          for side, v, x in (("raw", "rotate-5", 0.6), ("raw", "shift-8", 0.8), ("raw", "noise-10", 0.3),
                             ("dvt", "rotate-5", 0.7), ("dvt", "shift-8", 0.9), ("dvt", "noise-10", 0.2))),
        _tidy("dvt_retrieval", "raw:rotate-5", 0.1, probe="none", cls="background", metric="share"),
        _tidy("dvt_retrieval", "dvt:rotate-5", 0.1, probe="none", cls="background", metric="share"),
        # Fig 8: same-instance accuracy, mean over gaps.
        *(_tidy("dvt_tracking", f"{side}:delta={g}", x, probe="none", cls="all", metric="acc_same_instance")
          for side, g, x in (("raw", 1, 0.9), ("raw", 5, 0.5), ("dvt", 1, 1.0), ("dvt", 5, 0.7))),
        _tidy("dvt_ade20k", "raw", 0.2, probe="linear"), _tidy("dvt_ade20k", "dvt", 0.25, probe="linear"),
    ]
    data = table_dvt_data(pd.DataFrame(rows)).set_index("task")
    blur = data.loc["Fig 3 blur: k-NN mIoU (mean of levels)"]
    assert (blur["raw"], blur["dvt"], blur["diff"]) == pytest.approx((0.3, 0.45, 0.15))
    transforms = data.loc["FAIR1M same patch: transforms (mean share)"]
    assert (transforms["raw"], transforms["dvt"]) == pytest.approx((0.7, 0.8))
    assert data.loc["FAIR1M same patch: degradations (mean share)", "diff"] == pytest.approx(-0.1)
    tracking = data.loc["BDD100K tracking: same instance (mean over gaps)"]
    assert (tracking["raw"], tracking["dvt"]) == pytest.approx((0.7, 0.85))
    assert data.loc["ADE20K linear mIoU", "diff"] == pytest.approx(0.05)
    assert len(data) == 5


def test_table_dvt_refuses_a_task_without_its_dvt_rows():
    with pytest.raises(ValueError, match="both raw and dvt"):
        table_dvt_data(pd.DataFrame([_tidy("dvt_ade20k", "raw", 0.2)]))


def _rows(model, probe, raw, dvt):
    base = {"experiment": "dvt_cityscapes", "dataset": "cityscapes", "model": model, "probe": probe, "layer": 12,
            "class": "mean", "metric": "miou", "preset": "paper", "weights": "timm:x", "knn_metric": "dot",
            "patch_labels": "nearest_exact", "data": "official"}
    return [{**base, "level": "raw", "value": raw}, {**base, "level": "dvt", "value": dvt}]


def test_table_dvt_difference_and_paper_context():
    df = pd.DataFrame(_rows("dino", "knn", 0.40, 0.45) + _rows("dino", "linear", 0.50, 0.48)
                      + _rows("dinov2", "knn", 0.60, 0.61))
    data = table_dvt_data(df).set_index(["model", "probe"])
    assert data.loc[("dino", "knn"), "diff"] == pytest.approx(0.05)
    assert data.loc[("dino", "linear"), "diff"] == pytest.approx(-0.02)
    assert data.loc[("dino", "knn"), "paper_voc_linear_raw"] == 63.00
    assert data.loc[("dino", "knn"), "paper_ade20k_linear_diff"] == pytest.approx(32.40 - 31.03)
    assert data.loc[("dinov2", "knn"), "paper_voc_linear_diff"] == pytest.approx(84.84 - 83.60)
    assert (data["preset"] == "paper").all()


def test_fig_dvt_writes_files_with_demo_banner(tmp_path):
    rng = np.random.default_rng(0)
    s = {"raw": rng.normal(size=(3, 2, 2, 8)), "denoised": rng.normal(size=(3, 2, 2, 8)),
         "artifact": rng.normal(size=(3, 2, 2, 8)), "images": np.zeros((2, 8, 8, 3), np.uint8),
         "dataset": np.array(["cityscapes"] * 3), "sample_id": np.array(["a", "b", "c"]), "tile_id": np.arange(3),
         "loss": np.ones(3), "attrs": {"weights": "random(seed=2)"}}
    data = fig_dvt(["dino"], [s], [s["denoised"]], tmp_path / "f.pdf", tmp_path / "f.png", tmp_path / "f.csv",
                   n_images=2, demo_subject="synthetic data", preset="demo")
    assert len(data) == 2 and (tmp_path / "f.png").stat().st_size > 0
    assert data["stage2_to_F_cos"].to_numpy() == pytest.approx(1.0)


def test_stage1_never_reads_a_val_split():
    from vitlocal.studies.dvt.wiring import stage1_sources

    config = {"dvt": {"stage1_subsets": {"cityscapes": "set8", "ade20k": "train"}, "stage1_tiles": 5}}
    sources = stage1_sources(config, "results/p", ["cityscapes"], lambda d: f"/data/{d}")
    assert sources == [{"dataset": "cityscapes", "root": "/data/cityscapes", "max_tiles": 5,
                        "manifest": "results/p/subsets/cityscapes/set8.csv"}]
    config["dvt"]["stage1_subsets"]["cityscapes"] = "val"
    with pytest.raises(ConfigError, match="never see evaluation images"):
        stage1_sources(config, "results/p", ["cityscapes"], lambda d: d)


def test_denoised_pairs_map_each_dvt_file_to_its_raw_file_once():
    from vitlocal.studies.dvt.wiring import denoised_pairs

    paths = ["r/features/c/val/dino/clean.parquet", "r/features/c/val/dino/dvt.parquet",
             "r/features/c/val/dino/dvt-blur-2.parquet", "r/features/c/val/dino/dvt.parquet",
             "r/subsets/c/val.csv", "r/features/c/val/dino/dvt1.parquet"]
    assert denoised_pairs(paths) == [("r/features/c/val/dino/clean.parquet", "r/features/c/val/dino/dvt.parquet"),
                                     ("r/features/c/val/dino/blur-2.parquet",
                                      "r/features/c/val/dino/dvt-blur-2.parquet")]


TINY32 = {"arch": "vit_tiny_patch16_224", "weights": "random", "seed": 1,
          "model_kwargs": {"img_size": 32, "embed_dim": 16, "depth": 2, "num_heads": 2}}


@pytest.mark.parametrize("tiles_per_step", [1, 3])  # 3: an image's 32 tiles in calls of 3 (and a last of 2)
def test_dvt1_variant_is_stage1_F_of_every_tile_of_the_clean_file(tmp_path, tiles_per_step):
    from vitlocal.datasets import cityscapes
    from vitlocal.denoise.pipeline import stage1_feature_file
    from vitlocal.denoise.shards import last_layer_encoder
    from vitlocal.denoise.stage1 import Stage1Settings, denoise_image
    from vitlocal.features.pipeline import extract_features
    from vitlocal.features.sources import base_tiling, make_source
    from vitlocal.models.registry import resolve
    from vitlocal.synthetic import generate

    root = generate("cityscapes", tmp_path / "cityscapes", size="tiny", seed=0)
    manifest = cityscapes.list_images(root, "val").head(1)
    clean, out = tmp_path / "clean.parquet", tmp_path / "dvt1.parquet"
    common = dict(model_key="dino", model_overrides=TINY32, weights_dir=tmp_path / "w", device="cpu")
    extract_features(dataset="cityscapes", root=root, manifest=manifest, subset="val", out_path=clean, layers=[1, 2],
                     variant="clean", preset="test", dtype="float32", autocast="none", data_source="synthetic",
                     progress=False, **common)
    settings = Stage1Settings(views=3, steps=4, tokens_per_step=16, levels=2, features_per_level=2,
                              base_resolution=2, max_resolution=4, batch_size=4)
    done = stage1_feature_file(clean, out, root=root, manifest=manifest, settings=settings, seed=3, dtype="float32",
                               tiles_per_step=tiles_per_step, **common)
    meta_raw, raw = read_features(clean)
    meta, layers = read_features(out)
    assert done["tiles"] == 32 and done["patches"] == len(meta_raw) == 32 * 4
    pd.testing.assert_frame_equal(meta, meta_raw)
    assert list(layers) == [2]
    attrs = read_attrs(out)
    assert attrs["variant"] == "dvt1" and attrs["raw_variant"] == "clean" and attrs["denoiser"]["method"] == "stage1"
    # Tile 5 by hand: its seed is the file's tile counter; its full view is the file's clean tile.
    spec = resolve("dino", TINY32)
    item = make_source("cityscapes", root, manifest, spec, "clean", tiling=base_tiling("cityscapes"), seed=0)[0]
    result = denoise_image(item.tiles[5], last_layer_encoder(spec, tmp_path / "w", torch.device("cpu")),
                           mean=spec.mean, std=spec.std, input_size=spec.input_size, grid=spec.grid,
                           settings=settings, seed=3 * 1_000_003 + 5, device="cpu")
    rows = (meta["tile_id"] == 5).to_numpy()
    np.testing.assert_allclose(layers[2][rows], result.denoised.reshape(-1, 16), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(raw[2][rows], result.raw.reshape(-1, 16), rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="holds 'dino' features; dvt1 was asked for 'mae'"):
        stage1_feature_file(clean, tmp_path / "x.parquet", root=root, manifest=manifest, settings=settings,
                            **{**common, "model_key": "mae"})


def test_stage1_tasks_add_dvt1_files_and_their_jobs():
    from vitlocal.studies.dvt.wiring import stage1_feature_jobs

    config = {"subsets": {"cityscapes": {"main_train_set": "set4"}},
              "datasets": {"cityscapes": {}, "ade20k": {}},
              "degradations": {"blur_kernels": [], "noise_sigmas": [], "frequency_bands": []},
              "dvt": {"models": ["dino"], "stage1_tasks": ["ade20k"]}, "study_models": []}
    layout = Layout(config, "r")
    ade = EXPERIMENTS["dvt_ade20k"].inputs(layout, "dino")
    assert ade["dvt1"] == {"train": "r/features/ade20k/train/dino/dvt1.parquet",
                           "val": "r/features/ade20k/val/dino/dvt1.parquet"}
    assert "dvt1" not in EXPERIMENTS["dvt_cityscapes"].inputs(layout, "dino")
    paths = [ade["raw"]["train"], ade["dvt"]["train"], ade["dvt1"]["train"], ade["dvt1"]["val"], ade["dvt1"]["val"]]
    assert stage1_feature_jobs(paths, layout.manifest) == [
        {"raw": "r/features/ade20k/train/dino/clean.parquet", "out": "r/features/ade20k/train/dino/dvt1.parquet",
         "dataset": "ade20k", "manifest": "r/subsets/ade20k/train.csv"},
        {"raw": "r/features/ade20k/val/dino/clean.parquet", "out": "r/features/ade20k/val/dino/dvt1.parquet",
         "dataset": "ade20k", "manifest": "r/subsets/ade20k/val.csv"}]


def test_table_dvt_shows_dvt1_where_computed():
    rows = _rows("dino", "knn", 0.40, 0.45) + [{**_rows("dino", "knn", 0, 0)[0], "level": "dvt1", "value": 0.48}]
    rows += [{**r, "experiment": "dvt_ade20k"} for r in _rows("dino", "knn", 0.2, 0.1)]
    data = table_dvt_data(pd.DataFrame(rows)).set_index("task")
    city = data.loc["Cityscapes k-NN mIoU"]
    assert (city["dvt1"], city["dvt1_diff"], city["diff"]) == pytest.approx((0.48, 0.08, 0.05))
    assert np.isnan(data.loc["ADE20K k-NN mIoU", "dvt1"])
