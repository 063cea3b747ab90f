"""The card's intervals and diagnostics (issue 22 §2) on hand-computed cases and planted features."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score

from conftest import write_planted_cityscapes

from vitlocal import subsets
from vitlocal.datasets import cityscapes
from vitlocal.evaluation.segmentation import EvalTarget, load_split, select_samples
from vitlocal.studies.card.bootstrap import bootstrap, miou_of, ratio_of, resample_counts
from vitlocal.studies.card.compute import (
    BACKGROUND,
    fit_ridge,
    high_norm_stats,
    high_norm_threshold,
    image_index,
    per_image_confusions,
    position_r2,
    position_stats,
    top_share,
    variance_stats,
)
from vitlocal.studies.card.figures import comparison
from vitlocal.synthetic import generate
from vitlocal.tiling import TilingSpec


# --------------------------------------------------------------------------- bootstrap


def test_resample_counts_draw_n_units_per_resample_and_are_seeded():
    counts = resample_counts(5, 100, seed=3)
    assert counts.shape == (100, 5) and (counts.sum(axis=1) == 5).all()
    np.testing.assert_array_equal(counts, resample_counts(5, 100, seed=3))
    assert not np.array_equal(counts, resample_counts(5, 100, seed=4))


def test_share_interval_of_two_units_by_hand():
    """Units A = 1/2, B = 3/4. Resamples: AA (p 1/4) 0.5, AB (1/2) 4/6, BB (1/4) 0.75 -> 2.5 %: 0.5, 97.5 %: 0.75."""
    out = bootstrap(np.array([[1.0, 2.0], [3.0, 4.0]]), ratio_of, resamples=1000, seed=0)
    assert out.value == pytest.approx(4 / 6)
    assert (out.lo, out.hi) == (pytest.approx(0.5), pytest.approx(0.75))
    assert out.n_units == 2


def test_miou_interval_of_two_images_by_hand():
    """Pooled mIoU is no average of per-image mIoUs; the interval comes from pooled resampled matrices.

    A = [[2,0],[1,1]]: IoU 2/3, 1/2 -> 7/12. B = [[1,1],[0,3]]: IoU 1/2, 3/4 -> 5/8.
    A+B = [[3,1],[1,4]]: IoU 3/5, 4/6 -> 19/30 (above both). Resamples: AA 7/12 (p 1/4), BB 5/8 (1/4),
    AB 19/30 (1/2) -> 2.5 %: 7/12, 97.5 %: 19/30.
    """
    a, b = np.array([[2, 0], [1, 1]]), np.array([[1, 1], [0, 3]])
    out = bootstrap(np.stack([a, b]), miou_of, resamples=1000, seed=1)
    assert out.value == pytest.approx(19 / 30)
    assert (out.lo, out.hi) == (pytest.approx(7 / 12), pytest.approx(19 / 30))


def test_interval_covers_the_true_share_at_the_stated_rate():
    """Seeded simulation: 400 data sets of 30 images, each image 50 patches with P(hit) = 0.3 +- image effect."""
    rng = np.random.default_rng(0)
    hits = 0
    for trial in range(400):
        p = np.clip(0.3 + rng.normal(0, 0.1, 30), 0, 1)  # the population share is 0.3 (symmetric image effect)
        counts = rng.binomial(50, p)
        out = bootstrap(np.stack([counts, np.full(30, 50)], axis=1), ratio_of, resamples=1000, seed=trial)
        hits += out.lo <= 0.3 <= out.hi
    assert 0.91 <= hits / 400 <= 0.98


# --------------------------------------------------------------------------- diagnostics on planted features


def test_high_norm_rule_finds_planted_tokens_and_where_they_sit():
    rng = np.random.default_rng(0)
    background = [cityscapes.CLASSES.index(name) for name in BACKGROUND]
    foreground = [c for c in range(19) if c not in background]
    train = np.linalg.norm(rng.normal(0, 1, (5000, 32)), axis=1)
    threshold = high_norm_threshold(train)
    q1, q3 = np.quantile(train, [0.25, 0.75])
    assert threshold == pytest.approx(q3 + 3 * (q3 - q1))
    n, images = 4000, 8
    x = rng.normal(0, 1, (n, 32))
    labels = np.where(rng.random(n) < 0.5, rng.choice(background, n), rng.choice(foreground, n)).astype(np.uint8)
    labels[rng.random(n) < 0.1] = 255
    planted = rng.choice(np.flatnonzero(np.isin(labels, background)), 120, replace=False)  # 3 % of tokens
    x[planted] *= 10.0
    image = np.repeat(np.arange(images), n // images)
    stats = high_norm_stats(np.linalg.norm(x, axis=1), labels, image, images, threshold, background)
    total = stats.sum(axis=0)
    assert total[0] == 120 and total[1] == n  # every planted token, nothing else
    assert total[3] / total[2] == 1.0  # all on background
    assert total[5] / total[4] == pytest.approx(0.5, abs=0.03)  # background's base rate


def test_position_r2_matches_sklearn_and_separates_planted_position():
    rng = np.random.default_rng(1)
    grid = np.stack(np.meshgrid(np.arange(4), np.arange(6), indexing="ij"), -1).reshape(-1, 2) / [3, 5]
    y_train, y_val = np.tile(grid, (40, 1)), np.tile(grid, (10, 1))
    image = np.repeat(np.arange(10), len(grid))
    noise = lambda n: rng.normal(0, 1, (n, 16))  # noqa: E731
    w = rng.normal(0, 1, (2, 4))  # position planted in 4 dims by one map, in train and val alike
    x_train = np.hstack([y_train @ w, noise(len(y_train))])
    x_val = np.hstack([y_val @ w, noise(len(y_val))])
    pred = fit_ridge(x_train, y_train)(x_val)
    reference = Ridge(alpha=1.0).fit(x_train, y_train).predict(x_val)
    np.testing.assert_allclose(pred, reference, atol=1e-8)
    pooled = position_stats(pred, y_val, image, 10).sum(axis=0)
    assert position_r2(pooled) == pytest.approx(r2_score(y_val, pred), abs=1e-10)
    assert position_r2(pooled) > 0.99
    # Stored features are float32: the Gram is then a float32 product per block, summed in float64.
    pred32 = fit_ridge(x_train.astype(np.float32), y_train, block=64)(x_val.astype(np.float32))
    np.testing.assert_allclose(pred32, Ridge(alpha=1.0).fit(x_train.astype(np.float32).astype(np.float64),
                                                            y_train).predict(x_val.astype(np.float32)), atol=1e-5)
    x_none = noise(len(y_train)), noise(len(y_val))  # no position in the features
    pred = fit_ridge(x_none[0], y_train)(x_none[1])
    assert position_r2(position_stats(pred, y_val, image, 10).sum(axis=0)) < 0.05


def test_variance_share_of_planted_dims():
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, (3000, 40))
    x[:, 7] *= 10.0  # variance 100 among 39 of variance 1
    x += rng.normal(0, 3, 40)  # means far from 0: a second moment is no variance
    image = np.repeat(np.arange(10), 300)
    sums = variance_stats(x, image, 10).sum(axis=0)
    expected = np.sort(x.var(axis=0))[::-1]
    assert top_share(1)(sums) == pytest.approx(expected[0] / expected.sum())
    assert top_share(10)(sums) == pytest.approx(expected[:10].sum() / expected.sum())
    assert top_share(1)(sums) == pytest.approx(100 / 139, abs=0.03)


# --------------------------------------------------------------------------- per-image confusion matrices

TILING = TilingSpec(None, 4, 8)
GRID = (4, 4)


def test_per_image_confusions_sum_to_the_probing_score(tmp_path):
    root = generate("cityscapes", tmp_path / "cityscapes", size="tiny")
    settings = {"lists_dir": Path(__file__).resolve().parents[1] / "config/subsets/cityscapes", "train_sets": {"set4": "training_set4.csv"},
                "val_set": "validation_set.csv"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        val = subsets.select_subset("cityscapes", "val", root=root, settings=settings, seed=0)
    attrs = {"model": "m", "arch": "planted", "weights": "random", "variant": "clean", "dataset": "cityscapes",
             "split": "val", "preset": "test", "patch_labels": "nearest_exact", "seed": 0, "data_source": "synthetic",
             "tiling": {"resize_to": None, "rows": 4, "cols": 8, "out_size": [64, 64]}, "grid": list(GRID)}
    rng = np.random.default_rng(0)
    write_planted_cityscapes(tmp_path / "val.parquet", root, val, attrs, lambda label: rng.normal(0, 1, (len(label), 4)),
                             tiling=TILING, grid=GRID)
    split = load_split(tmp_path / "val.parquet")
    target = EvalTarget.load("cityscapes", root, val)
    preds = rng.integers(0, 19, len(split.labels))
    per_image = per_image_confusions(split, preds, target)
    assert per_image.shape == (len(val), 19, 19)
    np.testing.assert_array_equal(per_image.sum(axis=0), target.score(split, preds).confusion)
    first = image_index(split, target.manifest) == 0
    one = EvalTarget.load("cityscapes", root, val.head(1))
    alone = one.score(select_samples(split, [val["sample_id"].iloc[0]]), preds[first]).confusion
    np.testing.assert_array_equal(per_image[0], alone)  # image 0's matrix is image 0 scored alone


def test_comparison_ranks_one_row_per_model():
    def rows(model, knn, r2, high):
        base = {"experiment": "card", "model": model, "dataset": "cityscapes", "layer": 12, "class": "mean",
                "n_units": 30, "preset": "test", "weights": "x", "data": "official"}
        return [
            {**base, "probe": "knn", "level": "raw", "metric": "miou", "value": knn, "lo": knn - 0.1, "hi": knn + 0.1},
            {**base, "probe": "none", "level": "", "metric": "position_r2", "value": r2, "lo": r2, "hi": r2},
            {**base, "probe": "none", "level": "", "metric": "high_norm_share", "value": high, "lo": high, "hi": high},
        ]

    table = comparison(pd.DataFrame(rows("a", 0.5, 0.2, 0.01) + rows("b", 0.6, 0.1, 0.05)), ["a", "b"])
    assert list(table["model"]) == ["a", "b"]
    assert list(table["k-NN mIoU rank"]) == [2, 1]
    assert list(table["high-norm share rank"]) == [1, 2]  # fewer high-norm tokens ranks first


def test_card_reads_the_other_studies_rows_by_their_protocol():
    """Best layer, strongest degradation over clean, Fig 6 retrieval shares, tracking at delta 1 and averaged."""
    from vitlocal.studies.card.summary import card_entries

    def row(experiment, probe, level, cls, metric, value, layer=None):
        return {"experiment": experiment, "model": "m", "probe": probe, "level": level, "class": cls,
                "metric": metric, "value": value, "layer": layer, "lo": "", "hi": "", "n_units": ""}

    rows = [row("card", "knn", "raw", "mean", "miou", 0.5, 12) | {"lo": 0.4, "hi": 0.6, "n_units": 30}]
    rows += [row("layerwise", "knn", "", "mean", "miou", v, layer) for layer, v in ((3, 0.2), (6, 0.6), (12, 0.5))]
    rows += [row("layerwise", "knn", "", "road", "iou", 0.99, 3)]  # a class row, not the mean
    rows += [row("degradation_blur", "knn", level, "mean", "miou", v)
             for level, v in (("blur-0", 0.5), ("blur-2", 0.45), ("blur-8", 0.25))]
    rows += [row("degradation_blur", "linear", "blur-8", "mean", "miou", 0.1)]  # the card reads k-NN only
    rows += [row("fair1m_retrieval", "none", "rotate-10", "same_patch", "share", 0.7),
             row("fair1m_retrieval", "none", "rotate-10", "same_patch", "count", 70.0),
             row("fair1m_retrieval", "none", "scale-0.8", "same_fine", "share", 0.2)]
    rows += [row("tracking", "none", f"delta={d}", "all", "acc_same_instance", v) for d, v in ((1, 0.9), (5, 0.5))]
    rows += [row("tracking", "none", "delta=1", "all", "acc_same_category", 0.95)]
    rows += [row("train_size", "linear", name, "mean", "miou", v, 12) for name, v in (("set2", 0.3), ("set4", 0.55))]
    entries = card_entries("m", pd.DataFrame(rows), main_train_set="set4").set_index("name")
    assert entries.loc["Cityscapes linear", "value"] == 0.55  # the main train set's, not another size
    assert entries.loc["best k-NN layer", "value"] == 6
    assert entries.loc["blur (blur-8) / clean", "value"] == pytest.approx(0.5)
    assert entries.loc["same_patch at rotate-10", "value"] == 0.7
    assert entries.loc["same_fine at scale-0.8", "value"] == 0.2
    assert entries.loc["same instance, delta 1", "value"] == 0.9
    assert entries.loc["same instance, mean over delta", "value"] == pytest.approx(0.7)
    raw = entries.loc["k-NN, raw"]
    assert (raw["lo"], raw["hi"], raw["source"]) == (0.4, 0.6, "card")
    assert np.isnan(entries.loc["best k-NN layer", "lo"])  # a description: no interval (nor any without a sidecar)


def test_published_layer_curves_are_the_papers_fig2_means():
    from vitlocal.studies.card.figures import published_layers

    curves = published_layers(["dino", "tiny_reg4"])
    assert set(curves["model"]) == {"dino"}  # a user model has no published number
    assert sorted(curves["layer"]) == list(range(1, 13))
    assert curves["published"].between(0, 1).all()
