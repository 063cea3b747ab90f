"""Fig 4a-c, the top-m overlap and Table 6 on tiny synthetic Cityscapes with features whose structure we plant."""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score

from vitlocal import subsets
from vitlocal.datasets import cityscapes
from vitlocal.errors import ConfigError
from vitlocal.evaluation.segmentation import (
    EvalTarget,
    ProbeSettings,
    knn_predictions,
    labelled,
    load_split,
    with_features,
)
from vitlocal.studies.variance.compute import (
    DimensionsWarning,
    r2_rows,
    tile_fractions,
    top_dims_overlap_rows,
    variance_removal_rows,
    variance_spectrum_rows,
)
from vitlocal.features.store import FeatureWriter
from vitlocal.io import read_label_map, write_png
from vitlocal.probes.variance import random_dims
from vitlocal.published import check_our_levels
from vitlocal.reproduction import read_results
from vitlocal.synthetic import generate
from vitlocal.tiling import TilingSpec, patch_labels, tile_image

TILING = TilingSpec(None, 4, 8)
GRID = (4, 4)
N_CLASSES = len(cityscapes.CLASSES)
#: Feature layout: a scaled one-hot of the patch's class, then NOISY dims of huge variance.
NOISY = (19, 20, 21, 22)
N_DIMS = N_CLASSES + len(NOISY)
#: A dim of huge variance in the val features only: ranking dims on val instead of train would remove it.
VAL_NOISE = 18
LAYER = 12
PROBES = ProbeSettings(knn_k=1, knn_metric="dot", linear={"epochs": 2, "batch_size": 1024},
                       batchnorm_models=("mae",), seed=0, device="cpu")
SETTINGS = {"lists_dir": Path(__file__).resolve().parents[1] / "config/subsets/cityscapes", "train_sets": {"set4": "training_set4.csv"},
            "val_set": "validation_set.csv"}


def _attrs(split: str, dataset: str = "cityscapes") -> dict:
    return {
        "model": "mae", "arch": "planted", "weights": "random", "variant": "clean", "dataset": dataset,
        "split": split, "preset": "test", "patch_labels": "nearest_exact", "seed": 0, "data_source": "synthetic",
        "tiling": {"resize_to": None, "rows": TILING.rows, "cols": TILING.cols, "out_size": [64, 64]},
        "grid": list(GRID),
    }


def _write_planted(path, root, manifest: pd.DataFrame, split: str, seed: int, val_noise: int | None = None) -> None:
    """Every patch: 3 x one-hot(class) + N(0, 0.1), and N(0, 30) in the ``NOISY`` dims (void: no one-hot).

    ``val_noise``: a class dim that gets N(0, 40) too, so this split ranks dims unlike the training split.
    """
    rng = np.random.default_rng(seed)
    with FeatureWriter(path, _attrs(split), dtype="float32") as writer:
        for row in manifest.to_dict("records"):
            _, labels = cityscapes.read_sample(root, row)
            label = patch_labels(tile_image(labels, TILING), GRID).reshape(-1)
            tile, prow, pcol = (a.reshape(-1) for a in np.indices((TILING.n_tiles, *GRID)))
            x = rng.normal(0.0, 0.1, (len(label), N_DIMS))
            has_class = label != 255
            x[np.flatnonzero(has_class), label[has_class]] += 3.0
            x[:, NOISY] = rng.normal(0.0, 30.0, (len(label), len(NOISY)))
            if val_noise is not None:
                x[:, val_noise] += rng.normal(0.0, 40.0, len(label))
            meta = pd.DataFrame({"sample_id": row["sample_id"], "tile_id": tile, "patch_row": prow, "patch_col": pcol,
                                 "label": label, "image_h": labels.shape[0], "image_w": labels.shape[1]})
            writer.write(meta, {LAYER: x.astype(np.float32)})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("variance")
    root = generate("cityscapes", tmp / "cityscapes", size="tiny")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the authors' lists are not in the synthetic data: seeded fallback
        train = subsets.select_subset("cityscapes", "set4", root=root, settings=SETTINGS, seed=0).head(10)
        val = subsets.select_subset("cityscapes", "val", root=root, settings=SETTINGS, seed=0)
    _write_planted(tmp / "train.parquet", root, train, "set4", seed=1)
    _write_planted(tmp / "val.parquet", root, val, "val", seed=2, val_noise=VAL_NOISE)
    _write_planted(tmp / "val_clean.parquet", root, val, "val", seed=2)
    return {"root": root, "train_manifest": train, "target": EvalTarget.load("cityscapes", root, val),
            "train": tmp / "train.parquet", "val": tmp / "val.parquet", "val_clean": tmp / "val_clean.parquet",
            "tmp": tmp}


