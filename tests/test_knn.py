"""k-NN: exactness against scikit-learn / NumPy, tie rules, block-size invariance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from vitlocal.probes.knn import knn_predict, majority_vote, nearest_neighbors


def _data(n_train: int = 600, n_query: int = 200, dim: int = 24, classes: int = 7, seed: int = 0):
    rng = np.random.default_rng(seed)
    train_x = rng.normal(size=(n_train, dim)).astype(np.float32)
    # Uneven norms so that dot, l2 and cosine rank differently.
    train_x *= rng.uniform(0.2, 3.0, size=(n_train, 1)).astype(np.float32)
    train_y = rng.integers(0, classes, n_train)
    query_x = rng.normal(size=(n_query, dim)).astype(np.float32)
    return train_x, train_y, query_x


@pytest.mark.parametrize(("metric", "sk_metric"), [("l2", "euclidean"), ("cosine", "cosine")])
def test_1nn_equals_sklearn_brute(metric: str, sk_metric: str) -> None:
    train_x, train_y, query_x = _data()
    ref = KNeighborsClassifier(n_neighbors=1, algorithm="brute", metric=sk_metric)
    expected = ref.fit(train_x, train_y).predict(query_x)
    got = knn_predict(train_x, train_y, query_x, metric=metric, block_size=64, device="cpu")
    np.testing.assert_array_equal(got, expected)


def test_dot_equals_numpy_argmax_and_sklearn_callable() -> None:
    train_x, train_y, query_x = _data()
    sims = query_x.astype(np.float64) @ train_x.astype(np.float64).T
    idx, scores = nearest_neighbors(
        train_x, query_x, k=1, metric="dot", block_size=50, device="cpu"
    )
    np.testing.assert_array_equal(idx[:, 0], sims.argmax(axis=1))
    np.testing.assert_allclose(scores[:, 0], sims.max(axis=1), rtol=1e-5)
    # scikit-learn has no raw dot metric; a callable "distance" -q.g ranks the same way.
    small = slice(0, 60)
    ref = KNeighborsClassifier(n_neighbors=1, algorithm="brute", metric=lambda a, b: -a @ b)
    expected = ref.fit(train_x[:150], train_y[:150]).predict(query_x[small])
    got = knn_predict(train_x[:150], train_y[:150], query_x[small], metric="dot", device="cpu")
    np.testing.assert_array_equal(got, expected)


def test_l2_scores_are_squared_distances_sorted() -> None:
    train_x, _, query_x = _data(n_train=300, n_query=40)
    dist = ((query_x[:, None, :].astype(np.float64) - train_x[None]) ** 2).sum(axis=2)
    idx, scores = nearest_neighbors(train_x, query_x, k=4, metric="l2", block_size=64, device="cpu")
    np.testing.assert_array_equal(idx, np.argsort(dist, axis=1)[:, :4])
    np.testing.assert_allclose(scores, np.sort(dist, axis=1)[:, :4], rtol=1e-4)


@pytest.mark.parametrize("metric", ["dot", "l2", "cosine"])
@pytest.mark.parametrize("k", [1, 5])
def test_block_size_invariance(metric: str, k: int) -> None:
    train_x, _, query_x = _data(n_train=150, n_query=40)
    ref_idx, _ = nearest_neighbors(
        train_x, query_x, k=k, metric=metric, block_size=10_000, device="cpu"
    )
    for block in (7, 33, 64):
        idx, _ = nearest_neighbors(
            train_x, query_x, k=k, metric=metric, block_size=block, device="cpu"
        )
        np.testing.assert_array_equal(idx, ref_idx)


@pytest.mark.parametrize("k", [1, 3])
def test_exact_ties_go_to_lowest_index_for_any_block_size(k: int) -> None:
    # Small integers: every dot product is exact, so duplicates tie exactly.
    rng = np.random.default_rng(1)
    base = rng.integers(-3, 4, size=(40, 8)).astype(np.float32)
    gallery = np.concatenate([base, base, base])  # row i ties with i+40 and i+80
    query = base[:25] + 0.0
    for block in (5, 16, 40, 1000):
        idx, _ = nearest_neighbors(gallery, query, k=k, metric="l2", block_size=block, device="cpu")
        # Each query's own row (distance 0) appears three times: indices i, i+40, i+80.
        np.testing.assert_array_equal(idx[:, 0], np.arange(25))
        if k == 3:
            np.testing.assert_array_equal(idx, np.arange(25)[:, None] + np.array([0, 40, 80]))


def test_k3_vote_equals_sklearn_without_ties() -> None:
    # Two classes and k=3: a vote can never tie.
    train_x, _, query_x = _data(classes=2)
    train_y = (train_x[:, 0] + 0.5 * train_x[:, 1] > 0).astype(np.int64)
    ref = KNeighborsClassifier(n_neighbors=3, algorithm="brute", metric="euclidean")
    expected = ref.fit(train_x, train_y).predict(query_x)
    got = knn_predict(train_x, train_y, query_x, k=3, metric="l2", block_size=100, device="cpu")
    np.testing.assert_array_equal(got, expected)


def test_vote_ties_go_to_nearest_tied_label() -> None:
    labels = np.array(
        [
            [4, 2, 2, 4, 9],  # 4 and 2 tie, the nearest neighbour's label 4 wins
            [9, 2, 3, 3, 2],  # 2 and 3 tie, 2 has the nearer member
            [1, 1, 5, 5, 5],  # clear majority 5
        ]
    )
    np.testing.assert_array_equal(majority_vote(labels), [4, 2, 5])


def test_float16_input_matches_float32_of_same_values() -> None:
    train_x, train_y, query_x = _data()
    t16, q16 = train_x.astype(np.float16), query_x.astype(np.float16)
    expected = knn_predict(t16.astype(np.float32), train_y, q16.astype(np.float32), device="cpu")
    np.testing.assert_array_equal(knn_predict(t16, train_y, q16, device="cpu"), expected)
    np.testing.assert_array_equal(
        knn_predict(torch.from_numpy(t16), train_y, torch.from_numpy(q16), device="cpu"), expected
    )


def test_rejects_bad_inputs() -> None:
    train_x, train_y, query_x = _data(n_train=10, n_query=3)
    with pytest.raises(ValueError, match="metric='manhattan'"):
        nearest_neighbors(train_x, query_x, metric="manhattan")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k=11"):
        nearest_neighbors(train_x, query_x, k=11)
    with pytest.raises(ValueError, match="24 dims but query_x has 5"):
        nearest_neighbors(train_x, query_x[:, :5])
    with pytest.raises(ValueError, match="one label per row"):
        knn_predict(train_x, train_y[:5], query_x)
    bad = query_x.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"query_x rows 0..2 contain NaN"):
        nearest_neighbors(train_x, bad)


@pytest.mark.parametrize("metric", ["dot", "l2", "cosine"])
def test_cpu_1nn_path_agrees_with_the_top_k_path(metric: str) -> None:
    # k=1 on the CPU runs in numpy alone; k=2 runs the general torch path.
    # dot / l2 on integer features: exact ties between duplicated rows, same
    # winner rule. Normalised (cosine) scores are rounded, so no exact ties.
    rng = np.random.default_rng(2)
    if metric == "cosine":
        gallery, _, query = _data(n_train=130, n_query=45)
    else:
        base = rng.integers(-3, 4, size=(50, 8)).astype(np.float32)
        extra = rng.integers(-3, 4, size=(30, 8)).astype(np.float32)
        gallery = np.concatenate([base, extra, base])
        query = rng.integers(-3, 4, size=(45, 8)).astype(np.float32)
    for block in (7, 50, 1000):
        idx1, s1 = nearest_neighbors(gallery, query, k=1, metric=metric, block_size=block, device="cpu")
        idx2, s2 = nearest_neighbors(gallery, query, k=2, metric=metric, block_size=block, device="cpu")
        np.testing.assert_array_equal(idx1[:, 0], idx2[:, 0])
        np.testing.assert_allclose(s1[:, 0], s2[:, 0], rtol=1e-6, atol=1e-5)


def test_gallery_inf_is_named_and_huge_finite_rows_are_not_rejected() -> None:
    train_x, _, query_x = _data(n_train=10, n_query=3)
    bad = train_x.copy()
    bad[7, 0] = np.inf
    with pytest.raises(ValueError, match=r"gallery_x rows 4..7 contain NaN or inf"):
        nearest_neighbors(bad, query_x, block_size=4, device="cpu")
    # Row sums overflow float32 here, yet every value is finite: accepted.
    huge = np.full((4, 24), 3e38, dtype=np.float32)
    idx, _ = nearest_neighbors(huge, np.full((1, 24), 1e-30, dtype=np.float32), device="cpu")
    assert idx.shape == (1, 1)
