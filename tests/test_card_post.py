"""The card's best m (chosen on held-out training images), post-processors and DVT's artifact share (issue 22 §2).

Planted Cityscapes-shaped features (tiny synthetic layout, l2 1-NN):
dims 0-3 are noise of variance 100 (ranked first), dims 4-11 a class code A
scaled by 4 (ranked next), dims 12-19 a second code B with small noise, the
rest a near-constant filler (a denoiser needs 64 dims). On training images A
is right: removing the 4 noise dims is best (removing A too loses its
precision). On val, A codes the *next* class: there removing 12 is best. A
rule that looked at val would pick 12; the card must pick 4.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import PROJECT, load_config, write_planted_cityscapes
from vitlocal.datasets import cityscapes
from vitlocal.denoise.stage1_files import write_npz
from vitlocal.denoise.stage2 import Denoiser, save_checkpoint
from vitlocal.errors import ConfigError
from vitlocal.evaluation.segmentation import EvalTarget, ProbeSettings, knn_predictions, labelled, load_split
from vitlocal.layout import Layout
from vitlocal.probes.variance import feature_variance, top_variance_dims
from vitlocal.studies import EXPERIMENTS
from vitlocal.studies.card.compute import artifact_stats, card_rows, norm_ratio, pick_m, split_train_images
from vitlocal.studies.card.summary import card_entries
from vitlocal.synthetic import generate
from vitlocal.tiling import TilingSpec

TILING, GRID, DIM, LAYER = TilingSpec(None, 4, 8), (4, 4), 64, 12
PROBES = ProbeSettings(knn_k=1, knn_metric="l2", linear={"epochs": 1}, seed=0, device="cpu")
CODES = np.random.default_rng(7).normal(0, 1, (2, 19, 8))


def planted(labels: np.ndarray, rng, *, val: bool, denoised: bool = False) -> np.ndarray:
    cls = np.where(labels == 255, rng.integers(0, 19, len(labels)), labels)
    x = np.empty((len(labels), DIM), np.float32)
    x[:, :4] = 0.0 if denoised else rng.normal(0, 10, (len(labels), 4))
    x[:, 4:12] = 4 * CODES[0][(cls + 1) % 19 if val else cls]
    x[:, 12:20] = CODES[1][cls] + rng.normal(0, 0.5, (len(labels), 8))
    x[:, 20:] = rng.normal(0, 0.01, (len(labels), DIM - 20))
    return x


def write_split(path, root, manifest, split, seed, **kwargs):
    attrs = {"model": "m", "arch": "planted", "weights": "random", "variant": "clean", "dataset": "cityscapes",
             "split": split, "preset": "test", "patch_labels": "nearest_exact", "seed": 0, "data_source": "synthetic",
             "tiling": {"resize_to": None, "rows": 4, "cols": 8, "out_size": [64, 64]}, "grid": list(GRID),
             "denoiser": {"path": "m.pt", "sha256": "x", "dvt_source": "ours@64"}}
    rng = np.random.default_rng(seed)
    return write_planted_cityscapes(path, root, manifest, attrs, lambda label: planted(label, rng, val=split == "val",
                                                                                     **kwargs),
                                    tiling=TILING, grid=GRID, layer=LAYER)


@pytest.fixture(scope="module")
def planted_card(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("card_post")
    root = generate("cityscapes", tmp / "cityscapes", size="tiny")
    train_m, val_m = cityscapes.list_images(root, "train").head(12), cityscapes.list_images(root, "val")
    files = {"train": write_split(tmp / "train.parquet", root, train_m, "set4", 1),
             "val": write_split(tmp / "val.parquet", root, val_m, "val", 2),
             "dvt_train": write_split(tmp / "dvt_train.parquet", root, train_m, "set4", 3, denoised=True),
             "dvt_val": write_split(tmp / "dvt_val.parquet", root, val_m, "val", 4, denoised=True)}
    save_checkpoint(Denoiser(DIM, GRID), tmp / "m.pt", {"model": "m"})
    stage1 = tmp / "stage1.npz"
    g = np.random.default_rng(5).normal(0, 1, (3, *GRID, DIM))
    write_npz(stage1, {"raw": (g / 0.25).astype(np.float16), "denoised": g, "artifact": g.astype(np.float16),
                       "dataset": np.array(["cityscapes"] * 3), "sample_id": np.array(["a", "a", "b"]),
                       "tile_id": np.arange(3), "loss": np.zeros(3), "seconds_views": np.zeros(3),
                       "seconds_fit": np.zeros(3), "attrs": np.array(json.dumps({"model": "m", "layer": LAYER}))})
    target = EvalTarget.load("cityscapes", root, val_m)
    rows = card_rows("m", files["train"], files["val"], target=target,
                     train_target=EvalTarget.load("cityscapes", root, train_m), probes=PROBES,
                     removed_dims=[0, 4, 12], resamples=200, seed=0,
                     dvt={"train": files["dvt_train"], "val": files["dvt_val"], "checkpoint": str(tmp / "m.pt")},
                     stage1=str(stage1))
    return {"rows": rows, "files": files, "target": target, "root": root, "train_m": train_m, "tmp": tmp}


def _row(rows, probe, level, metric="miou"):
    hit = rows[(rows["probe"] == probe) & (rows["level"] == level) & (rows["metric"] == metric)]
    assert len(hit) == 1, (probe, level, metric)
    return hit.iloc[0]


def test_planted_features_rank_noise_then_code_a():
    """The premise: on the training features the 4 noise dims rank first, then the 8 dims of code A."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 19, 5000).astype(np.uint8)
    variances = feature_variance(planted(labels, rng, val=False))
    assert set(top_variance_dims(variances, 4)) == set(range(4))
    assert set(top_variance_dims(variances, 12)) == set(range(12))


