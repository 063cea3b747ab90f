"""Nearest object at ``t + Δ``: same-instance and same-category accuracy, batched over a whole video.

For every object at frame ``t`` and every gap ``Δ``, the candidate objects are
those of frame ``t + Δ``; the prediction is the candidate of largest
similarity (``dot``: raw dot product [code], ``cosine``, or ``l2``: smallest
distance). An object is a query only if its track is among the candidates
(it is absent at ``t + Δ`` otherwise). Ignored boxes (crowds, distractors,
non-pedestrians) are dropped before this module: neither queries nor
candidates.

[code] Accuracy is averaged over frame pairs ``(t, t + Δ)`` that have at
least one query (the authors' "accuracy averaged over frame pairs"); the
per-query pooled accuracy and the counts are kept as well.

Work is batched: objects are ordered by frame residue modulo the gcd of the
gap differences (2 for the paper's odd gaps), then frame, then track. Query
frames of one residue are taken in chunks of ``CHUNK_FRAMES``; each chunk's
objects are compared in one matrix product with the contiguous run of rows
holding every frame they can reach (``t + min gap`` .. ``t + max gap`` of the
other residue: about ``CHUNK_FRAMES + #gaps`` frames, of which each query
frame needs ``#gaps``), and the per-gap candidate segments are reduced by a
padded gather. No loop runs per object or per pair.

Ties (exactly equal scores): the candidate first in (frame, track) order wins.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch

from vitlocal.errors import ConfigError

METRICS = ("dot", "cosine", "l2")
#: Query frames per matrix product (candidate block ~ (chunk + #gaps) frames of objects).
CHUNK_FRAMES = 32


@dataclasses.dataclass
class GapCounts:
    """Sums over frame pairs, one entry per gap: what the accuracies are made of."""

    gaps: np.ndarray
    pairs: np.ndarray  #: frame pairs with at least one query
    pair_acc_instance: np.ndarray  #: sum over those pairs of the pair's same-instance accuracy
    pair_acc_category: np.ndarray
    queries: np.ndarray
    correct_instance: np.ndarray
    correct_category: np.ndarray

    @classmethod
    def zeros(cls, gaps: Sequence[int]) -> GapCounts:
        gaps = np.asarray(gaps, dtype=np.int64)
        z = lambda dtype: np.zeros(len(gaps), dtype=dtype)
        return cls(gaps, z(np.int64), z(np.float64), z(np.float64), z(np.int64), z(np.int64), z(np.int64))

    def __iadd__(self, other: GapCounts) -> GapCounts:  # noqa: PYI034 (a dataclass, never subclassed)
        if not np.array_equal(self.gaps, other.gaps):
            raise ValueError(f"cannot add counts of gaps {other.gaps.tolist()} to {self.gaps.tolist()}")
        for field in ("pairs", "pair_acc_instance", "pair_acc_category", "queries", "correct_instance",
                      "correct_category"):
            setattr(self, field, getattr(self, field) + getattr(other, field))
        return self

    def accuracy(self, what: str, average: str = "pairs") -> np.ndarray:
        """Same-``what`` (instance / category) accuracy per gap, averaged over frame ``pairs`` or ``queries``."""
        with np.errstate(invalid="ignore", divide="ignore"):
            if average == "pairs":
                return getattr(self, f"pair_acc_{what}") / self.pairs
            return getattr(self, f"correct_{what}") / self.queries


def check_gaps(gaps: Sequence[int]) -> np.ndarray:
    """Sorted distinct positive gaps (a ``ConfigError`` names ``tracking.gaps`` otherwise)."""
    values = np.asarray(sorted({int(g) for g in gaps}), dtype=np.int64)
    if values.size == 0 or values[0] < 1:
        raise ConfigError(f"tracking.gaps = {list(gaps)}; expected frame gaps >= 1")
    return values


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + n)`` for every ``(s, n)``."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(starts, counts) + (np.arange(total) - offsets)


def gap_step(gaps: Sequence[int]) -> int:
    """The common step of the gaps (gcd of their differences; 1 for a single gap): all gaps agree modulo it."""
    gaps = check_gaps(gaps)
    return int(np.gcd.reduce(np.diff(gaps))) if len(gaps) > 1 else 1


def canonical_order(frame: np.ndarray, track: np.ndarray, gaps: Sequence[int]) -> np.ndarray:
    """The object order :func:`match_video` works in: by frame residue modulo :func:`gap_step`, frame, track.

    Query frames of one residue then have all their candidates in one
    contiguous run of rows (the other residue for odd gaps), so each product
    reads slices, not gathered copies. Callers that lay features out in this
    order spare :func:`match_video` a copy.
    """
    frame = np.asarray(frame, dtype=np.int64)
    return np.lexsort((np.asarray(track, dtype=np.int64), frame, frame % gap_step(gaps)))


def match_video(
    features: torch.Tensor,
    frame: np.ndarray,
    track: np.ndarray,
    category: np.ndarray,
    gaps: Sequence[int],
    metric: str = "dot",
) -> GapCounts:
    """Counts per gap of one video's objects.

    ``features`` ``(M, D)`` (on the device the products should run on), and
    per object its ``frame`` number, ``track`` and ``category`` codes (ints),
    in any order (:func:`canonical_order` avoids a copy).
    """
    if metric not in METRICS:
        raise ConfigError(f"unknown similarity {metric!r} for tracking; expected one of {METRICS}")
    gaps = check_gaps(gaps)
    frame, track, category = (np.asarray(a, dtype=np.int64) for a in (frame, track, category))
    if features.ndim != 2 or not len(frame) == len(track) == len(category) == len(features):
        raise ValueError(f"features {tuple(features.shape)} and {len(frame)} frames / {len(track)} tracks / "
                         f"{len(category)} categories must have one row per object")
    counts = GapCounts.zeros(gaps)
    if len(frame) == 0:
        return counts
    order = canonical_order(frame, track, gaps)
    x = features
    if not np.array_equal(order, np.arange(len(order))):
        frame, track, category = frame[order], track[order], category[order]
        x = features[torch.as_tensor(order, device=features.device)]
    if metric == "cosine":
        x = torch.nn.functional.normalize(x, dim=1)
    sq_norm = (x * x).sum(dim=1) if metric == "l2" else None
    starts = np.flatnonzero(np.r_[True, frame[1:] != frame[:-1]])
    sizes = np.diff(np.r_[starts, len(frame)])
    numbers = frame[starts]
    step = gap_step(gaps)
    residue = numbers % step
    track_t = torch.as_tensor(track, device=x.device)
    category_t = torch.as_tensor(category, device=x.device)
    video = _Video(x, sq_norm, track_t, category_t, numbers, starts, sizes)
    for r in range(step):
        queries = np.flatnonzero(residue == r)
        candidates = np.flatnonzero(residue == (r + gaps[0]) % step)
        if queries.size == 0 or candidates.size == 0:
            continue
        for i in range(0, len(queries), CHUNK_FRAMES):
            chunk = queries[i:i + CHUNK_FRAMES]
            lo = int(np.searchsorted(numbers[candidates], numbers[chunk[0]] + gaps[0], "left"))
            hi = int(np.searchsorted(numbers[candidates], numbers[chunk[-1]] + gaps[-1], "right"))
            if lo < hi:
                _match_chunk(video, chunk, candidates[lo:hi], gaps, counts)
    return counts


@dataclasses.dataclass(frozen=True)
class _Video:
    """One video's objects in canonical order, and its frames as runs of rows."""

    x: torch.Tensor
    sq_norm: torch.Tensor | None
    track: torch.Tensor
    category: torch.Tensor
    numbers: np.ndarray  #: frame number of each run
    starts: np.ndarray  #: first row of each frame
    sizes: np.ndarray  #: objects per frame


