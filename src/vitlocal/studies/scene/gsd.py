"""Fig 5: k-NN scene classification across ground sample distances (UC Merced, RESISC45).

Protocol (config ``scene``), Scale-MAE's own k-NN evaluation (``mae/eval/knn.py``
of its repository) repeated for every model:

- every image, normalised with the model's mean / std, is area-interpolated
  (``torch.nn.functional.interpolate(mode="area")``, as Scale-MAE) to
  ``size x size`` pixels for each ``size`` of ``scene.eval_sizes`` and fed **at
  that size** (a grid of ``size / patch`` patches): the content's GSD is
  ``224 / size`` times its GSD at 224 px (``gsd_ratio``);
- Scale-MAE (GSD-aware position embedding) gets
  ``input_res = base_resolution * 224 / size``, so its position span stays
  ``224 / patch`` grid units at every size; MAE and DINO get the same small
  image, their position embedding interpolated to its grid (the extractor's
  dynamic-image-size path);
- per image and size the job stores the [CLS] token, the mean of the patch
  tokens and the mean of their squares (last block, final LayerNorm), so the
  k-NN step can rank dimensions by their variance over all training *patches*
  without storing every patch;
- k-NN accuracy (``knn.py``) on a seeded stratified train/test split, for
  [CLS] and mean patch, each with all dimensions and without the top-m
  variance dimensions (ranked on the training images only: over their [CLS]
  tokens for [CLS], over all their patch tokens for the mean patch, as Fig 4
  ranks patches).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ...errors import ConfigError, CorruptFileError
from ...io import atomic_output
from ...evaluation.segmentation import RESULT_COLUMNS, resolve_device
from ...io import read_rgb
from ...models.registry import ModelSpec
from ...probes.variance import remove_dims, top_variance_dims
from . import check_eval_sizes
from .knn import knn_classify, knn_protocol

log = logging.getLogger(__name__)

PathLike = str | os.PathLike
REPRESENTATIONS = ("cls", "mean")
#: Extra columns of the ``scene_knn`` rows (beside ``RESULT_COLUMNS``).
KNN_COLUMNS = (*RESULT_COLUMNS, "representation", "input_px", "gsd_ratio", "removed_dims", "k", "knn")
#: Scale-MAE's reference input size: its k-NN passes ``input_res = base * 224 / eval_scale``.
SCALEMAE_REFERENCE_PX = 224
#: Nominal GSD (metres) and side (px) of the datasets' images (RESISC45 varies, 0.2-30 m: none).
NATIVE_GSD_M = {"ucmerced": (0.3, 256)}
ARRAYS = ("cls", "mean", "sq_mean", "labels", "sample_ids", "sizes", "input_res")


def model_input(image: np.ndarray, size: int, spec: ModelSpec) -> np.ndarray:
    """(3, size, size) float32 input of ``spec``: ``image`` (h, w, 3) uint8 normalised, then area-interpolated."""
    if size < 1:
        raise ConfigError(f"scene.eval_sizes: {size} is not a positive size in px")
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(3, 1, 1)
    x = (torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0 - mean) / std
    return F.interpolate(x[None], (int(size), int(size)), mode="area")[0].numpy()


def uses_gsd(model: torch.nn.Module) -> bool:
    """Does ``model`` take a GSD (Scale-MAE's GSD-aware position embedding)."""
    from ...models.archs import ScaleMaeVisionTransformer

    return isinstance(model, ScaleMaeVisionTransformer)


def gsd_ratio(size: int) -> float:
    """GSD of a ``size``-px input relative to the same image at Scale-MAE's 224 px reference."""
    return SCALEMAE_REFERENCE_PX / float(size)


def scalemae_input_res(size: int, base_resolution: float) -> float:
    """Scale-MAE's ``input_res`` for a ``size``-px input: ``base * 224 / size`` (its ``eval/knn.py``)."""
    return float(base_resolution) * gsd_ratio(size)


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
    """Per size and image: ``cls``, ``mean``, ``sq_mean`` (S, N, C); labels, ids, sizes, Scale-MAE's input_res."""

    cls: np.ndarray
    mean: np.ndarray
    sq_mean: np.ndarray
    labels: np.ndarray
    sample_ids: np.ndarray
    sizes: np.ndarray
    input_res: np.ndarray
    attrs: dict[str, Any]


def extract_scene_features(
    *,
    dataset: str,
    root: PathLike,
    manifest: pd.DataFrame,
    spec: ModelSpec,
    extractor,
    sizes: Sequence[int],
    base_resolution: float,
    batch_size: int,
    preset: str,
    data_source: str,
) -> SceneFeatures:
    """Features of every manifest image at every size (images decoded once, the model built by the caller)."""
    if len(manifest) == 0:
        raise ConfigError(f"{dataset}: the manifest is empty")
    sizes = check_eval_sizes(sizes, spec)
    layer = extractor.depth
    gsd = uses_gsd(extractor.model)
    device = next(extractor.parameters()).device
    out = {name: [] for name in ("cls", "mean", "sq_mean")}
    rows = manifest.to_dict("records")
    for start in range(0, len(rows), batch_size):
        images = [read_rgb(Path(root, row["image_path"])) for row in rows[start:start + batch_size]]
        per_size = {name: [] for name in out}
        for size in sizes:
            if gsd:
                extractor.model.gsd_ratio = scalemae_input_res(size, base_resolution)
            x = torch.from_numpy(np.stack([model_input(image, size, spec) for image in images])).to(device)
            for name, values in zip(out, token_summaries(extractor, x, layer)):
                per_size[name].append(values)
        for name in out:
            out[name].append(np.stack(per_size[name]))  # (S, B, C)
        log.info("%s/%s: %d of %d images", dataset, spec.key, min(start + batch_size, len(rows)), len(rows))
    input_res = [scalemae_input_res(s, base_resolution) if gsd else float("nan") for s in sizes]
    attrs = {
        "model": spec.key, "arch": spec.arch, "weights": spec.weights_label, "layer": layer, "dataset": dataset,
        "split": "all", "data_source": data_source, "preset": preset, "n_images": len(rows),
        "native_input_size": spec.input_size, "resample": "normalise, then torch interpolate mode=area to size^2",
        "position_embedding": "Scale-MAE: GSD sin-cos, input_res = base*224/size" if gsd
        else "interpolated to the size's grid (dynamic image size)",
        "gsd_aware": gsd, "base_resolution": float(base_resolution),
    }
    return SceneFeatures(
        cls=np.concatenate(out["cls"], axis=1), mean=np.concatenate(out["mean"], axis=1),
        sq_mean=np.concatenate(out["sq_mean"], axis=1), labels=manifest["label"].to_numpy(np.int64),
        sample_ids=np.asarray(manifest["sample_id"].astype(str).tolist(), dtype=str),
        sizes=np.asarray(sizes, dtype=np.int64), input_res=np.asarray(input_res), attrs=attrs,
    )


def remove_leftovers(path: PathLike) -> list[Path]:
    """Delete temporary files of an interrupted save of ``path`` (``kill -9`` skips the cleanup)."""
    path = Path(path)
    stale = sorted(path.parent.glob(f".{path.name}.tmp-*")) if path.parent.is_dir() else []
    for leftover in stale:
        leftover.unlink(missing_ok=True)
        log.info("removed %s, left by an interrupted save", leftover)
    return stale


def write_scene_features(features: SceneFeatures, path: PathLike) -> None:
    """Atomic ``.npz`` (float32 tokens, provenance as JSON in ``attrs``)."""
    arrays = {name: getattr(features, name) for name in ARRAYS}
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays, attrs=np.array(json.dumps(features.attrs, sort_keys=True)))


