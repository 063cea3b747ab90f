"""Percentile bootstrap over evaluation units (images, videos, crops) from per-unit additive statistics.

Every number of a card is a function of sums over units: an mIoU of the summed
per-image confusion matrices, a share of summed counts, an R² of summed
squared errors. Resampling units with replacement and re-summing gives the
bootstrap distribution without rerunning any probe: a resample is a vector of
counts ``w`` (how often each unit was drawn), and its sums are ``w @ stats``.
The interval is the 2.5 / 97.5 % percentiles of the resampled statistic
(Efron's percentile interval); the point estimate is the statistic of all units.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from vitlocal.probes.metrics import mean_iou

DEFAULT_RESAMPLES = 1000
LEVEL = 0.95


@dataclasses.dataclass(frozen=True)
class Interval:
    """A number with its bootstrap interval over ``n_units`` units."""

    value: float
    lo: float
    hi: float
    n_units: int
    resamples: int
    seed: int


def resample_counts(n_units: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n_units) draw counts: row b says how often each unit is in resample b."""
    if n_units < 1:
        raise ValueError("bootstrap needs at least one evaluation unit")
    draws = np.random.default_rng(seed).integers(0, n_units, size=(resamples, n_units))
    counts = np.zeros((resamples, n_units), dtype=np.float64)
    np.add.at(counts, (np.arange(resamples)[:, None], draws), 1.0)
    return counts


def bootstrap(
    per_unit: np.ndarray,
    statistic: Callable[[np.ndarray], float],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> Interval:
    """``statistic(sum of per_unit over units)`` and its percentile interval.

    ``per_unit``: (n_units, ...) additive statistics of each unit. Resamples
    whose statistic is undefined (NaN, e.g. no pixel of any class) are left out
    of the percentiles.
    """
    stats = np.asarray(per_unit, dtype=np.float64)
    flat = stats.reshape(len(stats), -1)
    value = float(statistic(flat.sum(axis=0).reshape(stats.shape[1:])))
    sums = resample_counts(len(stats), resamples, seed) @ flat
    draws = np.array([statistic(row.reshape(stats.shape[1:])) for row in sums], dtype=np.float64)
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        return Interval(value, float("nan"), float("nan"), len(stats), resamples, seed)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(draws, [alpha, 1.0 - alpha])
    return Interval(value, float(lo), float(hi), len(stats), resamples, seed)


def miou_of(confusion: np.ndarray) -> float:
    """mIoU of a summed confusion matrix (classes absent from both ground truth and prediction left out)."""
    return float(mean_iou(np.rint(confusion).astype(np.int64))[0])


def ratio_of(sums: np.ndarray) -> float:
    """``sums[0] / sums[1]``: a share of summed counts (NaN when the denominator is 0)."""
    return float(sums[0] / sums[1]) if sums[1] > 0 else float("nan")