def _match_chunk(video: _Video, chunk: np.ndarray, cand_frames: np.ndarray, gaps: np.ndarray,
                 counts: GapCounts) -> None:
    """One matrix product: the objects of the query frames ``chunk`` against the run of candidate frames."""
    v = video
    q0, q1 = int(v.starts[chunk[0]]), int(v.starts[chunk[-1]] + v.sizes[chunk[-1]])
    c0, c1 = int(v.starts[cand_frames[0]]), int(v.starts[cand_frames[-1]] + v.sizes[cand_frames[-1]])
    device = v.x.device
    scores = v.x[q0:q1] @ v.x[c0:c1].T  # (Q, C): contiguous slices, no copies
    if v.sq_norm is not None:
        scores.mul_(2).sub_(v.sq_norm[c0:c1])
    # Per query and gap, the candidate segment of frame t + gap, padded to the largest frame.
    cand_numbers = v.numbers[cand_frames]  # increasing
    wanted = v.numbers[chunk][:, None] + gaps[None, :]  # (F, G)
    found = np.minimum(np.searchsorted(cand_numbers, wanted), len(cand_numbers) - 1)
    target = np.where(cand_numbers[found] == wanted, found, -1)
    query_frame = np.repeat(np.arange(len(chunk)), v.sizes[chunk])  # index into chunk
    target = target[query_frame]  # (Q, G) index into cand_frames, -1 if absent
    present = target >= 0
    safe = cand_frames[np.maximum(target, 0)]
    seg_start = np.where(present, v.starts[safe] - c0, 0)
    seg_size = np.where(present, v.sizes[safe], 0)
    width = int(v.sizes[cand_frames].max())
    k = torch.arange(width, device=device)
    seg_start_t, seg_size_t = (torch.as_tensor(a, device=device) for a in (seg_start, seg_size))
    column = (seg_start_t[..., None] + k).clamp_(max=c1 - c0 - 1)  # (Q, G, K)
    valid = k < seg_size_t[..., None]
    n_q, n_g = target.shape
    seg_scores = scores.gather(1, column.view(n_q, -1)).view(n_q, n_g, width)
    seg_scores = seg_scores.masked_fill(~valid, -math.inf)
    best = seg_scores.argmax(dim=-1, keepdim=True)  # first maximum: lowest track of the frame
    best_row = c0 + column.gather(-1, best).squeeze(-1)  # (Q, G) object row
    q_track = v.track[q0:q1][:, None]
    q_category = v.category[q0:q1][:, None]
    is_query = ((v.track[c0:c1][column] == q_track[..., None]) & valid).any(dim=-1)
    right_instance = (v.track[best_row] == q_track) & is_query
    right_category = (v.category[best_row] == q_category) & is_query
    # Sums per (query frame, gap) pair, then per gap.
    index = torch.as_tensor(query_frame, device=device)
    per_pair = torch.zeros((3, len(chunk), n_g), dtype=torch.int64, device=device)
    for i, flags in enumerate((is_query, right_instance, right_category)):
        per_pair[i].index_add_(0, index, flags.to(torch.int64))
    n, inst, cat = per_pair.cpu().numpy()
    has = n > 0
    safe_n = np.maximum(n, 1)
    counts.pairs += has.sum(axis=0)
    counts.pair_acc_instance += np.where(has, inst / safe_n, 0.0).sum(axis=0)
    counts.pair_acc_category += np.where(has, cat / safe_n, 0.0).sum(axis=0)
    counts.queries += n.sum(axis=0)
    counts.correct_instance += inst.sum(axis=0)
    counts.correct_category += cat.sum(axis=0)
