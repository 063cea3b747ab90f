"""Fig 5's k-NN classifiers: Scale-MAE's weighted vote (the default) and the study's 1-NN dot product.

``scalemae`` repeats Scale-MAE's own k-NN evaluation (``mae/eval/knn.py`` of
its repository): train and test features L2-normalised, cosine similarity,
the ``k`` most similar training images vote for their class with weight
``exp(similarity / T)`` (T = 0.07), the class with the largest total wins
(top-1 accuracy). Scale-MAE leaves exact vote ties to ``probs.sort``; here the
lowest class label wins (a stable descending sort), and among training images
with exactly equal similarity the lowest index is taken (``nearest_neighbors``).

``study`` is the k-NN of the rest of the study: the nearest training image by
raw dot product (1-NN, unnormalised features).
"""

from __future__ import annotations

import numpy as np
import torch

from ...errors import ConfigError
from ...probes.knn import knn_predict, nearest_neighbors

KNN_MODES = ("scalemae", "study")
#: Scale-MAE's ``sigma`` of ``kNN(...)``: the temperature of the vote weights.
SCALEMAE_TEMPERATURE = 0.07


def knn_protocol(mode: str, k: int, temperature: float) -> dict[str, object]:
    """The k, metric and vote a mode uses (recorded in every Fig 5 row)."""
    if mode == "scalemae":
        return {"knn": mode, "k": int(k), "metric": "cosine", "vote": f"exp(sim/{temperature:g})",
                "temperature": float(temperature)}
    if mode == "study":
        return {"knn": mode, "k": 1, "metric": "dot", "vote": "nearest", "temperature": None}
    raise ConfigError(f"scene.knn = {mode!r}; expected one of {KNN_MODES}")


def weighted_vote(similarities: np.ndarray, neighbor_labels: np.ndarray, n_classes: int,
                  temperature: float) -> np.ndarray:
    """Per row of ``(n, k)`` similarities and labels: the class with the largest sum of ``exp(sim / T)``.

    Exact ties go to the lowest label.
    """
    weights = np.exp(np.asarray(similarities, dtype=np.float64) / float(temperature))
    scores = np.zeros((len(weights), int(n_classes)), dtype=np.float64)
    np.add.at(scores, (np.arange(len(weights))[:, None], np.asarray(neighbor_labels, dtype=np.int64)), weights)
    return scores.argmax(axis=1)


def knn_classify(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, *, mode: str, k: int,
                 temperature: float, device: torch.device | str | None = None) -> np.ndarray:
    """Predicted labels of ``test_x`` under ``mode`` (see the module docstring)."""
    protocol = knn_protocol(mode, k, temperature)
    train_y = np.asarray(train_y, dtype=np.int64)
    if mode == "study":
        return knn_predict(train_x, train_y, test_x, k=1, metric="dot", device=device)
    if not 1 <= k <= len(train_y):
        raise ConfigError(f"scene.knn_k = {k}: there are {len(train_y)} training images; expected 1 <= k <= that")
    idx, sims = nearest_neighbors(train_x, test_x, k=protocol["k"], metric="cosine", device=device)
    return weighted_vote(sims, train_y[idx], int(train_y.max()) + 1, temperature)