def read_scene_features(path: PathLike) -> SceneFeatures:
    """The features of ``path``; a truncated, foreign or older file is an error naming the file and the cause."""
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [name for name in (*ARRAYS, "attrs") if name not in data.files]
            if missing:
                raise CorruptFileError(f"scene features {path} lack arrays {missing} (written by another version?); "
                                       "delete it and rerun its scene_features job")
            arrays = {name: data[name] for name in ARRAYS}
            attrs = json.loads(str(data["attrs"]))
    except CorruptFileError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as err:
        raise CorruptFileError(f"cannot read scene features {path}: {type(err).__name__}: {err} (truncated or "
                               "not an .npz?); delete it and rerun its scene_features job") from err
    n_sizes, n_images = len(arrays["sizes"]), len(arrays["labels"])
    for name in ("cls", "mean", "sq_mean"):
        if arrays[name].ndim != 3 or arrays[name].shape[:2] != (n_sizes, n_images):
            raise CorruptFileError(f"scene features {path}: {name} has shape {arrays[name].shape}, expected "
                                   f"({n_sizes} sizes, {n_images} images, C)")
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


def representation_variance(features: SceneFeatures, size_index: int, train: np.ndarray) -> dict[str, np.ndarray]:
    """Per-dimension population variance over the training images: of their [CLS] tokens, of all their patches.

    Every image has the same number of patches, so the pooled patch variance
    is the mean of the per-image ``E[x^2]`` minus the squared mean of the
    per-image means.
    """
    cls = features.cls[size_index, train].astype(np.float64)
    mean = features.mean[size_index, train].astype(np.float64).mean(axis=0)
    patch_var = features.sq_mean[size_index, train].astype(np.float64).mean(axis=0) - mean**2
    return {"cls": cls.var(axis=0), "mean": np.clip(patch_var, 0.0, None)}


