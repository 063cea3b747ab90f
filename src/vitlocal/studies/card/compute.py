"""The card's own diagnostics: one read of the last layer of the Cityscapes train and val features.

Each number is a statistic of per-image sums (``bootstrap``), so its 95 %
interval over the evaluation images costs no probe rerun:

- linear-probe mIoU of the raw features (the probing study's probe and schedule);
- k-NN mIoU of the raw features, with the top-m variance dimensions removed
  (ranked on the training patches, for each configured m) and on BatchNorm-
  standardised features (training mean and variance): per-image confusion
  matrices, scored at full resolution as the probing study scores them;
- best m, chosen on held-out *training* images, never on val: the training
  images are split by image (seeded with ``seed``) into a fit part (3/4) and a
  held-out part (1/4); for each m of ``variance.removed_dims`` the top-m
  dimensions, ranked on the fit part's patches, are removed and the k-NN
  (gallery: the fit part) is scored on the held-out images at full
  resolution; the m of highest held-out mIoU wins (ties: the smallest m). The
  val number of that m is the ``top<m>_removed`` k-NN row's (dims ranked on
  every training patch); the rule never reads a val label;
- post-processors through the same two probes, each with its cost per val
  image: ``raw`` (no transform), ``best_m_removed`` (the chosen m),
  ``bn_standardised`` and, for a model of ``dvt.models``, ``dvt`` (the dvt
  study's denoised files). Cost: wall seconds of applying the fitted transform
  to every val patch (after a one-tile warm-up), divided by the val images:
  machine-dependent, recorded with where it ran; DVT's is the denoiser's
  forward. Fitting (ranking dims, BatchNorm statistics, DVT's stages 1-2) is
  not in it;
- DVT's artifact share (stage 1 run for the model): ``||G|| / ||y||``, the
  Frobenius norm of stage 1's position artifact G over that of the raw
  features y, pooled over its training tiles, with its interval over the
  stage-1 training images (its units: stage 1 never sees a val image);
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

import dataclasses
import functools
import json
import logging
import time
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
    resolve_device,
    select_samples,
    tiling_of,
    with_features,
)
from vitlocal.errors import ConfigError
from vitlocal.probes.variance import batchnorm_fit, feature_variance, remove_dims, top_variance_dims
from vitlocal.reproduction import TIDY_COLUMNS

from . import HELD_OUT_SHARE
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
BEST_M_RULE = ("m of variance.removed_dims with the highest k-NN mIoU on a seeded quarter of the training images "
               "held out (gallery: the other training images; ties: the smallest m); val is never read")
TIMING = "wall seconds of the fitted transform over every val patch after a one-tile warm-up, per val image"


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
    """Ridge with intercept (scikit-learn's ``Ridge(alpha)``).

    Each block's Gram matrix is a product in the features' own precision (float32 as stored features are
    read; float64 stays float64), summed across blocks in float64: the float32 product is ~2x the float64
    one's speed and avoids a float64 copy of every block (the full-size card's Gram is 451,584 x 768).
    """
    x = np.asarray(x)
    work = np.float32 if x.dtype in (np.float16, np.float32) else np.float64
    x_mean = x.mean(axis=0, dtype=np.float64)
    centre = x_mean.astype(work)  # float16 rows minus it come out in float32
    y = np.asarray(y, dtype=np.float64)
    y_mean = y.mean(axis=0)
    gram = np.zeros((x.shape[1], x.shape[1]))
    xty = np.zeros((x.shape[1], y.shape[1]))
    for start in range(0, len(x), block):
        xb = x[start:start + block] - centre
        gram += xb.T @ xb
        xty += xb.T @ (y[start:start + block] - y_mean).astype(work)
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


# --------------------------------------------------------------------------- best m, costs, DVT's artifact share


def split_train_images(sample_ids: Sequence[str], seed: int, share: float = HELD_OUT_SHARE):
    """``(fit, held_out)`` sorted image ids: a seeded ``share`` of the distinct images held out (at least one each)."""
    ids = np.array(sorted({str(s) for s in sample_ids}))
    if len(ids) < 2:
        raise ConfigError(f"choosing the best m needs at least 2 training images (one held out); got {len(ids)}")
    n_held = min(max(1, int(round(share * len(ids)))), len(ids) - 1)
    held = np.zeros(len(ids), dtype=bool)
    held[np.random.default_rng(seed).permutation(len(ids))[:n_held]] = True
    return sorted(ids[~held]), sorted(ids[held])


def choose_m(full: SplitFeatures, candidates: Sequence[int], train_target: EvalTarget, probes: ProbeSettings,
             seed: int) -> tuple[int, dict[str, Any]]:
    """The best m of ``candidates`` on held-out training images (``BEST_M_RULE``) and the record of the choice.

    ``full``: every patch of the training images; ``train_target``: their manifest (scored at full resolution).
    """
    fit_ids, held_ids = split_train_images(full.meta["sample_id"], seed)
    fit, held = labelled(select_samples(full, fit_ids)), select_samples(full, held_ids)
    manifest = train_target.manifest
    target = dataclasses.replace(train_target, manifest=manifest[manifest["sample_id"].astype(str).isin(held_ids)]
                                 .reset_index(drop=True))
    variances = feature_variance(select_samples(full, fit_ids).x)
    scores = {}
    for m in candidates:
        top = top_variance_dims(variances, m)
        preds = knn_predictions(with_features(fit, remove_dims(fit.x, top)), with_features(held, remove_dims(held.x, top)),
                                k=probes.knn_k, metric=probes.knn_metric, device=probes.device)
        scores[int(m)] = miou_of(per_image_confusions(held, preds, target).sum(axis=0))
    best = pick_m(scores, full.name)
    return best, {"rule": BEST_M_RULE, "chosen_m": best, "held_out_miou": {str(m): v for m, v in scores.items()},
                  "fit_images": len(fit_ids), "held_out_images": len(held_ids), "split_seed": seed}


def pick_m(scores: Mapping[int, float], where: str = "") -> int:
    """The m of the highest score; ties: the smallest m (the least removed); undefined (NaN) scores never win."""
    defined = {m: v for m, v in scores.items() if np.isfinite(v)}
    if not defined:
        raise ConfigError(f"{where}: the k-NN mIoU of the held-out training images is undefined for every m")
    return min(m for m, v in defined.items() if v == max(defined.values()))


def seconds_per_image(transform, x: np.ndarray, n_images: int, warm_rows: int) -> float:
    """``TIMING``: ``transform(x)`` timed after a warm-up on the first ``warm_rows`` rows."""
    transform(x[:warm_rows])
    start = time.perf_counter()
    transform(x)
    return (time.perf_counter() - start) / n_images


def denoiser_transform(checkpoint: str, grid: Sequence[int], device: str | None):
    """The DVT denoiser of ``checkpoint`` as a transform of (n_tiles * gh * gw, C) rows (tile by tile, as stored)."""
    from vitlocal.denoise.pipeline import DENOISE_TILES
    from vitlocal.denoise.stage2 import denoise, load_checkpoint

    model, torch_device = load_checkpoint(checkpoint, grid=tuple(grid)), resolve_device(device)
    gh, gw = grid
    transform = lambda x: denoise(model, x.reshape(-1, gh, gw, x.shape[1]), DENOISE_TILES, torch_device)  # noqa: E731
    return transform, str(torch_device)


def artifact_stats(stage1_path: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Per stage-1 training image: [sum ||G||^2, sum ||y||^2] over its tiles' patches; and the file's record."""
    try:
        with np.load(stage1_path, allow_pickle=False) as data:
            attrs = json.loads(str(data["attrs"]))
            image = pd.factorize(pd.Series(data["dataset"].astype(str)) + "/" + data["sample_id"].astype(str))[0]
            sums = [np.array([np.square(tile, dtype=np.float64).sum() for tile in data[key]]) for key in ("artifact", "raw")]
    except (OSError, KeyError, ValueError) as err:
        raise ConfigError(f"{stage1_path}: cannot read DVT stage 1's raw / artifact arrays ({err})") from err
    if attrs.get("model") is None or not len(image):
        raise ConfigError(f"{stage1_path}: a stage-1 file with no tiles or no model")
    per_image = np.stack([np.bincount(image, weights=v, minlength=image.max() + 1) for v in sums], axis=1)
    return per_image, {"model": attrs["model"], "tiles": len(image), "layer": attrs.get("layer"),
                       "on": "DVT stage-1 training tiles, pooled", "file": str(stage1_path)}


