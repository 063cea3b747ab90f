"""Fig 13: k-NN and linear-probe predictions of every model on two val images.

Writes one ``.npz`` the plotter reads, and a JSON sidecar saying what is in it:

- ``image_{i}``: uint8 RGB of val image ``i`` (as tiled: ADE20K resized to
  ``resize_to``), downsampled to at most ``max_width`` px wide (area
  interpolation);
- ``gt_{i}``: its label map (trainIds / ADE20K classes, 255 = ignore), same
  size, nearest-exact;
- ``{model}__{probe}__{i}``: the stitched prediction ([code]: per-tile
  nearest-exact upsampling, ``segmentation.stitch_predictions``), same size,
  nearest-exact.

Probes are those of the other experiments: the k-NN gallery is the whole
labelled training set; the linear probe is trained on it with the configured
fixed schedule.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vitlocal.errors import ConfigError
from vitlocal.evaluation.segmentation import (
    READERS,
    EvalTarget,
    ProbeSettings,
    check_compatible,
    fit_linear,
    knn_predictions,
    labelled,
    linear_predictions,
    load_split,
    select_samples,
    stitch_predictions,
    tiling_of,
)
from vitlocal.tiling import TilingSpec, resize_for_tiling, resize_nearest_exact

PathLike = str | os.PathLike
PROBES = ("knn", "linear")


def display_size(hw: Sequence[int], max_width: int) -> tuple[int, int]:
    """``(H, W)`` scaled to at most ``max_width`` px wide, aspect ratio kept."""
    h, w = (int(v) for v in hw)
    if w <= max_width:
        return h, w
    return max(1, round(h * max_width / w)), max_width


def _image_and_gt(
    target: EvalTarget, sample_id: str, tiling: TilingSpec, max_width: int
) -> tuple[np.ndarray, np.ndarray]:
    """The image and its label map as tiled, downsampled for display."""
    rows = target.manifest[target.manifest["sample_id"].astype(str) == str(sample_id)]
    if rows.empty:
        raise ConfigError(f"sample {sample_id!r} is not in the {target.dataset} val manifest")
    image, labels = READERS[target.dataset](target.root, rows.iloc[0].to_dict())
    image, labels = resize_for_tiling(image, tiling), resize_for_tiling(labels, tiling)
    h, w = display_size(labels.shape, max_width)
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA), resize_nearest_exact(labels, (h, w))


def qualitative_predictions(
    models: Mapping[str, tuple[PathLike, PathLike]],
    out_path: PathLike,
    *,
    target: EvalTarget,
    probes: ProbeSettings,
    sample_ids: Sequence[str] | None = None,
    layer: int | None = None,
    max_width: int = 512,
) -> dict[str, Any]:
    """Write ``out_path`` (.npz) and ``out_path`` with suffix ``.json``; return the sidecar record.

    ``models``: ``{model: (train feature file, val feature file)}``;
    ``sample_ids``: default the first two images of the val manifest;
    ``layer`` ``None``: the last block stored in each val file.
    """
    if not models:
        raise ConfigError("qualitative_predictions: no models given")
    ids = [str(s) for s in (sample_ids if sample_ids is not None else target.manifest["sample_id"].iloc[:2])]
    arrays: dict[str, np.ndarray] = {}
    record: dict[str, Any] = {"dataset": target.dataset, "sample_ids": ids, "class_names": list(target.class_names),
                              "max_width": max_width, "models": {}}
    tiling: TilingSpec | None = None
    for model, (train_path, val_path) in models.items():
        val = load_split(val_path, layer)
        tiling = tiling_of(val, target.tiling)
        train = labelled(load_split(train_path, val.layer))
        check_compatible(train, val)
        shown = select_samples(val, ids)
        probe, settings = fit_linear(train, model, target, probes)
        preds = {
            "knn": knn_predictions(train, shown, k=probes.knn_k, metric=probes.knn_metric, device=probes.device),
            "linear": linear_predictions(probe, shown),
        }
        for name in PROBES:
            for i, sample_id in enumerate(ids):
                full = stitch_predictions(shown, preds[name], sample_id, tiling)
                arrays[f"{model}__{name}__{i}"] = resize_nearest_exact(full, display_size(full.shape, max_width))
        record["models"][model] = {
            "weights": val.attrs["weights"], "layer": val.layer, "batchnorm": probes.batchnorm(model),
            "knn": {"k": probes.knn_k, "metric": probes.knn_metric}, "linear": settings,
        }
        record.update(preset=val.attrs["preset"], data=val.attrs.get("data_source", ""),
                      patch_labels=val.attrs["patch_labels"])
    for i, sample_id in enumerate(ids):
        arrays[f"image_{i}"], arrays[f"gt_{i}"] = _image_and_gt(target, sample_id, tiling, max_width)
    _write(Path(out_path), arrays, record)
    return record


def _write(path: Path, arrays: Mapping[str, np.ndarray], record: Mapping[str, Any]) -> None:
    """Both files atomically (a crash never leaves a half-written figure input)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sidecar = path.with_suffix(".json")
    tmp_npz = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npz")
    tmp_json = sidecar.with_name(f".{sidecar.name}.tmp-{os.getpid()}")
    try:
        np.savez_compressed(tmp_npz, **arrays)
        tmp_json.write_text(json.dumps(record, indent=1, sort_keys=True))
        os.replace(tmp_json, sidecar)
        os.replace(tmp_npz, path)
    finally:
        tmp_npz.unlink(missing_ok=True)
        tmp_json.unlink(missing_ok=True)
