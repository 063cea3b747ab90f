"""Per-unit sufficient statistics: the sidecar an experiment writes beside its CSV (``layout.experiment_units``).

A number of an experiment CSV is a function of sums over evaluation units
(images, crops, videos): an mIoU of summed per-image true positives, ground
truth and predicted pixels per class; a share of summed counts. The sidecar
holds those per-unit addends, so a later step (the card) can bootstrap the
number over units without rerunning any probe.

One tidy table, long and sparse: ``UNIT_COLUMNS``. The keys ``experiment``,
``model``, ``probe``, ``layer``, ``level`` are those of the CSV rows a
statistic supports; ``class`` is a class name, a retrieval category or
``all``; ``stat`` names the addend (``tp``, ``gt``, ``pred``; ``count``;
``pairs``, ...). Zero addends are left out, except each unit's *total*
(``all``/``pixels``, ``queries``/``count``, ``all``/``pairs``), written for every
unit even when zero, so that the list of units survives.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..io import atomic_output

UNIT_COLUMNS = ("experiment", "model", "probe", "layer", "level", "class", "unit", "stat", "value")
#: Per-image, per-class addends of a segmentation score (``SegmentationResult.per_image``'s last axis).
SEGMENTATION_STATS = ("tp", "gt", "pred")
#: The per-image total of a segmentation score: its scored (non-ignore) pixels.
PIXELS = ("all", "pixels")


def unit_frame(keys: Mapping[str, Any], unit_ids: Sequence[str], columns: Sequence[tuple[str, str]],
               values: np.ndarray, total: int) -> pd.DataFrame:
    """Long rows of ``values`` ((n_units, K): unit by ``(class, stat)`` column), zeros left out but ``total``'s."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (len(unit_ids), len(columns)):
        raise ValueError(f"values {values.shape} must be (units {len(unit_ids)}, columns {len(columns)})")
    keep = values != 0
    keep[:, total] = True
    unit, column = np.nonzero(keep)
    classes = np.array([c for c, _ in columns], dtype=object)
    stats = np.array([s for _, s in columns], dtype=object)
    table = pd.DataFrame({"class": classes[column], "unit": np.asarray(unit_ids, dtype=object)[unit],
                          "stat": stats[column], "value": values[unit, column]})
    for key in ("experiment", "model", "probe", "level"):
        table[key] = str(keys[key])
    layer = keys.get("layer")
    table["layer"] = pd.array([pd.NA if layer is None else int(layer)] * len(table), dtype="Int64")
    return table[list(UNIT_COLUMNS)]


def segmentation_units(per_image: np.ndarray, image_ids: Sequence[str], class_names: Sequence[str],
                       **keys: Any) -> pd.DataFrame:
    """Sidecar rows of one segmentation score: per image and class ``tp``, ``gt``, ``pred``; per image ``pixels``."""
    n, c, _ = per_image.shape
    columns = [(name, stat) for name in class_names for stat in SEGMENTATION_STATS] + [PIXELS]
    values = np.hstack([per_image.reshape(n, c * len(SEGMENTATION_STATS)), per_image[:, :, 1].sum(axis=1)[:, None]])
    return unit_frame(keys, image_ids, columns, values, total=len(columns) - 1)


def write_units(frames: Sequence[pd.DataFrame], path: str | os.PathLike) -> None:
    """One parquet of every frame, written atomically (as ``write_csv``)."""
    if not frames:
        raise ValueError(f"{path}: no per-unit statistics to write")
    table = pd.concat(frames, ignore_index=True)[list(UNIT_COLUMNS)]
    for column in ("experiment", "model", "probe", "level", "class", "stat"):
        table[column] = table[column].astype("category")
    with atomic_output(path) as tmp:
        table.to_parquet(tmp, index=False)


def read_units(paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """The rows of several sidecars as one frame (categories as plain strings)."""
    frames = [pd.read_parquet(p) for p in paths]
    if not frames:
        return pd.DataFrame(columns=list(UNIT_COLUMNS))
    table = pd.concat(frames, ignore_index=True)
    for column in ("experiment", "model", "probe", "level", "class", "stat"):
        table[column] = table[column].astype(str)
    return table


def pivot_units(rows: pd.DataFrame, columns: Sequence[tuple[str, str]],
                units: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """(n_units, K) addends of the ``(class, stat)`` ``columns`` (0 where absent) and the unit ids.

    ``units``: the rows' units (in order of appearance) by default; give a
    common list to line up two selections unit by unit (a paired resample).
    """
    ids = list(dict.fromkeys(rows["unit"].astype(str))) if units is None else list(units)
    unit_at = pd.Index(ids).get_indexer(rows["unit"].astype(str))
    column_at = pd.MultiIndex.from_tuples(list(columns)).get_indexer(
        pd.MultiIndex.from_arrays([rows["class"].astype(str), rows["stat"].astype(str)]))
    keep = (unit_at >= 0) & (column_at >= 0)
    out = np.zeros((len(ids), len(columns)))
    np.add.at(out, (unit_at[keep], column_at[keep]), rows["value"].to_numpy(np.float64)[keep])
    return out, ids


def segmentation_array(rows: pd.DataFrame, units: Sequence[str] | None = None,
                       classes: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """(n_images, C, 3) ``tp, gt, pred`` of one score's sidecar rows (``classes``: by default those with a
    nonzero addend; a class with none adds nothing to any mIoU)."""
    if classes is None:
        classes = [c for c in dict.fromkeys(rows["class"].astype(str)) if c != PIXELS[0]]
    columns = [(name, stat) for name in classes for stat in SEGMENTATION_STATS]
    values, ids = pivot_units(rows, columns, units)
    return values.reshape(len(ids), len(classes), len(SEGMENTATION_STATS)), ids


def miou_of_stats(sums: np.ndarray, present_only: bool = False) -> float:
    """Mean IoU of summed ``(C, 3)`` ``tp, gt, pred`` as ``probes.metrics.mean_iou``: IoU = tp / (gt + pred - tp),
    classes of union 0 left out; ``present_only``: only classes with ground truth (ADE20K's rows)."""
    tp, gt, pred = (sums[:, i] for i in range(3))
    union = gt + pred - tp
    defined = gt > 0 if present_only else union > 0
    return float(np.mean(tp[defined] / union[defined])) if defined.any() else float("nan")