def norm_ratio(sums: np.ndarray) -> float:
    """``sqrt(sums[0] / sums[1])``: a ratio of Frobenius norms from summed squares."""
    return float(np.sqrt(sums[0] / sums[1])) if sums[1] > 0 else float("nan")


# --------------------------------------------------------------------------- the experiment


def card_rows(
    model: str,
    train_path: str,
    val_path: str,
    *,
    target: EvalTarget,
    train_target: EvalTarget,
    probes: ProbeSettings,
    removed_dims: Sequence[int],
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    dvt: Mapping[str, str] | None = None,
    stage1: str | None = None,
) -> pd.DataFrame:
    """Every diagnostic of the card for ``model`` (last stored layer), one tidy row each with its interval.

    ``train_target``: the training images' manifest (the held-out ones score the choice of m); ``dvt``:
    ``{train, val, checkpoint}``, the dvt study's denoised files and its denoiser (a model of ``dvt.models``);
    ``stage1``: DVT's stage-1 file of the model.
    """
    val = load_split(val_path)
    full = load_split(train_path, val.layer)
    check_compatible(full, val)
    n_images = len(target.manifest)
    image = image_index(val, target.manifest)
    boot = dict(resamples=resamples, seed=seed)
    rows: list[dict[str, Any]] = []

    def add(probe: str, level: str, metric: str, interval: Interval, settings: Mapping[str, Any], cls="all",
            unit="image"):
        rows.append({"probe": probe, "level": level, "class": cls, "metric": metric, "value": interval.value,
                     "lo": interval.lo, "hi": interval.hi, "n_units": interval.n_units, "unit": unit,
                     "resamples": interval.resamples, "boot_seed": interval.seed,
                     "knn_metric": probes.knn_metric if probe == "knn" else "",
                     "settings": json.dumps(settings, sort_keys=True, separators=(",", ":"))})

    def knn(tr, va):
        preds = knn_predictions(tr, va, k=probes.knn_k, metric=probes.knn_metric, device=probes.device)
        return bootstrap(per_image_confusions(va, preds, target), miou_of, **boot)

    def linear(tr, va):
        probe, settings = fit_linear(tr, model, target, probes)  # BatchNorm first for probes.batchnorm_models
        return bootstrap(per_image_confusions(va, linear_predictions(probe, va), target), miou_of, **boot), settings

    def measured(seconds: float, n_units: int) -> Interval:  # a measurement of this run: no interval
        return Interval(seconds, float("nan"), float("nan"), n_units, 0, seed)

    variances = feature_variance(full.x)
    train = labelled(full)
    dims = val.x.shape[1]
    warm = int(np.prod(patch_grid(val)))
    knn_of: dict[str, Interval] = {}
    standardise = batchnorm_fit(train.x)

    def removed(m: int):
        top = top_variance_dims(variances, m)
        return (with_features(train, remove_dims(train.x, top)), with_features(val, remove_dims(val.x, top)),
                {"removed_dims": m, "ranked_on": "train patches"})

    # Each variant built when probed and dropped after (a full-size one is ~2 GB of train + val rows).
    variants = {"raw": lambda: (train, val, {})}
    for m in sorted({int(m) for m in removed_dims if 0 < int(m) < dims}):
        variants[f"top{m}_removed"] = functools.partial(removed, m)
    variants["bn_standardised"] = lambda: (
        with_features(train, standardise(train.x)), with_features(val, standardise(val.x)),
        {"standardised": "train mean and unbiased variance of labelled patches, eps 1e-6"})
    for level, build in variants.items():
        tr, va, extra = build()
        knn_of[level] = interval = knn(tr, va)
        add("knn", level, "miou", interval, {**probes.knn_record(len(tr.labels)), **extra}, cls="mean")
        log.info("%s k-NN %s: mIoU %.3f [%.3f, %.3f]", model, level, interval.value, interval.lo, interval.hi)
        del tr, va

    interval, linear_settings = linear(train, val)
    add("linear", "raw", "miou", interval, linear_settings, cls="mean")
    log.info("%s linear raw: mIoU %.3f [%.3f, %.3f]", model, interval.value, interval.lo, interval.hi)
    linear_of = {"raw": (interval, linear_settings)}

    # Post-processors: best m (chosen on held-out training images), BatchNorm, DVT; each with k-NN, linear, cost.
    candidates = sorted({int(m) for m in removed_dims if 0 <= int(m) < dims})
    best, choice = choose_m(full, candidates, train_target, probes, seed) if candidates else (0, {"rule": BEST_M_RULE,
                                                                                                "chosen_m": 0})
    log.info("%s best m on held-out training images: %d (%s)", model, best, choice.get("held_out_miou"))
    best_top = top_variance_dims(variances, best)
    post = {"raw": ("none", {}, None),
            "best_m_removed": (f"top-{best} variance dims (ranked on train patches) removed", choice,
                               lambda x: remove_dims(x, best_top)),
            "bn_standardised": ("BatchNorm standardisation with training statistics", {}, standardise)}
    add("none", "best_m_removed", "best_m", measured(best, choice.get("held_out_images", 0)), choice,
        unit="held-out train image")
    level = "raw" if best == 0 else f"top{best}_removed"
    add("knn", "best_m_removed", "miou", knn_of[level],
        {**probes.knn_record(len(train.labels)), "post_processor": post["best_m_removed"][0], "same_as": level,
         **choice}, cls="mean")
    linear_of["best_m_removed"] = linear(*variants[level]()[:2]) if best else linear_of["raw"]
    linear_of["bn_standardised"] = linear(*variants["bn_standardised"]()[:2])
    if dvt is not None:
        train_dvt, val_dvt = load_split(dvt["train"], val.layer), load_split(dvt["val"], val.layer)
        check_compatible(train_dvt, val_dvt)
        transform, device = denoiser_transform(dvt["checkpoint"], patch_grid(val), probes.device)
        record = {k: v for k, v in val_dvt.attrs.get("denoiser", {}).items() if k in ("path", "sha256", "dvt_source")}
        post["dvt"] = (f"DVT denoiser forward ({device})", record, transform)
        train_dvt = labelled(train_dvt)
        knn_of["dvt"] = knn(train_dvt, val_dvt)
        add("knn", "dvt", "miou", knn_of["dvt"], {**probes.knn_record(len(train_dvt.labels)), "post_processor":
                                                   post["dvt"][0], **record}, cls="mean")
        linear_of["dvt"] = linear(train_dvt, val_dvt)
    for level, (what, extra, transform) in post.items():
        if level != "raw":  # raw's linear row is above
            interval, settings = linear_of[level]
            add("linear", level, "miou", interval, {**settings, "post_processor": what, **extra}, cls="mean")
        seconds = 0.0 if level == "raw" else seconds_per_image(transform, val.x, n_images, warm)
        add("none", level, "seconds_per_image", measured(seconds, n_images),
            {"post_processor": what, "timing": TIMING, "machine_dependent": True})
        log.info("%s %s: %.2e s per val image", model, level, seconds)

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

    if stage1 is not None:
        per_image, record = artifact_stats(stage1)
        if record["model"] != model:
            raise ConfigError(f"{stage1} holds DVT stage 1 of model {record['model']!r}, read for the card of {model!r}")
        add("none", "", "dvt_artifact_share", bootstrap(per_image, norm_ratio, **boot),
            {**record, "statistic": "||G||_F / ||y||_F"}, unit="stage-1 train image")

    table = pd.DataFrame(rows)
    prov = provenance(val.attrs, probe="none", knn_metric="")
    for key in ("preset", "weights", "patch_labels", "data"):
        table[key] = prov[key]
    table = table.assign(experiment=EXPERIMENT, dataset=target.dataset, model=model, layer=val.layer)
    table["layer"] = table["layer"].astype("Int64")
    return table[list(CARD_COLUMNS)]