def _miou(rows: pd.DataFrame, experiment: str, probe: str, level: str) -> float:
    hit = rows[(rows["experiment"] == experiment) & (rows["probe"] == probe) & (rows["level"] == level)
               & (rows["metric"] == "miou")]
    assert len(hit) == 1, (experiment, probe, level)
    return float(hit["value"].iloc[0])


def test_variance_spectrum_is_numpy_variance_sorted(data) -> None:
    rows = variance_spectrum_rows("mae", data["train"])
    x = load_split(data["train"], LAYER).x.astype(np.float64)
    expected = x.var(axis=0)
    assert rows["rank"].tolist() == list(range(N_DIMS))
    assert np.all(np.diff(rows["value"].to_numpy()) <= 0)
    np.testing.assert_allclose(rows["value"].to_numpy(), expected[rows["dim"].to_numpy()], rtol=1e-9)
    assert set(rows["dim"].head(len(NOISY))) == set(NOISY)
    assert (rows["experiment"] == "feature_variance").all() and (rows["data"] == "synthetic").all()
    check_our_levels(rows, "spectrum")


def test_variance_removal_drops_the_top_train_dims(data) -> None:
    with pytest.warns(DimensionsWarning, match=r"m=\[23, 30\]"):
        rows = variance_removal_rows("mae", data["train"], data["val"], removed_dims=[0, 4, 23, 30],
                                     target=data["target"], probes=PROBES)
    check_our_levels(rows, "removal")
    levels = rows.loc[rows["experiment"] == "variance_removal", "level"].unique().tolist()
    assert levels == ["0", "4"]
    knn_0 = _miou(rows, "variance_removal", "knn", "0")
    knn_4 = _miou(rows, "variance_removal", "knn", "4")
    # The planted noise dims swamp the dot product; removing them rescues k-NN.
    assert knn_0 < 0.2 and knn_4 > knn_0 + 0.3
    # Exactly the train's top dims went (not val's, which rank VAL_NOISE first): same k-NN by hand, same score.
    train, val = load_split(data["train"], LAYER), load_split(data["val"], LAYER)
    keep = [d for d in range(N_DIMS) if d not in NOISY]
    preds = knn_predictions(with_features(train, train.x[:, keep]), with_features(val, val.x[:, keep]))
    assert knn_4 == pytest.approx(data["target"].score(val, preds).miou, abs=1e-12)
    settings = json.loads(rows.loc[(rows["level"] == "4") & (rows["probe"] == "knn"), "settings"].iloc[0])
    assert settings["removed_dims"] == 4 and settings["metric"] == "dot"
    # The rows satisfy the reproduction report's contract.
    rows.to_csv(data["tmp"] / "removal.csv", index=False)
    assert len(read_results([data["tmp"] / "removal.csv"])) == len(rows)


def test_bn_standardized_rows(data) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows = variance_removal_rows("mae", data["train"], data["val_clean"], removed_dims=[0],
                                     target=data["target"], probes=PROBES)
    bn = rows[rows["experiment"] == "bn_standardized"]
    assert sorted(bn["probe"].unique()) == ["knn", "linear"] and (bn["level"] == "").all()
    assert len(bn) == 2 * (N_CLASSES + 2)  # per-class IoU, mean, pixel accuracy per probe
    # Standardising shrinks the noise dims to unit variance: k-NN recovers.
    assert _miou(rows, "bn_standardized", "knn", "") > _miou(rows, "variance_removal", "knn", "0") + 0.3
    # MAE's linear probe already has BatchNorm: the reference is the m=0 probe, not a second one.
    assert _miou(rows, "bn_standardized", "linear", "") == _miou(rows, "variance_removal", "linear", "0")
    # A model without BatchNorm in its probe gets one trained for the reference (its m = 0 probe has none).
    plain = dataclasses.replace(PROBES, batchnorm_models=())
    rows = variance_removal_rows("mae", data["train"], data["val"], removed_dims=[0], target=data["target"],
                                 probes=plain)
    linear = rows[(rows["probe"] == "linear") & (rows["metric"] == "miou")].set_index("experiment")["settings"]
    assert {k: json.loads(v)["batchnorm"] for k, v in linear.items()} == {"variance_removal": False,
                                                                          "bn_standardized": True}
    assert set(variance_removal_rows("mae", data["train"], data["val"], removed_dims=[], target=data["target"],
                                     probes=PROBES)["experiment"]) == {"bn_standardized"}
    # Statistics of the labelled training patches standardise both splits (val's own noise stays).
    train, val = labelled(load_split(data["train"], LAYER)), load_split(data["val"], LAYER)
    mean, std = train.x.astype(np.float64).mean(axis=0), train.x.astype(np.float64).std(axis=0, ddof=1)
    preds = knn_predictions(with_features(train, (train.x - mean) / np.sqrt(std**2 + 1e-6)),
                            with_features(val, (val.x - mean) / np.sqrt(std**2 + 1e-6)))
    # (float32 rounding of the two standardisations may flip a rare near-tie: ~1e-4 of mIoU per patch)
    assert _miou(rows, "bn_standardized", "knn", "") == pytest.approx(
        data["target"].score(val, preds).miou, abs=2e-3)


