"""Fig 5: k-NN scene classification across ground sample distances (UC Merced, RESISC45).

Protocol (config ``scene``):

- every image is downsampled by a relative scale ``s`` (area averaging, as
  Scale-MAE's own k-NN evaluation): the content then has ``1/s`` times the
  original GSD; it is then normalised and resized bicubically to the model's
  input exactly like every tile of the study (``tiling.preprocess_tiles``);
- Scale-MAE (whose position embedding is GSD-aware) gets
  ``gsd_ratio = base_resolution / s``, the ratio Scale-MAE's k-NN evaluation
  passes for an image of that resolution; other models get the plain resize;
- per image and scale the job stores the [CLS] token, the mean of the patch
  tokens and the mean of their squares (last block, final LayerNorm), so the
  k-NN step can rank dimensions by their variance over all training *patches*
  without storing every patch;
- k-NN accuracy on a seeded stratified train/test split, for [CLS] and mean
  patch, each with all dimensions and without the top-m variance dimensions
  (ranked on the training images: over their [CLS] tokens for [CLS], over all
  their patch tokens for the mean patch, as Fig 4 ranks patches).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
import pandas as pd
import torch

from ...errors import ConfigError
from ...plotting.base import atomic_output
from ...evaluation.segmentation import RESULT_COLUMNS, resolve_device
from ...io import read_rgb
from ...layout import fmt
from ...models.registry import ModelSpec
from ...probes.knn import knn_predict
from ...probes.variance import remove_dims, top_variance_dims
from ...tiling import preprocess_tiles

log = logging.getLogger(__name__)

PathLike = str | os.PathLike
REPRESENTATIONS = ("cls", "mean")
#: Extra columns of the ``scene_knn`` rows (beside ``RESULT_COLUMNS``).
KNN_COLUMNS = (*RESULT_COLUMNS, "representation", "scale", "removed_dims")
#: Nominal GSD of the datasets in metres (RESISC45 varies, 0.2-30 m: none).
NATIVE_GSD_M = {"ucmerced": 0.3}


def resample_gsd(image: np.ndarray, scale: float) -> np.ndarray:
    """``image`` (h, w, 3) uint8 downsampled by ``scale`` in (0, 1] with area averaging; 1 returns it unchanged."""
    if not 0 < scale <= 1:
        raise ConfigError(f"scene.scales: {scale} is not a relative scale in (0, 1]")
    if scale == 1:
        return image
    h, w = image.shape[:2]
    size = (max(1, int(np.floor(w * scale + 0.5))), max(1, int(np.floor(h * scale + 0.5))))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def model_input(image: np.ndarray, scale: float, spec: ModelSpec) -> np.ndarray:
    """The (3, S, S) float32 input of ``spec`` for ``image`` at relative scale ``scale``."""
    return preprocess_tiles(resample_gsd(image, scale)[None], spec.mean, spec.std, spec.input_size)[0]


def uses_gsd(model: torch.nn.Module) -> bool:
    """Does ``model`` take a GSD (Scale-MAE's GSD-aware position embedding)."""
    from ...models.archs import ScaleMaeVisionTransformer

    return isinstance(model, ScaleMaeVisionTransformer)


def gsd_ratio(scale: float, base_resolution: float) -> float:
    """Scale-MAE's ``input_res`` for content at relative scale ``scale``: ``base_resolution / scale``."""
    return float(base_resolution) / float(scale)


@torch.no_grad()
def token_summaries(extractor, x: torch.Tensor, layer: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[CLS] token, mean patch token and mean squared patch token of block ``layer``, each (B, C) float32."""
    patch, cls = extractor.forward_layers(x, [layer])
    if cls is None:
        raise ConfigError(f"model {extractor.spec.key!r} has no [CLS] token; Fig 5 compares [CLS] with mean patch")
    tokens = patch[layer].float()
    return (cls[layer].float().cpu().numpy(), tokens.mean(dim=1).cpu().numpy(),
            (tokens * tokens).mean(dim=1).cpu().numpy())


@dataclass(frozen=True)
class SceneFeatures:
    """Per scale and image: ``cls``, ``mean`` and ``sq_mean`` (S, N, C); labels, ids, scales, provenance."""

    cls: np.ndarray
    mean: np.ndarray
    sq_mean: np.ndarray
    labels: np.ndarray
    sample_ids: np.ndarray
    scales: np.ndarray
    gsd_ratios: np.ndarray
    attrs: dict[str, Any]


def extract_scene_features(
    *,
    dataset: str,
    root: PathLike,
    manifest: pd.DataFrame,
    spec: ModelSpec,
    extractor,
    scales: Sequence[float],
    base_resolution: float,
    batch_size: int,
    preset: str,
    data_source: str,
) -> SceneFeatures:
    """Features of every manifest image at every scale (images decoded once, the model built by the caller)."""
    if len(manifest) == 0:
        raise ConfigError(f"{dataset}: the manifest is empty")
    scales = [float(s) for s in scales]
    layer = extractor.depth
    gsd = uses_gsd(extractor.model)
    device = next(extractor.parameters()).device
    out = {name: [] for name in ("cls", "mean", "sq_mean")}
    rows = manifest.to_dict("records")
    for start in range(0, len(rows), batch_size):
        images = [read_rgb(Path(root, row["image_path"])) for row in rows[start:start + batch_size]]
        per_scale = {name: [] for name in out}
        for scale in scales:
            if gsd:
                extractor.model.gsd_ratio = gsd_ratio(scale, base_resolution)
            x = torch.from_numpy(np.stack([model_input(image, scale, spec) for image in images])).to(device)
            for name, values in zip(out, token_summaries(extractor, x, layer)):
                per_scale[name].append(values)
        for name in out:
            out[name].append(np.stack(per_scale[name]))  # (S, B, C)
        log.info("%s/%s: %d of %d images", dataset, spec.key, min(start + batch_size, len(rows)), len(rows))
    ratios = [gsd_ratio(s, base_resolution) if gsd else float("nan") for s in scales]
    attrs = {
        "model": spec.key, "arch": spec.arch, "weights": spec.weights_label, "layer": layer, "dataset": dataset,
        "split": "all", "data_source": data_source, "preset": preset, "n_images": len(rows),
        "input_size": spec.input_size, "downsample": "cv2.INTER_AREA", "resize": "normalise, then bicubic",
        "gsd_aware": gsd, "base_resolution": float(base_resolution),
    }
    return SceneFeatures(
        cls=np.concatenate(out["cls"], axis=1), mean=np.concatenate(out["mean"], axis=1),
        sq_mean=np.concatenate(out["sq_mean"], axis=1), labels=manifest["label"].to_numpy(np.int64),
        sample_ids=np.asarray(manifest["sample_id"].astype(str).tolist(), dtype=str), scales=np.asarray(scales),
        gsd_ratios=np.asarray(ratios), attrs=attrs,
    )


def write_scene_features(features: SceneFeatures, path: PathLike) -> None:
    """Atomic ``.npz`` (float32 tokens, provenance as JSON in ``attrs``)."""
    arrays = {name: getattr(features, name) for name in ("cls", "mean", "sq_mean", "labels", "sample_ids",
                                                          "scales", "gsd_ratios")}
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays, attrs=np.array(json.dumps(features.attrs, sort_keys=True)))


def read_scene_features(path: PathLike) -> SceneFeatures:
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files if name != "attrs"}
        attrs = json.loads(str(data["attrs"]))
    return SceneFeatures(**arrays, attrs=attrs)


# --------------------------------------------------------------------------- k-NN


def scene_split(labels: np.ndarray, train_fraction: float, seed: int) -> np.ndarray:
    """Boolean train mask: per class, ``round(f * n)`` images (at least one each side) drawn with ``[seed, class]``."""
    if not 0 < train_fraction < 1:
        raise ConfigError(f"scene.train_fraction = {train_fraction}; expected a fraction in (0, 1)")
    labels = np.asarray(labels)
    train = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < 2:
            raise ConfigError(f"class {int(c)} has {len(members)} image(s); a train/test split needs 2 or more")
        n_train = min(max(1, int(np.floor(train_fraction * len(members) + 0.5))), len(members) - 1)
        train[np.random.default_rng([seed, int(c)]).permutation(members)[:n_train]] = True
    return train


def representation_variance(features: SceneFeatures, scale_index: int, train: np.ndarray) -> dict[str, np.ndarray]:
    """Per-dimension population variance over the training images: of their [CLS] tokens, of all their patches.

    Every image has the same number of patches, so the pooled patch variance
    is the mean of the per-image ``E[x^2]`` minus the squared mean of the
    per-image means.
    """
    cls = features.cls[scale_index, train].astype(np.float64)
    mean = features.mean[scale_index, train].astype(np.float64).mean(axis=0)
    patch_var = features.sq_mean[scale_index, train].astype(np.float64).mean(axis=0) - mean**2
    return {"cls": cls.var(axis=0), "mean": np.clip(patch_var, 0.0, None)}


def check_removed_dims(m: int, n_dims: int, model: str) -> int:
    if not 0 < m < n_dims:
        raise ConfigError(
            f"scene.removed_dims = {m}: model {model!r} has {n_dims} dimensions; expected 0 < m < {n_dims}"
        )
    return m


def scene_knn_rows(
    model: str,
    paths: Mapping[str, PathLike],
    *,
    removed_dims: int,
    train_fraction: float,
    k: int,
    metric: str,
    seed: int,
    device: str | None = "auto",
) -> pd.DataFrame:
    """Fig 5 rows of ``model``: k-NN accuracy per dataset, scale, representation, with / without the top-m dims.

    ``model`` rows use every dimension, ``<model>-<m>`` rows lack the top-m
    (the study's "MAE-200" convention). Level ``<representation>:scale=<s>``.
    """
    frames = []
    dev = resolve_device(device)
    for dataset, path in paths.items():
        features = read_scene_features(path)
        if features.attrs["model"] != model or features.attrs["dataset"] != dataset:
            raise ConfigError(f"{path} holds {features.attrs['dataset']}/{features.attrs['model']}, "
                              f"not {dataset}/{model}")
        m = check_removed_dims(int(removed_dims), features.cls.shape[-1], model)
        train = scene_split(features.labels, train_fraction, seed)
        y_train, y_test = features.labels[train], features.labels[~train]
        split_sha = hashlib.sha256("\n".join(sorted(features.sample_ids[train])).encode()).hexdigest()[:16]
        for si, scale in enumerate(features.scales):
            variances = representation_variance(features, si, train)
            for rep in REPRESENTATIONS:
                x = getattr(features, rep)[si].astype(np.float32)
                for removed in (0, m):
                    dims = top_variance_dims(variances[rep], removed)
                    xr = remove_dims(x, dims)
                    preds = knn_predict(xr[train], y_train, xr[~train], k=k, metric=metric, device=dev)
                    settings = {
                        "k": k, "metric": metric, "train_fraction": train_fraction, "seed": seed,
                        "n_train": int(train.sum()), "n_test": int((~train).sum()), "train_ids_sha256": split_sha,
                        "split": "stratified per class, numpy default_rng([seed, label])",
                        "ranked_on": "train [CLS] tokens" if rep == "cls" else "all patches of the train images",
                        "gsd_ratio": None if np.isnan(features.gsd_ratios[si]) else float(features.gsd_ratios[si]),
                        "gsd_m": (NATIVE_GSD_M[dataset] / float(scale)) if dataset in NATIVE_GSD_M else None,
                    }
                    frames.append({
                        "experiment": "scene_knn", "dataset": dataset,
                        "model": model if removed == 0 else f"{model}-{removed}", "probe": "knn",
                        "layer": int(features.attrs["layer"]), "level": f"{rep}:scale={fmt(float(scale))}",
                        "class": "all", "metric": "accuracy", "value": float(np.mean(preds == y_test)),
                        "preset": features.attrs["preset"], "weights": features.attrs["weights"],
                        "knn_metric": metric, "patch_labels": "none", "data": features.attrs["data_source"],
                        "settings": json.dumps(settings, sort_keys=True, separators=(",", ":")),
                        "representation": rep, "scale": fmt(float(scale)), "removed_dims": removed,
                    })
    table = pd.DataFrame(frames, columns=list(KNN_COLUMNS))
    table["layer"] = table["layer"].astype("Int64")
    return table


def extract_scene_feature_files(
    *,
    model_key: str,
    model_overrides: Mapping[str, Any] | None,
    datasets: Sequence[str],
    roots: Mapping[str, PathLike],
    manifests: Mapping[str, PathLike],
    data_sources: Mapping[str, str],
    out_paths: Sequence[PathLike],
    scales: Sequence[float],
    base_resolution: float,
    weights_dir: PathLike,
    device: str,
    batch_size: int,
    preset: str,
) -> None:
    """The GSD job of one model: build it once, write one features file per dataset (``out_paths`` in order)."""
    from ...features.pipeline import resolve_device as pipeline_device
    from ...models.extractor import build_extractor
    from ...models.registry import resolve
    from ...subsets import read_manifest

    if len(out_paths) != len(datasets):
        raise ConfigError(f"{len(out_paths)} output paths for datasets {list(datasets)}")
    spec = resolve(model_key, model_overrides)
    extractor = build_extractor(spec, weights_dir, pipeline_device(device))
    for dataset, path in zip(datasets, out_paths):
        features = extract_scene_features(
            dataset=dataset, root=roots[dataset], manifest=read_manifest(manifests[dataset]), spec=spec,
            extractor=extractor, scales=scales, base_resolution=base_resolution, batch_size=batch_size,
            preset=preset, data_source=data_sources[dataset],
        )
        write_scene_features(features, path)
        log.info("%s/%s: %d images x %d scales -> %s", dataset, model_key, features.cls.shape[1],
                 len(features.scales), path)