def check_removed_dims(m: int, n_dims: int, model: str) -> int:
    """The rule of ``scene.removed_dims``: smaller than the model's width, else the job stops."""
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
    knn: str,
    k: int,
    temperature: float,
    seed: int,
    device: str | None = "auto",
) -> pd.DataFrame:
    """Fig 5 rows of ``model``: k-NN accuracy per dataset, input size, representation, with / without the top-m dims.

    ``model`` rows use every dimension, ``<model>-<m>`` rows lack the top-m
    (the study's "MAE-200" convention). Level ``<representation>:px=<size>``.
    """
    protocol = knn_protocol(knn, k, temperature)
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
        for si, size in enumerate(int(s) for s in features.sizes):
            variances = representation_variance(features, si, train)
            input_res = float(features.input_res[si])
            for rep in REPRESENTATIONS:
                x = getattr(features, rep)[si].astype(np.float32)
                for removed in (0, m):
                    dims = top_variance_dims(variances[rep], removed)
                    xr = remove_dims(x, dims)
                    preds = knn_classify(xr[train], y_train, xr[~train], mode=knn, k=k, temperature=temperature,
                                         device=dev)
                    settings = {
                        **protocol, "train_fraction": train_fraction, "seed": seed, "n_train": int(train.sum()),
                        "n_test": int((~train).sum()), "train_ids_sha256": split_sha,
                        "split": "stratified per class, numpy default_rng([seed, label])",
                        "ranked_on": "train [CLS] tokens" if rep == "cls" else "all patches of the train images",
                        "removed": [int(d) for d in dims], "input_px": size, "gsd_ratio": gsd_ratio(size),
                        "scalemae_input_res": None if np.isnan(input_res) else input_res,
                        "gsd_m": (NATIVE_GSD_M[dataset][0] * NATIVE_GSD_M[dataset][1] / size
                                  if dataset in NATIVE_GSD_M else None),
                    }
                    frames.append({
                        "experiment": "scene_knn", "dataset": dataset,
                        "model": model if removed == 0 else f"{model}-{removed}", "probe": "knn",
                        "layer": int(features.attrs["layer"]), "level": f"{rep}:px={size}",
                        "class": "all", "metric": "accuracy", "value": float(np.mean(preds == y_test)),
                        "preset": features.attrs["preset"], "weights": features.attrs["weights"],
                        "knn_metric": protocol["metric"], "patch_labels": "none", "data": features.attrs["data_source"],
                        "settings": json.dumps(settings, sort_keys=True, separators=(",", ":")),
                        "representation": rep, "input_px": size, "gsd_ratio": gsd_ratio(size),
                        "removed_dims": removed, "k": protocol["k"], "knn": knn,
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
    sizes: Sequence[int],
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
    for path in out_paths:
        remove_leftovers(path)
    spec = resolve(model_key, model_overrides)
    check_eval_sizes(sizes, spec)
    extractor = build_extractor(spec, weights_dir, pipeline_device(device), dynamic_img_size=True)
    for dataset, path in zip(datasets, out_paths):
        features = extract_scene_features(
            dataset=dataset, root=roots[dataset], manifest=read_manifest(manifests[dataset]), spec=spec,
            extractor=extractor, sizes=sizes, base_resolution=base_resolution, batch_size=batch_size,
            preset=preset, data_source=data_sources[dataset],
        )
        write_scene_features(features, path)
        log.info("%s/%s: %d images x %d sizes -> %s", dataset, model_key, features.cls.shape[1],
                 len(features.sizes), path)
