"""Fig 5's k-NN: Scale-MAE's weighted vote (mae/eval/knn.py) against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vitlocal.errors import ConfigError
from vitlocal.studies.scene.knn import knn_classify, weighted_vote


def polar(degrees, norm):
    return [norm * math.cos(math.radians(degrees)), norm * math.sin(math.radians(degrees))]


# Query along x. Train: label 2 at 0 deg (tiny norm), label 0 at +-60 deg (norms 5 and 3: equal cosine 0.5),
# label 1 at 90 deg (cosine 0) and at 180 deg (cosine -1).
TRAIN = np.array([polar(0, 0.1), polar(60, 5), polar(-60, 3), polar(90, 1), polar(180, 1)], np.float32)
LABELS = np.array([2, 0, 0, 1, 1])
QUERY = np.array([[1.0, 0.0]], np.float32)


def test_scalemae_vote_by_hand():
    """k = 4 (more than label 2's single training image): neighbours at cosine 1, 0.5, 0.5, 0."""
    votes = {2: math.exp(1 / 0.07), 0: 2 * math.exp(0.5 / 0.07), 1: math.exp(0 / 0.07)}
    assert max(votes, key=votes.get) == 2  # 1.6e6 against 2.5e3: the one near image outvotes two farther ones
    got = knn_classify(TRAIN, LABELS, QUERY, mode="scalemae", k=4, temperature=0.07, device="cpu")
    assert got.tolist() == [2]
    # at T = 1 the two farther images win: 2 e^0.5 = 3.30 > e^1 = 2.72
    assert 2 * math.exp(0.5) > math.exp(1)
    assert knn_classify(TRAIN, LABELS, QUERY, mode="scalemae", k=4, temperature=1.0, device="cpu").tolist() == [0]
    # the study's 1-NN raw dot product picks the long vector at 60 deg (dot 2.5): features are not normalised
    assert knn_classify(TRAIN, LABELS, QUERY, mode="study", k=4, temperature=0.07, device="cpu").tolist() == [0]
    # k = 1: the nearest by cosine
    assert knn_classify(TRAIN, LABELS, QUERY, mode="scalemae", k=1, temperature=0.07, device="cpu").tolist() == [2]


def test_scalemae_vote_sums_weights_over_all_k_including_other_classes():
    """k = 5 = every training image: label 1's cosines 0 and -1 add e^0 + e^(-1/T), still far below the rest."""
    got = knn_classify(TRAIN, LABELS, QUERY, mode="scalemae", k=5, temperature=0.07, device="cpu")
    assert got.tolist() == [2]
    # a query at 120 deg: cosines -0.5 (0 deg), 0.5 (60), -1 (-60), 0.87 (90), 0.5 (180): label 1 wins
    query = np.array([polar(120, 1)], np.float32)
    got = knn_classify(TRAIN, LABELS, query, mode="scalemae", k=5, temperature=0.07, device="cpu")
    assert got.tolist() == [1]


def test_exact_ties_go_to_the_lowest_label():
    train = np.array([polar(30, 1), polar(-30, 1), polar(150, 1)], np.float32)  # equal cosines to the query
    got = knn_classify(train, np.array([3, 1, 0]), QUERY, mode="scalemae", k=2, temperature=0.07, device="cpu")
    assert got.tolist() == [1]
    assert weighted_vote(np.array([[0.3, 0.3]]), np.array([[4, 1]]), 5, 0.07).tolist() == [1]
    assert weighted_vote(np.array([[0.3, 0.3, 0.1]]), np.array([[4, 1, 4]]), 5, 0.07).tolist() == [4]


def test_k_larger_than_the_training_set_is_refused():
    with pytest.raises(ConfigError, match="scene.knn_k = 6: there are 5 training images"):
        knn_classify(TRAIN, LABELS, QUERY, mode="scalemae", k=6, temperature=0.07, device="cpu")
    with pytest.raises(ConfigError, match="scene.knn = 'dino'"):
        knn_classify(TRAIN, LABELS, QUERY, mode="dino", k=1, temperature=0.07, device="cpu")
