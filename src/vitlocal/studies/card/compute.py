"""The card's own diagnostics: one read of the last layer of the Cityscapes train and val features.

Each number is a statistic of per-image sums (``bootstrap``), so its 95 %
interval over the evaluation images costs no probe rerun:

- linear-probe mIoU of the raw features (the probing study's probe and schedule);
- k-NN mIoU of the raw features, with the top-m variance dimensions removed
  (ranked on the training patches, for each configured m) and on BatchNorm-
  standardised features (training mean and variance): per-image confusion
  matrices, scored at full resolution as the probing study scores them;
- variance share: share of the summed per-dimension variance of the val
  patch features held by the 10 / 200 dimensions of largest variance;
- high-norm tokens ("Vision Transformers Need Registers"): a patch token is
  high-norm when its L2 norm exceeds Q3 + 3 IQR of the training patch norms
  (threshold fixed on training images); we report their share of val patches,
  the share of the labelled ones that sit on background (Cityscapes' flat,
  construction, nature and sky classes) and that background's share of all
  labelled patches for comparison;
- position: R² of a ridge regression (alpha 1, intercept) from a patch's
  feature to its (row, col) in the tile's patch grid, scaled to [0, 1],
  fitted on the training tiles and scored on the val tiles (uniform average
  over the two outputs, as scikit-learn's ``r2_score``).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from vitlocal.datasets import cityscapes
from vitlocal.evaluation.segmentation import (
    EvalTarget,
    ProbeSettings,
    SplitFeatures,
    _image_histogram,
    _patch_positions,
    check_compatible,
    fit_linear,
    knn_predictions,
    labelled,
    linear_predictions,
    load_split,
    patch_grid,
    provenance,
    tiling_of,
    with_features,
)
from vitlocal.probes.variance import batchnorm_standardise, feature_variance, remove_dims, top_variance_dims
from vitlocal.reproduction import TIDY_COLUMNS

from .bootstrap import DEFAULT_RESAMPLES, Interval, bootstrap, miou_of, ratio_of

log = logging.getLogger(__name__)

EXPERIMENT = "card"
#: Extra columns of a card row beside the tidy ones.
CARD_COLUMNS = (*TIDY_COLUMNS, "lo", "hi", "n_units", "unit", "resamples", "boot_seed", "settings")
#: Cityscapes trainIds counted as background (categories flat, construction, nature, sky).
BACKGROUND = ("road", "sidewalk", "building", "wall", "fence", "vegetation", "terrain", "sky")
HIGH_NORM_RULE = "norm > Q3 + 3 IQR of the training patch-token norms"
TOP_DIMS = (10, 200)
RIDGE_ALPHA = 1.0


# --------------------------------------------------------------------------- per-image statistics


def image_index(val: SplitFeatures, manifest: pd.DataFrame) -> np.ndarray:
    """Position in ``manifest`` of the image of every val patch."""
    index = pd.Index(manifest["sample_id"].astype(str)).get_indexer(val.meta["sample_id"].astype(str))
    if (index < 0).any():
        raise ValueError(f"{val.name}: sample {val.meta['sample_id'].iloc[int(np.argmax(index < 0))]!r} not in the manifest")
    return index


def per_image_confusions(val: SplitFeatures, preds: np.ndarray, target: EvalTarget) -> np.ndarray:
    """(n_images, C, C) confusion matrices, scored as ``EvalTarget.score`` scores (their sum is its matrix)."""
    tiling = tiling_of(val, target.tiling)
    grid = patch_grid(val)
    c = target.num_classes
    position = _patch_positions(val, target.manifest, tiling.n_tiles, grid)
    per_image = tiling.n_tiles * grid[0] * grid[1]
    by_position = np.empty(len(target.manifest) * per_image, dtype=np.int64)
    by_position[position] = np.asarray(preds)
    out = np.zeros((len(target.manifest), c * c), dtype=np.float64)
    for i, row in enumerate(target.manifest.to_dict("records")):
        hist = _image_histogram(target.dataset, str(target.root), str(row["image_path"]), str(row["label_path"]),
                                tiling.resize_to, (tiling.rows, tiling.cols), grid, c, 255)
        keys = hist.cls * c + by_position[i * per_image + hist.patch]
        out[i] = np.bincount(keys, weights=hist.count, minlength=c * c)
    return out.reshape(-1, c, c)


def variance_stats(x: np.ndarray, image: np.ndarray, n_images: int) -> np.ndarray:
    """Per image: [n, sum x (C), sum x^2 (C)]."""
    x = np.asarray(x, dtype=np.float64)
    out = np.zeros((n_images, 1 + 2 * x.shape[1]))
    np.add.at(out[:, 0], image, 1.0)
    for j in range(x.shape[1]):  # column by column: no (n, C) float64 square held twice
        out[:, 1 + j] = np.bincount(image, weights=x[:, j], minlength=n_images)
        out[:, 1 + x.shape[1] + j] = np.bincount(image, weights=x[:, j] ** 2, minlength=n_images)
    return out


def top_share(k: int):
    """Statistic: share of the total per-dimension variance held by the ``k`` largest (pooled sums)."""

    def statistic(sums: np.ndarray) -> float:
        n, d = sums[0], (len(sums) - 1) // 2
        if n <= 0:
            return float("nan")
        var = np.maximum(sums[1 + d:] / n - (sums[1:1 + d] / n) ** 2, 0.0)
        total = var.sum()
        return float(np.sort(var)[::-1][:k].sum() / total) if total > 0 else float("nan")

    return statistic


def high_norm_threshold(train_norms: np.ndarray) -> float:
    """Q3 + 3 IQR of the training patch-token norms (an outlier rule fixed before any val image is seen)."""
    q1, q3 = np.quantile(np.asarray(train_norms, dtype=np.float64), [0.25, 0.75])
    return float(q3 + 3.0 * (q3 - q1))


def high_norm_stats(norms: np.ndarray, labels: np.ndarray, image: np.ndarray, n_images: int, threshold: float,
                    background: Sequence[int]) -> np.ndarray:
    """Per image: [high, tokens, high & labelled, high & background, labelled, background]."""
    high = np.asarray(norms) > threshold
    is_labelled = np.asarray(labels) != 255
    is_bg = np.isin(labels, np.asarray(background)) & is_labelled
    columns = [high, np.ones_like(high), high & is_labelled, high & is_bg, is_labelled, is_bg]
    return np.stack([np.bincount(image, weights=c.astype(np.float64), minlength=n_images) for c in columns], axis=1)


def grid_positions(split: SplitFeatures) -> np.ndarray:
    """(n, 2) patch (row, col) in its tile's grid, scaled to [0, 1]."""
    gh, gw = patch_grid(split)
    row = split.meta["patch_row"].to_numpy(np.float64) / max(gh - 1, 1)
    col = split.meta["patch_col"].to_numpy(np.float64) / max(gw - 1, 1)
    return np.stack([row, col], axis=1)


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float = RIDGE_ALPHA, block: int = 16384):
    """Ridge with intercept (scikit-learn's ``Ridge(alpha)``); the Gram matrix summed in float64 blocks."""
    x_mean = np.asarray(x, dtype=np.float64).mean(axis=0)
    y = np.asarray(y, dtype=np.float64)
    y_mean = y.mean(axis=0)
    gram = np.zeros((x.shape[1], x.shape[1]))
    xty = np.zeros((x.shape[1], y.shape[1]))
    for start in range(0, len(x), block):
        xb = np.asarray(x[start:start + block], dtype=np.float64) - x_mean
        gram += xb.T @ xb
        xty += xb.T @ (y[start:start + block] - y_mean)
    gram[np.diag_indices_from(gram)] += alpha
    coef = np.linalg.solve(gram, xty)
    return lambda z: (np.asarray(z, dtype=np.float64) - x_mean) @ coef + y_mean


