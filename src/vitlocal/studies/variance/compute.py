"""High-variance feature dimensions: Fig 4a-c, the top-m overlap across datasets, Table 6. The numbers.

MAE's patch features carry a few dimensions of huge variance that dominate a
dot-product k-NN. One function per result, called once per model (the
workflow runs one job per model and concatenates); each returns tidy rows
(``segmentation.RESULT_COLUMNS``, plus the extra columns named below).
Plotting lives elsewhere and reads only these rows.

Conventions (``vitlocal.published.EXPERIMENTS``):

- ``feature_variance`` (Fig 4a): one row per dimension, metric ``variance``
  (population variance over *all* training patches, void included), in
  descending order; level and class empty; extra columns ``rank``
  (0 = largest) and ``dim`` (the feature index). The ``rank`` order also
  names the dimensions removed by ``variance_removal``: the top ``m`` ranks.
- ``variance_removal`` (Fig 4b/4c): level ``<m>`` (e.g. ``"200"``); k-NN and linear probe
  rows per ``m`` (``segmentation.score_rows``). As the authors did, the
  top-``m`` dimensions are ranked on the training patches and deleted from
  train and val. An ``m`` that would leave no dimension is skipped with a
  :class:`DimensionsWarning`.
- ``bn_standardized`` (Fig 4c markers): level empty; k-NN on features
  standardised with the training statistics of the labelled training patches
  (what the linear probe's ``BatchNorm1d(affine=False)`` holds) and, for
  reference, the linear probe with BatchNorm.
- ``feature_variance_overlap``: dataset ``"A vs B"``, level ``m=<m>``, probe
  ``none``; ``count_set_difference`` = ``|top(A) - top(B)|`` for every ordered
  pair (the published rows), ``count_shared`` = ``|top(A) & top(B)|`` for each
  pair in input order; the ``settings`` column lists the differing dims.
- ``r2`` (Table 6): probe ``ridge``, metric ``r2``; level ``full``,
  ``without_top<m>``, ``only_top<m>``, ``random<m>``; class ``mean`` (R²
  averaged over the targets, the table's number) or a target class's name.

Small models: the study's ``m`` (200 dims of 768) cannot be used with the
demo's 48-dim ViTs, so the overlap uses ``C // 4`` when ``m > C`` and Table 6
uses ``C // 4`` when ``C < 2 m``, with a :class:`DimensionsWarning`; the
``m`` used is in the level and the ``settings`` column.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import warnings
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from vitlocal.errors import ConfigError
from vitlocal.evaluation.segmentation import (
    READERS,
    RESULT_COLUMNS,
    EvalTarget,
    ProbeSettings,
    SegmentationResult,
    SplitFeatures,
    fit_linear,
    knn_result,
    labelled,
    linear_predictions,
    load_split,
    patch_grid,
    provenance,
    score_rows,
    tiling_of,
    train_linear,
    with_features,
)
from vitlocal.probes.variance import (
    batchnorm_standardise,
    feature_variance,
    keep_dims,
    random_dims,
    remove_dims,
    ridge_r2,
    top_variance_dims,
)
from vitlocal.tiling import TilingSpec, tile_image

log = logging.getLogger(__name__)

PathLike = str | os.PathLike
IGNORE_INDEX = 255
#: Extra columns of the ``feature_variance`` rows.
SPECTRUM_COLUMNS = (*RESULT_COLUMNS, "rank", "dim")


class DimensionsWarning(UserWarning):
    """A requested number of dimensions does not fit the model's feature size and was skipped or reduced."""


# --------------------------------------------------------------------------- helpers


def _load(path: PathLike, layer: int | None, model: str) -> SplitFeatures:
    """Features of ``path`` at ``layer``, checked to be ``model``'s (a wiring error otherwise)."""
    split = load_split(path, layer)
    if split.attrs.get("model") != model:
        raise ConfigError(f"{path} holds features of model {split.attrs.get('model')!r}, not {model!r}")
    return split


