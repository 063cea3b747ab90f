"""Exact k-nearest-neighbour search and classification over patch features.

The study labels every validation patch with the label of its nearest training
patch (1-NN over ~450k Cityscapes patches); retrieval (FAIR1M) and tracking
(BDD100K, MOT17) reuse the same search. The search is exact and blockwise:
query blocks x gallery blocks with ``torch`` matmuls and a running top-k, so
memory stays bounded by ``block_size`` whatever the set sizes, and it runs on
the GPU when one is present.

Metrics (``metric=``):

- ``"dot"``: raw dot product of the unnormalised features, largest wins. This
  is what the authors' code used [code] and the paper preset's default.
- ``"l2"``: smallest squared Euclidean distance, ranked by
  ``||g||^2 - 2 q.g`` (``||q||^2`` is constant per query).
- ``"cosine"``: dot product of L2-normalised features, largest wins.

Ties: among gallery items with *exactly* equal scores the lowest gallery index
wins, independently of ``block_size``. Scores that differ only by
floating-point rounding are not ties, and a different BLAS kernel (other
hardware, other block shapes) may round them differently.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import numpy as np
import torch

Metric = Literal["dot", "l2", "cosine"]
METRICS: tuple[str, ...] = ("dot", "l2", "cosine")

ArrayLike = np.ndarray | torch.Tensor

#: Working-memory budget for one (query block x gallery block) step on CPU:
#: small enough for the score matrix to stay in the last-level cache while it
#: is reduced (32 MiB: 250 GFLOP/s on 2 cores, against 218 at 256 MiB).
CPU_BUDGET_BYTES = 32 * 2**20
#: Upper bound on the same budget on a GPU (also capped at half the free memory).
GPU_BUDGET_BYTES = 4 * 2**30


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` means the GPU when there is one, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def shared_tensor(x: ArrayLike) -> torch.Tensor:
    """``x`` as a tensor that shares its memory (no copy).

    Read-only arrays (memory maps, Arrow buffers) are accepted without torch's
    warning: nothing here writes to its inputs.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.as_tensor(x)