def position_stats(pred: np.ndarray, y: np.ndarray, image: np.ndarray, n_images: int) -> np.ndarray:
    """Per image and output j: [n, sum y_j, sum y_j^2, sum (y_j - pred_j)^2 for j = 0, 1]."""
    cols = [np.ones(len(y))]
    for j in range(y.shape[1]):
        cols += [y[:, j], y[:, j] ** 2, (y[:, j] - pred[:, j]) ** 2]
    return np.stack([np.bincount(image, weights=c, minlength=n_images) for c in cols], axis=1)


def position_r2(sums: np.ndarray) -> float:
    """R² averaged over outputs from pooled [n, (sum y, sum y^2, SSE) per output]."""
    n, r2 = sums[0], []
    for j in range((len(sums) - 1) // 3):
        s, s2, sse = sums[1 + 3 * j: 4 + 3 * j]
        sst = s2 - s * s / n
        r2.append(1.0 - sse / sst if sst > 1e-12 else (1.0 if sse <= 1e-12 else 0.0))
    return float(np.mean(r2))


# --------------------------------------------------------------------------- the experiment


def card_rows(
    model: str,
    train_path: str,
    val_path: str,
    *,
    target: EvalTarget,
    probes: ProbeSettings,
    removed_dims: Sequence[int],
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> pd.DataFrame:
    """Every diagnostic of the card for ``model`` (last stored layer), one tidy row each with its interval."""
    val = load_split(val_path)
    full = load_split(train_path, val.layer)
    check_compatible(full, val)
    n_images = len(target.manifest)
    image = image_index(val, target.manifest)
    boot = dict(resamples=resamples, seed=seed)
    rows: list[dict[str, Any]] = []

    def add(probe: str, level: str, metric: str, interval: Interval, settings: Mapping[str, Any], cls="all"):
        rows.append({"probe": probe, "level": level, "class": cls, "metric": metric, "value": interval.value,
                     "lo": interval.lo, "hi": interval.hi, "n_units": interval.n_units, "unit": "image",
                     "resamples": interval.resamples, "boot_seed": interval.seed,
                     "knn_metric": probes.knn_metric if probe == "knn" else "",
                     "settings": json.dumps(settings, sort_keys=True, separators=(",", ":"))})

    variances = feature_variance(full.x)
    train = labelled(full)
    dims = val.x.shape[1]
    variants = {"raw": (train, val, {})}
    for m in sorted({int(m) for m in removed_dims if 0 < int(m) < dims}):
        top = top_variance_dims(variances, m)
        variants[f"top{m}_removed"] = (with_features(train, remove_dims(train.x, top)),
                                       with_features(val, remove_dims(val.x, top)),
                                       {"removed_dims": m, "ranked_on": "train patches"})
    train_bn, val_bn = batchnorm_standardise(train.x, val.x)
    variants["bn_standardised"] = (with_features(train, train_bn), with_features(val, val_bn),
                                   {"standardised": "train mean and unbiased variance of labelled patches, eps 1e-6"})
    for level, (tr, va, extra) in variants.items():
        preds = knn_predictions(tr, va, k=probes.knn_k, metric=probes.knn_metric, device=probes.device)
        confusions = per_image_confusions(va, preds, target)
        interval = bootstrap(confusions, miou_of, **boot)
        add("knn", level, "miou", interval, {**probes.knn_record(len(tr.labels)), **extra}, cls="mean")
        log.info("%s k-NN %s: mIoU %.3f [%.3f, %.3f]", model, level, interval.value, interval.lo, interval.hi)

    probe, settings = fit_linear(train, model, target, probes)  # BatchNorm first for probes.batchnorm_models
    interval = bootstrap(per_image_confusions(val, linear_predictions(probe, val), target), miou_of, **boot)
    add("linear", "raw", "miou", interval, settings, cls="mean")
    log.info("%s linear raw: mIoU %.3f [%.3f, %.3f]", model, interval.value, interval.lo, interval.hi)

    stats = variance_stats(val.x, image, n_images)
    for k in TOP_DIMS:
        if k < dims:
            add("none", "", f"variance_share_top{k}", bootstrap(stats, top_share(k), **boot),
                {"dims": dims, "top": k, "on": "val patches"})

    threshold = high_norm_threshold(np.linalg.norm(full.x, axis=1))
    background = [cityscapes.CLASSES.index(name) for name in BACKGROUND]
    hn = high_norm_stats(np.linalg.norm(val.x, axis=1), val.labels, image, n_images, threshold, background)
    record = {"rule": HIGH_NORM_RULE, "threshold": round(threshold, 6), "background": list(BACKGROUND)}
    add("none", "", "high_norm_share", bootstrap(hn[:, [0, 1]], ratio_of, **boot), record)
    add("none", "", "high_norm_on_background", bootstrap(hn[:, [3, 2]], ratio_of, **boot), record)
    add("none", "", "background_share", bootstrap(hn[:, [5, 4]], ratio_of, **boot), record)

    predict = fit_ridge(full.x, grid_positions(full))
    pos = position_stats(predict(val.x), grid_positions(val), image, n_images)
    add("none", "", "position_r2", bootstrap(pos, position_r2, **boot),
        {"alpha": RIDGE_ALPHA, "target": "patch (row, col) in the tile grid scaled to [0, 1]",
         "fit": "train tiles", "scored": "val tiles"})

    table = pd.DataFrame(rows)
    prov = provenance(val.attrs, probe="none", knn_metric="")
    for key in ("preset", "weights", "patch_labels", "data"):
        table[key] = prov[key]
    table = table.assign(experiment=EXPERIMENT, dataset=target.dataset, model=model, layer=val.layer)
    table["layer"] = table["layer"].astype("Int64")
    return table[list(CARD_COLUMNS)]