def test_split_train_images_is_seeded_by_image_and_disjoint():
    ids = [f"img{i}" for i in range(12)] * 5  # one id per patch, repeated
    fit, held = split_train_images(ids, seed=3)
    assert len(held) == 3 and len(fit) == 9 and not set(fit) & set(held) and set(fit) | set(held) == set(ids)
    assert (fit, held) == split_train_images(ids, seed=3)
    assert held != split_train_images(ids, seed=4)[1]
    with pytest.raises(ConfigError, match="at least 2 training images"):
        split_train_images(["only"] * 4, seed=0)


def test_pick_m_breaks_ties_by_the_smallest_m_and_skips_undefined_scores():
    assert pick_m({0: 0.3, 10: 0.5, 20: 0.5, 40: 0.4}) == 10
    assert pick_m({20: 0.5, 10: 0.5}) == 10  # not the first listed
    assert pick_m({0: float("nan"), 10: 0.1}) == 10
    with pytest.raises(ConfigError, match="undefined for every m"):
        pick_m({0: float("nan")}, "train.parquet")


def test_best_m_is_chosen_on_held_out_training_images_not_on_val(planted_card):
    rows = planted_card["rows"]
    chosen = _row(rows, "none", "best_m_removed", "best_m")
    assert chosen["value"] == 4
    record = json.loads(chosen["settings"])
    held = {int(m): v for m, v in record["held_out_miou"].items()}
    assert max(held, key=held.get) == 4 and held[4] > held[12] > held[0]
    assert record["held_out_images"] == 3 and record["fit_images"] == 9
    val = {m: _row(rows, "knn", "raw" if m == 0 else f"top{m}_removed")["value"] for m in (0, 4, 12)}
    assert val[12] > val[4] + 0.2  # val would have chosen 12
    best = _row(rows, "knn", "best_m_removed")
    assert best["value"] == val[4] and best["lo"] <= best["value"] <= best["hi"]  # the val number of the chosen m
    assert json.loads(best["settings"])["chosen_m"] == 4


def test_post_processors_each_have_knn_linear_and_cost(planted_card):
    rows, files, target = planted_card["rows"], planted_card["files"], planted_card["target"]
    for level in ("raw", "best_m_removed", "bn_standardised", "dvt"):
        for probe in ("knn", "linear"):
            assert 0 <= _row(rows, probe, level)["value"] <= 1
        cost = _row(rows, "none", level, "seconds_per_image")
        settings = json.loads(cost["settings"])
        assert settings["machine_dependent"] and settings["post_processor"]
        assert (cost["value"] == 0) if level == "raw" else (cost["value"] > 0)
        assert cost["n_units"] == len(target.manifest) and np.isnan(cost["lo"])
    assert "denoiser forward" in json.loads(_row(rows, "none", "dvt", "seconds_per_image")["settings"])["post_processor"]
    assert json.loads(_row(rows, "linear", "best_m_removed")["settings"])["chosen_m"] == 4
    # DVT's k-NN is the probe on the dvt files, scored as the probing study scores it.
    train, val = labelled(load_split(files["dvt_train"])), load_split(files["dvt_val"])
    reference = target.score(val, knn_predictions(train, val, k=1, metric="l2", device="cpu")).miou
    assert _row(rows, "knn", "dvt")["value"] == pytest.approx(reference)
    # The existing rows keep their meaning: one k-NN row per configured m > 0, BatchNorm's settings unchanged.
    assert sorted(rows.loc[rows["level"].str.fullmatch(r"top\d+_removed"), "level"]) == ["top12_removed", "top4_removed"]
    assert "post_processor" not in json.loads(_row(rows, "knn", "bn_standardised")["settings"])