def test_tile_fractions_leave_out_ignore_pixels_and_empty_tiles() -> None:
    counts = np.array([[2, 0, 2], [0, 0, 0], [1, 3, 0]])
    fractions, has_labels = tile_fractions(counts, [1, 0])
    np.testing.assert_array_equal(fractions, [[0.0, 0.5], [0.0, 0.0], [0.75, 0.25]])
    assert has_labels.tolist() == [True, False, True]


def test_features_of_another_model_are_refused(data) -> None:
    with pytest.raises(ConfigError, match="model 'mae', not 'dino'"):
        variance_spectrum_rows("dino", data["train"])


def _write_dims(path, dataset: str, top: list[int], seed: int) -> None:
    """Features whose variance ranks ``top`` first (in that order), other dims at unit variance."""
    rng = np.random.default_rng(seed)
    n = 400
    x = rng.normal(size=(n, N_DIMS))
    x[:, top] *= np.linspace(20, 10, len(top))
    meta = pd.DataFrame({"sample_id": "a", "tile_id": 0, "patch_row": np.arange(n) // 20,
                         "patch_col": np.arange(n) % 20, "label": 0, "image_h": 64, "image_w": 64})
    with FeatureWriter(path, _attrs("train", dataset), dtype="float32") as writer:
        writer.write(meta, {LAYER: x.astype(np.float32)})


def test_top_dims_overlap_counts_planted_sets(data) -> None:
    tmp = data["tmp"]
    _write_dims(tmp / "a.parquet", "cityscapes", [0, 1, 2, 3, 4], seed=3)
    _write_dims(tmp / "b.parquet", "ade20k", [0, 1, 2, 10, 11], seed=4)
    _write_dims(tmp / "c.parquet", "fair1m", [5, 6, 7, 8, 9], seed=5)
    paths = {"cityscapes": tmp / "a.parquet", "ade20k": tmp / "b.parquet", "fair1m": tmp / "c.parquet"}
    with pytest.warns(DimensionsWarning, match="using m=5"):  # 200 > 23 dims -> 23 // 4
        rows = top_dims_overlap_rows("mae", paths, m=200)
    check_our_levels(rows, "overlap")
    assert (rows["level"] == "m=5").all()
    got = {(r.dataset, r.metric): r.value for r in rows.itertuples()}
    assert got == {
        ("cityscapes vs ade20k", "count_set_difference"): 2, ("ade20k vs cityscapes", "count_set_difference"): 2,
        ("cityscapes vs fair1m", "count_set_difference"): 5, ("fair1m vs cityscapes", "count_set_difference"): 5,
        ("ade20k vs fair1m", "count_set_difference"): 5, ("fair1m vs ade20k", "count_set_difference"): 5,
        ("cityscapes vs ade20k", "count_shared"): 3, ("cityscapes vs fair1m", "count_shared"): 0,
        ("ade20k vs fair1m", "count_shared"): 0,
    }
    differing = json.loads(rows.loc[rows["dataset"] == "ade20k vs cityscapes", "settings"].iloc[0])["elements"]
    assert differing == [10, 11]