def auto_block_size(dim: int, k: int, device: torch.device, dtype: torch.dtype) -> int:
    """Rows per query/gallery block so that one step fits the memory budget.

    One step holds a ``b x b`` score matrix plus, for ``k > 1``, boolean masks
    and an int32 cumulative count of the same shape, and two ``b x dim``
    feature blocks.
    """
    budget = CPU_BUDGET_BYTES
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = min(GPU_BUDGET_BYTES, free // 2)
    elem = torch.empty((), dtype=dtype).element_size()
    per_pair = elem if k == 1 else elem + 4 + 6  # scores, int32 cumsum, ~6 boolean masks
    per_row = 2 * dim * elem
    # b^2 * per_pair + b * per_row <= budget, solved for b.
    b = (-per_row + math.sqrt(per_row**2 + 4 * per_pair * budget)) / (2 * per_pair)
    return max(256, int(b) // 256 * 256)


def nearest_neighbors(
    gallery_x: ArrayLike,
    query_x: ArrayLike,
    *,
    k: int = 1,
    metric: Metric = "dot",
    block_size: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` gallery items for every query, best first.

    Returns ``(indices, scores)``, both ``(n_query, k)``: ``indices`` (int64)
    into ``gallery_x``; ``scores`` are similarities for ``dot``/``cosine``
    (descending) and squared Euclidean distances for ``l2`` (ascending).
    Inputs may be float16; each block is upcast to ``dtype`` on ``device``.
    """
    _check_features(gallery_x, "gallery_x")
    _check_features(query_x, "query_x")
    if gallery_x.shape[1] != query_x.shape[1]:
        raise ValueError(
            f"gallery_x has {gallery_x.shape[1]} dims but query_x has {query_x.shape[1]}; "
            "both must come from the same model/layer"
        )
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r} is unknown; expected one of {METRICS}")
    n_gallery = gallery_x.shape[0]
    if not 1 <= k <= n_gallery:
        raise ValueError(f"k={k} must be between 1 and the gallery size {n_gallery}")
    dev = resolve_device(device)
    if block_size is None:
        block_size = auto_block_size(gallery_x.shape[1], k, dev, dtype)
    if block_size < 1:
        raise ValueError(f"block_size={block_size} must be >= 1")

    n_query = query_x.shape[0]
    indices = np.empty((n_query, k), dtype=np.int64)
    scores = np.empty((n_query, k), dtype=torch.empty(0, dtype=dtype).numpy().dtype)
    with torch.inference_mode():
        for q0 in range(0, n_query, block_size):
            q = _to_block(query_x, q0, q0 + block_size, dev, dtype, metric, "query_x")
            best_key, best_idx = _search_block_row(gallery_x, q, k, metric, block_size, dev, dtype)
            indices[q0 : q0 + len(q)] = best_idx.cpu().numpy()
            scores[q0 : q0 + len(q)] = _key_to_score(best_key, q, metric).cpu().numpy()
    return indices, scores


def knn_predict(
    train_x: ArrayLike,
    train_y: np.ndarray,
    query_x: ArrayLike,
    *,
    k: int = 1,
    metric: Metric = "dot",
    block_size: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> np.ndarray:
    """Label of the nearest training item (``k=1``) or majority vote of the ``k`` nearest.

    Vote ties go to the tied label whose best-ranked neighbour is nearest; when
    the nearest neighbour's label is among the tied labels, it wins.
    """
    train_y = np.asarray(train_y)
    if train_y.ndim != 1 or len(train_y) != train_x.shape[0]:
        raise ValueError(
            f"train_y has shape {train_y.shape}; expected ({train_x.shape[0]},), "
            "one label per row of train_x"
        )
    idx, _ = nearest_neighbors(
        train_x, query_x, k=k, metric=metric, block_size=block_size, device=device, dtype=dtype
    )
    return majority_vote(train_y[idx])


def majority_vote(neighbor_labels: np.ndarray) -> np.ndarray:
    """Most frequent label per row of ``(n, k)`` labels ordered nearest first.

    Among equally frequent labels the one appearing first (nearest) wins.
    """
    if neighbor_labels.shape[1] == 1:
        return neighbor_labels[:, 0].copy()
    # counts[i, j] = how often row i's j-th label occurs in row i.
    counts = (neighbor_labels[:, :, None] == neighbor_labels[:, None, :]).sum(axis=2)
    winner = counts.argmax(axis=1)  # first maximum = nearest among tied labels
    return neighbor_labels[np.arange(len(neighbor_labels)), winner]


def _check_features(x: ArrayLike, name: str) -> None:
    if x.ndim != 2:
        raise ValueError(f"{name} has shape {tuple(x.shape)}; expected (n_items, n_dims)")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty; expected at least one row")


def _to_block(
    x: ArrayLike,
    start: int,
    stop: int,
    device: torch.device,
    dtype: torch.dtype,
    metric: str,
    name: str,
) -> torch.Tensor:
    """Rows ``start:stop`` as a ``dtype`` tensor on ``device`` (normalised for cosine).

    On the CPU every step is numpy's: a torch op between OpenBLAS products
    waits on both libraries' spinning thread pools (see ``_nearest_row_numpy``).
    """
    if _runs_in_numpy(device, dtype):
        block = shared_tensor(x[start:stop]).cpu().numpy()
        block = block.astype(torch.empty((), dtype=dtype).numpy().dtype, copy=False)
        # A row sum is non-finite when the row holds NaN or inf (or overflows,
        # hence the exact test before the error): one pass at memory speed.
        finite = np.isfinite(block.sum(axis=1)).all() or np.isfinite(block).all()
        if finite and metric == "cosine":
            block = block / np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
        block = torch.from_numpy(block)
    else:
        block = shared_tensor(x[start:stop]).to(device=device, dtype=dtype)
        finite = bool(torch.isfinite(block).all())
        if metric == "cosine":
            block = torch.nn.functional.normalize(block, dim=1)
    if not finite:
        raise ValueError(f"{name} rows {start}..{start + len(block) - 1} contain NaN or inf")
    return block


def _runs_in_numpy(device: torch.device, dtype: torch.dtype) -> bool:
    """CPU steps in float32/float64 go through numpy (see ``_nearest_row_numpy``)."""
    return device.type == "cpu" and dtype in (torch.float32, torch.float64)


def _search_block_row(
    gallery_x: ArrayLike,
    q: torch.Tensor,
    k: int,
    metric: str,
    block_size: int,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Running top-``k`` of one query block over all gallery blocks.

    Keys are "larger is better" (``2 q.g - ||g||^2`` for l2). Candidates are
    kept sorted by (key descending, gallery index ascending).
    """
    if k == 1 and _runs_in_numpy(device, dtype):
        return _nearest_row_numpy(gallery_x, q, metric, block_size, dtype)
    best_key = torch.full((len(q), 0), -torch.inf, device=device, dtype=dtype)
    best_idx = torch.zeros((len(q), 0), device=device, dtype=torch.int64)
    for g0 in range(0, gallery_x.shape[0], block_size):
        g = _to_block(gallery_x, g0, g0 + block_size, device, dtype, metric, "gallery_x")
        blk_key, blk_idx = _block_topk(_ranking_key(q, g, metric), k)
        # Earlier blocks hold lower indices, so a stable sort keeps them first on ties.
        cand_key = torch.cat([best_key, blk_key], dim=1)
        cand_idx = torch.cat([best_idx, blk_idx + g0], dim=1)
        order = torch.sort(cand_key, dim=1, descending=True, stable=True).indices[:, :k]
        best_key = cand_key.gather(1, order)
        best_idx = cand_idx.gather(1, order)
    return best_key, best_idx


def _nearest_row_numpy(
    gallery_x: ArrayLike, q: torch.Tensor, metric: str, block_size: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """The CPU 1-NN of one query block, in numpy alone: same keys, same ties.

    numpy's OpenBLAS GEMM is ~1.25x torch's MKL on this project's AMD
    machines, but interleaving torch ops with it makes both thread pools spin
    against each other (a 0.06 ms reduction took 6 ms): so every step of the
    row (product, l2 correction, argmax, running best) stays in numpy, into
    one score buffer reused for the whole row (a fresh one per block costs
    page faults on every step).
    """
    q_np = q.numpy()
    if metric == "l2":
        q_np = 2 * q_np
    rows = np.arange(len(q_np))
    best_key = np.full(len(q_np), -np.inf, dtype=q_np.dtype)
    best_idx = np.zeros(len(q_np), dtype=np.int64)
    scores = np.empty((len(q_np), min(block_size, gallery_x.shape[0])), dtype=q_np.dtype)
    for g0 in range(0, gallery_x.shape[0], block_size):
        g = _to_block(gallery_x, g0, g0 + block_size, torch.device("cpu"), dtype, metric, "gallery_x")
        g_np = g.numpy()
        key = np.matmul(q_np, g_np.T, out=scores[:, : len(g_np)])
        if metric == "l2":
            key -= np.einsum("ij,ij->i", g_np, g_np)
        col = key.argmax(axis=1)  # first maximum: lowest index on exact ties
        value = key[rows, col]
        better = value > best_key  # strict: an earlier block wins exact ties
        best_key[better] = value[better]
        best_idx[better] = col[better] + g0
    return torch.from_numpy(best_key[:, None]), torch.from_numpy(best_idx[:, None])


def _ranking_key(q: torch.Tensor, g: torch.Tensor, metric: str) -> torch.Tensor:
    """``(len(q), len(g))`` scores, larger is better.

    A function of its own so the matrix is freed before the next block's is
    allocated (otherwise two coexist at the peak).
    """
    key = q @ g.T
    if metric == "l2":
        key.mul_(2).sub_((g * g).sum(dim=1))
    return key


def _block_topk(key: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``min(k, n)`` columns of each row, ties resolved to the lowest column."""
    if k == 1:
        value, index = key.max(dim=1, keepdim=True)  # documented: first maximum
        return value, index
    k = min(k, key.shape[1])
    kth = key.topk(k, dim=1).values[:, -1:]
    above = key > kth
    need = k - above.sum(dim=1, keepdim=True, dtype=torch.int32)
    at = key == kth
    take = above | (at & (at.cumsum(dim=1, dtype=torch.int32) <= need))
    # Exactly k columns per row are taken; nonzero lists them row-major, ascending.
    index = take.nonzero()[:, 1].view(len(key), k)
    value = key.gather(1, index)
    order = torch.sort(value, dim=1, descending=True, stable=True).indices
    return value.gather(1, order), index.gather(1, order)


def _key_to_score(key: torch.Tensor, q: torch.Tensor, metric: str) -> torch.Tensor:
    """Ranking key to the reported score (squared distance for l2)."""
    if metric != "l2":
        return key
    return ((q * q).sum(dim=1, keepdim=True) - key).clamp_min_(0)