def _table(rows: Mapping[str, Any] | pd.DataFrame, attrs: Mapping[str, Any], columns: Sequence[str] = RESULT_COLUMNS,
           *, settings: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Rows of a non-segmentation result (probe ``none`` / ``ridge``) with the provenance of ``attrs``."""
    table = pd.DataFrame(rows)
    record = provenance(attrs, probe="none", knn_metric="")
    for key, value in record.items():
        table[key] = value
    if "settings" not in table.columns:
        table["settings"] = _json(settings) if settings is not None else ""
    table["layer"] = table["layer"].astype("Int64")
    return table[list(columns)]


def _json(settings: Mapping[str, Any]) -> str:
    """The compact JSON ``score_rows`` writes in the ``settings`` column."""
    return json.dumps(settings, sort_keys=True, separators=(",", ":"))


def _segmentation_rows(
    result: SegmentationResult, val: SplitFeatures, *, probe: str, settings: Mapping[str, Any],
    experiment: str, model: str, level: str, target: EvalTarget, probes: ProbeSettings,
) -> pd.DataFrame:
    """``score_rows`` of one probe's result with the provenance of the val features."""
    return score_rows(
        result, experiment=experiment, dataset=target.dataset, model=model, probe=probe, layer=val.layer,
        level=level, class_names=target.class_names,
        provenance=provenance(val.attrs, probe=probe, knn_metric=probes.knn_metric, settings=settings),
    )


def feasible_removals(removed_dims: Sequence[int], n_dims: int) -> list[int]:
    """The ``m`` of ``removed_dims`` that leave at least one of ``n_dims`` dimensions; others warn."""
    bad = [m for m in removed_dims if int(m) < 0]
    if bad:
        raise ConfigError(f"variance.removed_dims has negative values {bad}; expected counts of dimensions >= 0")
    kept = [int(m) for m in removed_dims if int(m) < n_dims]
    skipped = [int(m) for m in removed_dims if int(m) >= n_dims]
    if skipped:
        warnings.warn(
            f"removing m={skipped} top-variance dimensions would leave none of the {n_dims}; "
            f"those levels are skipped (kept m={kept})",
            DimensionsWarning,
            stacklevel=3,
        )
    return kept


def clamp_m(m: int, n_dims: int, *, needed: int, what: str) -> int:
    """``m`` if ``needed <= n_dims`` (``needed`` dims must exist), else ``n_dims // 4`` with a warning."""
    if m < 1:
        raise ConfigError(f"{what}: m={m}; expected a positive number of dimensions")
    if needed <= n_dims:
        return m
    used = max(1, n_dims // 4)
    warnings.warn(
        f"{what}: m={m} needs {needed} of the model's {n_dims} feature dimensions; using m={used} (= C // 4)",
        DimensionsWarning,
        stacklevel=3,
    )
    return used


# --------------------------------------------------------------------------- Fig 4a


def variance_spectrum_rows(model: str, train_path: PathLike, *, layer: int | None = None) -> pd.DataFrame:
    """Fig 4a: per-dimension variance of ``model``'s training patches, largest first.

    Columns ``SPECTRUM_COLUMNS``; ``layer`` ``None``: the last stored block.
    """
    train = _load(train_path, layer, model)
    variances = feature_variance(train.x)
    order = top_variance_dims(variances, len(variances))
    rows = {
        "experiment": "feature_variance", "dataset": train.attrs["dataset"], "model": model, "probe": "none",
        "layer": train.layer, "level": "", "class": "", "metric": "variance",
        "value": variances[order], "rank": np.arange(len(order)), "dim": order,
    }
    return _table(rows, train.attrs, SPECTRUM_COLUMNS, settings={"ddof": 0, "n_patches": len(train.x)})


# --------------------------------------------------------------------------- Fig 4b / 4c


def variance_removal_rows(
    model: str,
    train_path: PathLike,
    val_path: PathLike,
    *,
    removed_dims: Sequence[int],
    target: EvalTarget,
    probes: ProbeSettings,
    layer: int | None = None,
) -> pd.DataFrame:
    """Fig 4b/4c: k-NN and linear probe of ``model`` with its top-m variance dims removed, for each m.

    Plus the ``bn_standardized`` rows. Features are read once; variances are
    ranked once on all training patches. ``layer`` ``None``: the last block
    stored in the val file.
    """
    val = _load(val_path, layer, model)
    full = _load(train_path, val.layer, model)
    variances = feature_variance(full.x)
    train = labelled(full)
    del full
    frames: list[pd.DataFrame] = []
    linear_at_0: tuple[SegmentationResult, dict[str, Any]] | None = None
    for m in feasible_removals(removed_dims, val.x.shape[1]):
        dims = top_variance_dims(variances, m)
        train_m = with_features(train, remove_dims(train.x, dims))
        val_m = with_features(val, remove_dims(val.x, dims))
        common = dict(experiment="variance_removal", model=model, level=str(m), target=target, probes=probes)
        knn, record = knn_result(train_m, val_m, target, probes)
        frames.append(_segmentation_rows(knn, val, probe="knn", settings={**record, "removed_dims": m}, **common))
        probe, settings = fit_linear(train_m, model, target, probes)
        linear = target.score(val, linear_predictions(probe, val_m))
        frames.append(_segmentation_rows(linear, val, probe="linear", settings={**settings, "removed_dims": m},
                                         **common))
        log.info("%s m=%d: k-NN mIoU %.3f, linear mIoU %.3f", model, m, knn.miou, linear.miou)
        if m == 0:
            linear_at_0 = (linear, settings)
    frames += _bn_standardized(model, train, val, target, probes, linear_at_0)
    return pd.concat(frames, ignore_index=True)[list(RESULT_COLUMNS)]


def _bn_standardized(
    model: str, train: SplitFeatures, val: SplitFeatures, target: EvalTarget, probes: ProbeSettings,
    linear_at_0: tuple[SegmentationResult, dict[str, Any]] | None,
) -> list[pd.DataFrame]:
    """k-NN on BatchNorm-standardised features and, for reference, the linear probe with BatchNorm.

    The linear probe of a BatchNorm model at m = 0 *is* that reference, so it is
    reused rather than trained again.
    """
    train_x, val_x = batchnorm_standardise(train.x, val.x)
    knn, record = knn_result(with_features(train, train_x), with_features(val, val_x), target, probes)
    record = {**record, "standardised": "train mean and unbiased variance of labelled patches, eps 1e-6"}
    if probes.batchnorm(model) and linear_at_0 is not None:
        linear, settings = linear_at_0
    else:
        probe, settings = train_linear(train, num_classes=target.num_classes, batchnorm=True,
                                       settings=probes.linear, seed=probes.seed, device=probes.device)
        linear = target.score(val, linear_predictions(probe, val))
    common = dict(experiment="bn_standardized", model=model, level="", target=target, probes=probes)
    log.info("%s BatchNorm-standardised: k-NN mIoU %.3f, linear mIoU %.3f", model, knn.miou, linear.miou)
    return [
        _segmentation_rows(knn, val, probe="knn", settings=record, **common),
        _segmentation_rows(linear, val, probe="linear", settings=settings, **common),
    ]


# --------------------------------------------------------------------------- overlap across datasets


def top_dims_overlap_rows(
    model: str, paths: Mapping[str, PathLike], *, m: int = 200, layer: int | None = None
) -> pd.DataFrame:
    """How many of ``model``'s top-``m`` variance dims the datasets share (``paths``: dataset -> train features).

    ``layer`` ``None``: each file's last stored block (they must agree). One
    file is in memory at a time.
    """
    if len(paths) < 2:
        raise ConfigError(f"top_dims_overlap_rows needs at least two datasets; got {sorted(paths)}")
    variances, shapes, attrs = {}, {}, {}
    for name, path in paths.items():
        split = _load(path, layer, model)
        variances[name] = feature_variance(split.x)
        shapes[name], attrs[name] = (split.layer, split.x.shape[1]), split.attrs
        del split
    if len(set(shapes.values())) > 1:
        raise ConfigError(f"{model}: the feature files differ in (layer, dims): {shapes}; compare one layer")
    first_layer, n_dims = next(iter(shapes.values()))
    m_used = clamp_m(m, n_dims, needed=m, what=f"{model} top-dims overlap")
    top = {name: set(top_variance_dims(v, m_used).tolist()) for name, v in variances.items()}
    rows = [_overlap_row(a, b, "count_set_difference", top[a] - top[b], m_used)
            for a, b in itertools.permutations(top, 2)]
    rows += [_overlap_row(a, b, "count_shared", top[a] & top[b], m_used) for a, b in itertools.combinations(top, 2)]
    table = pd.DataFrame(rows).assign(
        experiment="feature_variance_overlap", model=model, probe="none", layer=first_layer,
        level=f"m={m_used}", **{"class": ""},
    )
    out = _table(table, next(iter(attrs.values())))
    if len({record.get("data_source") for record in attrs.values()}) > 1:
        out["data"] = "mixed"
    return out


def _overlap_row(a: str, b: str, metric: str, dims: set[int], m: int) -> dict[str, Any]:
    """One count of ``"a vs b"``; the dims themselves go to ``settings`` (as the published CSV lists them)."""
    return {"dataset": f"{a} vs {b}", "metric": metric, "value": len(dims),
            "settings": _json({"m": m, "elements": sorted(dims)})}


# --------------------------------------------------------------------------- Table 6


def tile_class_counts(
    dataset: str, root: PathLike, manifest: pd.DataFrame, tiling: TilingSpec, num_classes: int
) -> np.ndarray:
    """``(n_images, n_tiles, num_classes)`` int64 labelled pixels per class in every tile's full-resolution label map.

    Tiles are cut as the features were (``tiling.tile_image``: ``resize_to``
    first, row-major tiles); ignore pixels (255) are not counted.
    """
    if dataset not in READERS:
        raise ConfigError(f"tile label maps are read for {sorted(READERS)}, not {dataset!r}")
    out = np.empty((len(manifest), tiling.n_tiles, num_classes), dtype=np.int64)
    for i, row in enumerate(manifest.to_dict("records")):
        _, labels = READERS[dataset](str(root), row)
        tiles = tile_image(labels, tiling).reshape(tiling.n_tiles, -1).astype(np.int64)
        valid = tiles != IGNORE_INDEX
        if valid.any() and tiles[valid].max() >= num_classes:
            raise ConfigError(
                f"{row['label_path']}: label {int(tiles[valid].max())} outside 0..{num_classes - 1} "
                f"(and not {IGNORE_INDEX})"
            )
        key = np.arange(tiling.n_tiles)[:, None] * num_classes + tiles
        out[i] = np.bincount(key[valid], minlength=tiling.n_tiles * num_classes).reshape(tiling.n_tiles, num_classes)
    return out


def unique_images(manifest: pd.DataFrame) -> pd.DataFrame:
    """``manifest`` with each image once (first occurrence), by ``image_path``: a repeated
    image has the same label map and features, and would count twice. Its rows carry
    distinct ids (``<id>__dup1``, given by the reader), so the id cannot tell."""
    return manifest.drop_duplicates("image_path").reset_index(drop=True)


def central_patches(
    split: SplitFeatures, manifest: pd.DataFrame, n_tiles: int, skip: Collection[str] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``split`` at each tile's central patch (row ``gh // 2``, col ``gw // 2``) and their tile positions.

    Position = image index in ``manifest`` (unique ``sample_id``) * ``n_tiles`` + ``tile_id``.
    Rows of the samples in ``skip`` (repeated images) are left out.
    """
    gh, gw = patch_grid(split)
    meta = split.meta
    central = (meta["patch_row"].to_numpy() == gh // 2) & (meta["patch_col"].to_numpy() == gw // 2)
    rows = np.flatnonzero(central & ~meta["sample_id"].astype(str).isin(list(skip)).to_numpy())
    sample_ids = meta["sample_id"].to_numpy()[rows].astype(str)
    image = pd.Index(manifest["sample_id"].astype(str)).get_indexer(sample_ids)
    if (image < 0).any():
        raise ConfigError(
            f"{split.name}: sample {sample_ids[image < 0][0]!r} is not in the manifest the label maps come from"
        )
    position = image * n_tiles + meta["tile_id"].to_numpy()[rows].astype(np.int64)
    if len(np.unique(position)) != len(position):
        raise ConfigError(f"{split.name}: some tile has more than one central patch; is an image stored twice?")
    return rows, position


def central_patch_tiles(
    split: SplitFeatures, manifest: pd.DataFrame, target: EvalTarget
) -> tuple[np.ndarray, np.ndarray]:
    """Central-patch embeddings ``(n, C)`` of ``split``'s tiles and the tiles' class pixel counts ``(n, classes)``."""
    unique = unique_images(manifest)
    repeated = set(manifest["sample_id"].astype(str)) - set(unique["sample_id"].astype(str))
    tiling = tiling_of(split, target.tiling)
    counts = tile_class_counts(target.dataset, target.root, unique, tiling, target.num_classes)
    rows, position = central_patches(split, unique, tiling.n_tiles, skip=repeated)
    return split.x[rows], counts.reshape(-1, target.num_classes)[position]


def tile_fractions(counts: np.ndarray, classes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Share of each tile's *labelled* pixels in ``classes`` ``(n, len(classes))``, and which tiles have any.

    Ignore pixels are left out of the denominator (they are not a class); a
    tile without a labelled pixel has no defined fraction (its row is 0).
    """
    total = counts.sum(axis=1)
    has_labels = total > 0
    fractions = np.zeros((len(counts), len(classes)))
    fractions[has_labels] = counts[has_labels][:, list(classes)] / total[has_labels, None]
    return fractions, has_labels


def r2_inputs(n_dims: int, top: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Table 6's inputs (level -> feature dims): all, without the top dims, only them, as many at random."""
    m = len(top)
    return {
        "full": np.arange(n_dims),
        f"without_top{m}": np.setdiff1d(np.arange(n_dims), top),
        f"only_top{m}": np.sort(top),
        f"random{m}": random_dims(n_dims, m, seed),
    }


def r2_rows(
    model: str,
    train_path: PathLike,
    val_path: PathLike,
    *,
    train_manifest: pd.DataFrame,
    target: EvalTarget,
    m: int = 200,
    top_classes: int = 3,
    alpha: float = 1.0,
    seed: int = 0,
    layer: int | None = None,
) -> pd.DataFrame:
    """Table 6: ridge R² of the top classes' pixel fractions per tile from the tile's central patch embedding.

    Targets: the fractions, among a tile's labelled pixels, of the
    ``top_classes`` classes with the most labelled pixels in the *training*
    tiles (tiles without a labelled pixel are left out). Ridge (``alpha``) is
    fitted on the training tiles (``train_manifest``) and scored on the val
    tiles (``target``'s manifest), with the inputs of :func:`r2_inputs`: the
    top-``m`` variance dims are ranked on all training patches, the random
    ones drawn with ``seed``. ``layer`` ``None``: the last stored block.
    """
    val = _load(val_path, layer, model)
    train = _load(train_path, val.layer, model)
    m_used = clamp_m(m, train.x.shape[1], needed=2 * m, what=f"{model} Table 6 (R²)")
    top = top_variance_dims(feature_variance(train.x), m_used)
    x_train, counts_train = central_patch_tiles(train, train_manifest, target)
    x_val, counts_val = central_patch_tiles(val, target.manifest, target)
    classes = np.argsort(-counts_train.sum(axis=0), kind="stable")[:top_classes]
    y_train, keep_train = tile_fractions(counts_train, classes)
    y_val, keep_val = tile_fractions(counts_val, classes)
    x_train, y_train, x_val, y_val = x_train[keep_train], y_train[keep_train], x_val[keep_val], y_val[keep_val]
    names = [target.class_names[c] for c in classes]
    rows = []
    for level, dims in r2_inputs(train.x.shape[1], top, seed).items():
        a, b = keep_dims(x_train, dims), keep_dims(x_val, dims)
        values = [ridge_r2(a, y_train, b, y_val, alpha)]
        values += [ridge_r2(a, y_train[:, j], b, y_val[:, j], alpha) for j in range(len(classes))]
        rows += [{"class": name, "level": level, "value": value} for name, value in zip(["mean", *names], values)]
    settings = {
        "alpha": alpha, "m": m_used, "seed": seed, "target_classes": names,
        "central_patch": [size // 2 for size in patch_grid(val)], "fraction_of": "labelled pixels of the tile",
        "n_train_tiles": len(y_train), "n_val_tiles": len(y_val),
    }
    table = pd.DataFrame(rows).assign(
        experiment="r2", dataset=target.dataset, model=model, probe="ridge", layer=val.layer, metric="r2",
    )
    return _table(table, val.attrs, settings=settings)