def _reference_r2(data, m: int, seed: int, alpha: float) -> dict[str, float]:
    """Table 6 by hand: tiles sliced from the label maps, sklearn Ridge + r2_score."""
    def tiles(manifest, path):
        split = load_split(path, LAYER)
        x, fractions = [], []
        for row in manifest.to_dict("records"):
            _, labels = cityscapes.read_sample(data["root"], row)
            for t in range(TILING.n_tiles):
                r, c = divmod(t, TILING.cols)
                tile = labels[16 * r:16 * (r + 1), 16 * c:16 * (c + 1)]
                if (tile == 255).all():
                    continue  # no labelled pixel: no class fraction to predict
                fractions.append(tile)
                hit = ((split.meta["sample_id"] == row["sample_id"]) & (split.meta["tile_id"] == t)
                       & (split.meta["patch_row"] == 2) & (split.meta["patch_col"] == 2)).to_numpy()
                x.append(split.x[hit][0])
        return np.array(x), fractions, split.x

    x_tr, tiles_tr, all_tr = tiles(data["train_manifest"], data["train"])
    x_va, tiles_va, _ = tiles(data["target"].manifest, data["val"])
    counts = np.bincount(np.concatenate([t[t != 255] for t in tiles_tr]), minlength=N_CLASSES)
    classes = np.argsort(-counts, kind="stable")[:3]

    def y(tile_list):
        return np.array([[np.mean(t[t != 255] == c) for c in classes] for t in tile_list])

    top = np.argsort(-all_tr.astype(np.float64).var(axis=0), kind="stable")[:m]
    inputs = {"full": np.arange(N_DIMS), f"without_top{m}": np.setdiff1d(np.arange(N_DIMS), top),
              f"only_top{m}": np.sort(top), f"random{m}": random_dims(N_DIMS, m, seed)}
    out = {}
    for name, dims in inputs.items():
        model = Ridge(alpha=alpha).fit(x_tr[:, dims].astype(np.float64), y(tiles_tr))
        out[name] = r2_score(y(tiles_va), model.predict(x_va[:, dims].astype(np.float64)))
    return out


def test_r2_rows_match_sklearn_ridge(data) -> None:
    with pytest.warns(DimensionsWarning, match="using m=5"):  # 2 * 200 > 23 dims -> 23 // 4
        rows = r2_rows("mae", data["train"], data["val"], train_manifest=data["train_manifest"],
                       target=data["target"], m=200, top_classes=3, alpha=0.5, seed=7)
    expected = _reference_r2(data, m=5, seed=7, alpha=0.5)
    mean = rows[rows["class"] == "mean"].set_index("level")["value"]
    assert list(mean.index) == list(expected)
    for level, value in expected.items():
        assert mean[level] == pytest.approx(value, rel=1e-6, abs=1e-9)
    # Every tile here shows a labelled pixel, so no tile is left out.
    settings = json.loads(rows["settings"].iloc[0])
    assert settings["n_train_tiles"] == 10 * TILING.n_tiles and settings["m"] == 5
    assert set(rows["class"]) == {"mean", *settings["target_classes"]} and len(settings["target_classes"]) == 3
    assert (rows["experiment"] == "r2").all() and (rows["probe"] == "ridge").all()


def test_r2_rows_leave_out_tiles_without_a_labelled_pixel(data, tmp_path) -> None:
    root = tmp_path / "cityscapes"
    shutil.copytree(data["root"], root)
    label_path = root / data["train_manifest"]["label_path"].iloc[0]
    label_ids = read_label_map(label_path)
    label_ids[:16, :16] = 0  # labelId 0 (unlabeled): tile 0 of the first training image is all void
    write_png(label_path, label_ids)
    _write_planted(tmp_path / "train.parquet", root, data["train_manifest"], "set4", seed=1)
    void = {**data, "root": root, "train": tmp_path / "train.parquet",
            "target": EvalTarget.load("cityscapes", root, data["target"].manifest)}
    with pytest.warns(DimensionsWarning, match="using m=5"):
        rows = r2_rows("mae", void["train"], void["val"], train_manifest=void["train_manifest"],
                       target=void["target"], m=200, top_classes=3, alpha=0.5, seed=7)
    assert json.loads(rows["settings"].iloc[0])["n_train_tiles"] == 10 * TILING.n_tiles - 1
    mean = rows[rows["class"] == "mean"].set_index("level")["value"]
    for level, value in _reference_r2(void, m=5, seed=7, alpha=0.5).items():
        assert mean[level] == pytest.approx(value, rel=1e-6, abs=1e-9)
