"""Variance ranking, dimension removal, BatchNorm standardisation and ridge R²."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score as sk_r2_score

from vitlocal.probes import variance
from vitlocal.probes.variance import (
    VarianceAccumulator,
    batchnorm_standardise,
    feature_variance,
    keep_dims,
    r2_score,
    random_dims,
    remove_dims,
    ridge_r2,
    top_dims_overlap,
    top_variance_dims,
)


def _known_variance_data(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Columns with standard deviations in a shuffled known order."""
    rng = np.random.default_rng(seed)
    stds = rng.permutation(np.arange(1, 33, dtype=np.float64))
    x = rng.normal(size=(n, 32)) * stds + rng.normal(size=32) * 10
    return x.astype(np.float32), stds


def test_streaming_variance_equals_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    x, _ = _known_variance_data()
    monkeypatch.setattr(variance, "BLOCK_ROWS", 333)  # many uneven blocks
    np.testing.assert_allclose(feature_variance(x), x.astype(np.float64).var(axis=0), rtol=1e-10)
    blocks = (x[i : i + 1000] for i in range(0, len(x), 1000))
    np.testing.assert_allclose(
        feature_variance(blocks, ddof=1), x.astype(np.float64).var(axis=0, ddof=1), rtol=1e-10
    )


def test_top_dims_and_removal_follow_known_variances() -> None:
    x, stds = _known_variance_data()
    m = 5
    expected = np.argsort(-stds)[:m]  # stds distinct and far apart: sample order matches
    top = top_variance_dims(x, m)
    np.testing.assert_array_equal(top, expected)
    np.testing.assert_array_equal(top_variance_dims(feature_variance(x), m), expected)
    removed = remove_dims(x, top)
    assert removed.shape == (len(x), 32 - m)
    kept_cols = np.setdiff1d(np.arange(32), expected)
    np.testing.assert_array_equal(removed, x[:, kept_cols])
    assert feature_variance(removed).max() < feature_variance(x)[top].min()
    np.testing.assert_array_equal(keep_dims(x, top), x[:, np.sort(expected)])


def test_variance_ties_ranked_by_index() -> None:
    np.testing.assert_array_equal(
        top_variance_dims(np.array([1.0, 3.0, 3.0, 2.0, 3.0]), 4), [1, 2, 4, 3]
    )


def test_random_dims_seeded_and_overlap() -> None:
    a = random_dims(768, 200, seed=3)
    np.testing.assert_array_equal(a, random_dims(768, 200, seed=3))
    assert len(np.unique(a)) == 200 and a.min() >= 0 and a.max() < 768
    assert not np.array_equal(a, random_dims(768, 200, seed=4))
    assert top_dims_overlap([1, 5, 7, 9], np.array([9, 2, 5])) == 2


def test_dim_validation() -> None:
    x = np.zeros((3, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"dims \[4\] out of range 0..3"):
        remove_dims(x, [0, 4])
    with pytest.raises(ValueError, match="duplicates"):
        keep_dims(x, [1, 1])
    with pytest.raises(ValueError, match="m=5"):
        top_variance_dims(x, 5)


def test_batchnorm_standardise_equals_torch_batchnorm_eval() -> None:
    x, _ = _known_variance_data(n=500)
    other = _known_variance_data(n=50, seed=1)[0]
    bn = torch.nn.BatchNorm1d(32, affine=False, eps=1e-6, momentum=None).double()
    bn.train()
    bn(torch.from_numpy(x).double())  # one full-batch pass: running stats = train stats
    bn.eval()
    with torch.no_grad():
        expected = [bn(torch.from_numpy(a).double()).numpy() for a in (x, other)]
    got = batchnorm_standardise(x, other)
    assert len(got) == 2 and got[0].dtype == np.float32
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


def test_ridge_r2_equals_sklearn() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 40)) * rng.uniform(0.1, 5, size=40)
    w = rng.normal(size=(40, 3))
    y = x @ w * 0.05 + rng.normal(size=(300, 3)) + np.array([0.5, 0.2, 0.1])
    train, test = slice(0, 200), slice(200, 300)
    for alpha in (0.1, 10.0):
        sk = Ridge(alpha=alpha).fit(x[train], y[train])
        expected = sk_r2_score(y[test], sk.predict(x[test]))
        assert ridge_r2(x[train], y[train], x[test], y[test], alpha) == pytest.approx(
            expected, abs=1e-6
        )
    assert ridge_r2(x[train], y[train, 0], x[test], y[test, 0], 1.0) == pytest.approx(
        sk_r2_score(y[test, 0], Ridge(alpha=1.0).fit(x[train], y[train, 0]).predict(x[test])),
        abs=1e-6,
    )


def test_r2_constant_target_follows_sklearn() -> None:
    y_true = np.array([[1.0, 2.0], [1.0, 3.0], [1.0, 5.0]])
    for y_pred in (
        np.array([[1.0, 2.5], [1.0, 3.0], [1.0, 4.0]]),
        np.array([[0.5, 2.5], [1.0, 3.0], [1.0, 4.0]]),
    ):
        assert r2_score(y_true, y_pred) == pytest.approx(sk_r2_score(y_true, y_pred))


def test_accumulator_rejects_dim_change() -> None:
    acc = VarianceAccumulator()
    acc.update(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="block has 4 dims; earlier blocks had 3"):
        acc.update(np.zeros((2, 4)))