def test_artifact_share_of_a_planted_stage1_file(planted_card, tmp_path):
    share = _row(planted_card["rows"], "none", "", "dvt_artifact_share")
    assert share["value"] == pytest.approx(0.25, rel=1e-3)  # G = y / 4 on every tile
    assert share["n_units"] == 2 and share["unit"] == "stage-1 train image"  # tiles of image "a" pooled
    # Per-image sums by hand: ||G||^2, ||y||^2 of each image's tiles.
    g = np.ones((3, 2, 2, 64), np.float16) * np.array([1.0, 2.0, 3.0])[:, None, None, None]
    y = np.ones_like(g) * np.array([2.0, 2.0, 6.0])[:, None, None, None]
    arrays = {"raw": y, "denoised": y, "artifact": g, "dataset": np.array(["cityscapes", "ade20k", "ade20k"]),
              "sample_id": np.array(["a", "a", "a"]), "tile_id": np.arange(3), "loss": np.zeros(3),
              "seconds_views": np.zeros(3), "seconds_fit": np.zeros(3), "attrs": np.array(json.dumps({"model": "x"}))}
    write_npz(tmp_path / "x.npz", arrays)
    per_image, record = artifact_stats(tmp_path / "x.npz")
    np.testing.assert_allclose(per_image, [[256 * 1, 256 * 4], [256 * (4 + 9), 256 * (4 + 36)]])  # two datasets
    assert norm_ratio(per_image.sum(axis=0)) == pytest.approx(np.sqrt(14 / 44))
    assert record["model"] == "x" and record["tiles"] == 3


def test_a_stage1_file_of_another_model_is_refused(planted_card, tmp_path):
    arrays = {"raw": np.ones((1, 4, 4, DIM)), "denoised": np.ones((1, 4, 4, DIM)), "artifact": np.ones((1, 4, 4, DIM)),
              "dataset": np.array(["cityscapes"]), "sample_id": np.array(["a"]), "tile_id": np.arange(1),
              "loss": np.zeros(1), "seconds_views": np.zeros(1), "seconds_fit": np.zeros(1),
              "attrs": np.array(json.dumps({"model": "other"}))}
    write_npz(tmp_path / "other.npz", arrays)
    files = planted_card["files"]
    with pytest.raises(ConfigError, match="stage 1 of model 'other'"):
        card_rows("m", files["train"], files["val"], target=planted_card["target"],
                  train_target=EvalTarget.load("cityscapes", planted_card["root"], planted_card["train_m"]),
                  probes=PROBES, removed_dims=[], resamples=100, stage1=str(tmp_path / "other.npz"))


def test_card_shows_the_new_rows_with_definitions(planted_card):
    rows = planted_card["rows"].assign(experiment="card", model="m")
    entries = card_entries("m", rows).set_index("name")
    for name in ("k-NN, best-m removed", "linear, best-m removed", "linear, BatchNorm-standardised", "k-NN, DVT",
                 "linear, DVT", "cost, DVT", "cost, raw", "best m (held-out train images)", "dvt_artifact_share"):
        assert name in entries.index and entries.loc[name, "definition"].endswith(".")
    assert entries.loc["best m (held-out train images)", "value"] == 4
    assert entries.loc["cost, BatchNorm-standardised", "section"] == "cost"


def test_only_dvt_models_read_dvt_files_and_stage1_and_only_with_card_dvt():
    from snakemake.utils import validate

    config = load_config("config/demo.yaml")
    validate(config, str(PROJECT / "schemas" / "config.schema.yaml"))  # fills the defaults
    layout = Layout(config, "results/demo")
    assert "dino" in config["dvt"]["models"] and "tiny_reg4" not in config["dvt"]["models"]
    dino, tiny = EXPERIMENTS["card"].inputs(layout, "dino"), EXPERIMENTS["card"].inputs(layout, "tiny_reg4")
    assert dino["stage1"] == "results/demo/dvt/stage1/dino.npz"
    assert dino["dvt"]["val"] == "results/demo/features/cityscapes/val/dino/dvt.parquet"
    assert dino["dvt"]["checkpoint"] == "results/demo/dvt/stage2/dino.pt"
    assert "stage1" not in tiny and "dvt" not in tiny
    assert tiny["train_manifest"] == layout.manifest("cityscapes", layout.main_train_set)
    # card.dvt off (config.yaml's default): no card reads DVT, so no card_<model> builds DVT for the grey models.
    off = Layout({**config, "card": {**config["card"], "dvt": False}}, "results/demo")
    assert "stage1" not in EXPERIMENTS["card"].inputs(off, "dino") and "dvt" not in EXPERIMENTS["card"].inputs(off, "dino")
