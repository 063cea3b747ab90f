"""Segmentation evaluation core: feature files -> probe predictions -> full-resolution scores -> tidy rows.

Every Cityscapes / ADE20K experiment (Figs 1-4, Tables 2 and 6, Fig 13) is
"load a train and a val feature file at one layer, predict a class per val
patch with the k-NN or the linear probe, score at full resolution". This
module is that pipeline, as small functions the experiments compose.

Scoring [code]: each tile's patch predictions are upsampled nearest-exact to
the tile size, the tiles are stitched back (``tiling.stitch``) and the result
is compared pixel by pixel with the image's label map; for ADE20K the label
map is first resized nearest-exact to the tiling's ``resize_to`` (448x672),
the resolution the images were cut at. Because nearest-exact upsampling gives
every pixel exactly one source patch, the confusion matrix equals
``sum over patches of onehot(prediction) x (target-pixel histogram of the
patch)``. :func:`score_segmentation` computes it that way: the per-patch
target histograms are built once per image (and cached for the process), so
scoring another layer / variant / probe on the same val set is one
``bincount`` instead of re-reading and re-stitching every image. The test
suite checks the result against explicit ``tiling.stitch`` +
``probes.metrics`` scoring.

k-NN gallery: training patches labelled 255 (void) are left out of the
gallery, so every prediction is one of the evaluated classes. (The authors'
gallery held every patch with its 34 Cityscapes labelIds, void included; we
train and predict the 19 trainIds only.)
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from vitlocal.datasets import ade20k, cityscapes
from vitlocal.errors import ConfigError, LabelError
from vitlocal.features.store import read_attrs, read_features
from vitlocal.probes.knn import knn_predict
from vitlocal.probes.knn import resolve_device as _torch_device
from vitlocal.probes.linear import LinearProbe, predict, train_linear_probe
from vitlocal.probes.metrics import iou_per_class, mean_iou, pixel_accuracy
from vitlocal.reproduction import PROVENANCE, TIDY_COLUMNS
from vitlocal.tiling import TilingSpec, nearest_exact_indices, resize_for_tiling, stitch

IGNORE_INDEX = 255
META_COLUMNS = ("sample_id", "tile_id", "patch_row", "patch_col", "image_h", "image_w")
#: Tidy result columns: the reproduction contract plus the compact JSON of the probe settings.
RESULT_COLUMNS = (*TIDY_COLUMNS, "settings")
#: Keys of ``train_linear``'s ``settings`` and their defaults (``probes.linear_*`` of the config).
LINEAR_DEFAULTS: dict[str, Any] = {"epochs": 100, "lr": 1e-3, "batch_size": 4096, "weight_decay": 0.0}
#: Datasets that can be scored here, with their sample reader.
READERS: dict[str, Callable[[str | os.PathLike, Mapping[str, Any]], tuple[np.ndarray, np.ndarray]]] = {
    "cityscapes": cityscapes.read_sample,
    "ade20k": ade20k.read_sample,
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` / ``"auto"``: the GPU when there is one, else the CPU; anything else as torch reads it."""
    return _torch_device(None if device in (None, "auto") else device)


# --------------------------------------------------------------------------- features


@dataclasses.dataclass(frozen=True, eq=False)
class SplitFeatures:
    """One layer of one feature file: features, patch labels and where each patch sits.

    ``x`` float32 (n, C); ``labels`` uint8 (n,) (255 = ignore); ``meta`` has
    ``META_COLUMNS``; ``attrs`` is the file's provenance (``store.read_attrs``).
    """

    x: np.ndarray
    labels: np.ndarray
    meta: pd.DataFrame
    attrs: dict[str, Any]
    layer: int | None = None
    path: str = ""

    def __post_init__(self) -> None:
        n = len(self.meta)
        if self.x.ndim != 2 or len(self.x) != n or self.labels.shape != (n,):
            raise ValueError(
                f"{self.path or 'features'}: x {self.x.shape}, labels {self.labels.shape} and meta "
                f"({n} rows) must have one row per patch"
            )

    @property
    def name(self) -> str:
        """How errors refer to this split."""
        return self.path or f"{self.attrs.get('model', '?')}/{self.attrs.get('split', '?')}"


def load_split(path: str | os.PathLike, layer: int | None = None) -> SplitFeatures:
    """Layer ``layer`` of the feature file ``path`` (``None``: the last stored layer), as float32.

    The float16 on disk is converted once here, so every later matmul and
    statistic runs in float32.
    """
    attrs = read_attrs(path)
    if layer is None:
        layer = max(int(value) for value in attrs["layers"])
    meta, layers = read_features(path, [layer], columns=[*META_COLUMNS, "label"])
    return SplitFeatures(
        x=layers[layer].astype(np.float32),
        labels=np.array(meta.pop("label"), dtype=np.uint8),  # a writable copy, not the Arrow buffer
        meta=meta,
        attrs=attrs,
        layer=int(layer),
        path=str(path),
    )


def with_features(split: SplitFeatures, x: np.ndarray) -> SplitFeatures:
    """``split`` with new features ``x`` (same patches): after dimension removal or standardisation."""
    return dataclasses.replace(split, x=np.asarray(x, dtype=np.float32))


def labelled(split: SplitFeatures, ignore_index: int = IGNORE_INDEX) -> SplitFeatures:
    """Only the patches with a class label: a training set prepared once for many k-NN queries."""
    keep = split.labels != ignore_index
    return split if keep.all() else _rows_of(split, keep)


def _rows_of(split: SplitFeatures, keep: np.ndarray) -> SplitFeatures:
    """The patches of ``split`` where the boolean ``keep`` is set."""
    meta = split.meta[keep].reset_index(drop=True)
    return dataclasses.replace(split, x=split.x[keep], labels=split.labels[keep], meta=meta)


def check_compatible(train: SplitFeatures, val: SplitFeatures) -> None:
    """Train and val features must come from the same model, weights, layer and preset."""
    for key in ("model", "weights", "preset", "patch_labels"):
        if train.attrs.get(key) != val.attrs.get(key):
            raise ConfigError(
                f"{train.name} has {key}={train.attrs.get(key)!r} but {val.name} has {val.attrs.get(key)!r}; "
                "a probe must be trained and evaluated on features of the same setting"
            )
    if train.layer != val.layer or train.x.shape[1] != val.x.shape[1]:
        raise ConfigError(
            f"{train.name} is layer {train.layer} with {train.x.shape[1]} dims but {val.name} is layer "
            f"{val.layer} with {val.x.shape[1]} dims"
        )


# --------------------------------------------------------------------------- probes


def knn_predictions(
    train: SplitFeatures,
    val: SplitFeatures,
    *,
    k: int = 1,
    metric: str = "dot",
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Class of the nearest labelled training patch (majority of ``k``) for every val patch.

    Training patches labelled 255 are not in the gallery (see the module docstring).
    """
    gallery = labelled(train)
    if len(gallery.labels) == 0:
        raise LabelError(f"{train.name}: every training patch is labelled {IGNORE_INDEX}; the k-NN gallery is empty")
    return knn_predict(gallery.x, gallery.labels, val.x, k=k, metric=metric, device=resolve_device(device))


def train_linear(
    train: SplitFeatures,
    *,
    num_classes: int,
    batchnorm: bool,
    settings: Mapping[str, Any],
    seed: int,
    device: str | torch.device | None = None,
) -> tuple[LinearProbe, dict[str, Any]]:
    """Linear probe (BatchNorm first when ``batchnorm``) on every labelled training patch.

    ``settings``: ``epochs``, ``lr``, ``batch_size``, ``weight_decay`` (missing
    ones take ``LINEAR_DEFAULTS``). Fixed schedule, last epoch kept: nothing
    is selected on the images the probe is evaluated on. Returns the probe and
    the settings used (for the ``settings`` column).
    """
    unknown = sorted(set(settings) - set(LINEAR_DEFAULTS))
    if unknown:
        raise ConfigError(f"linear-probe settings {unknown} are unknown; expected keys {sorted(LINEAR_DEFAULTS)}")
    chosen = {**LINEAR_DEFAULTS, **settings}
    return train_linear_probe(
        train.x,
        train.labels,
        num_classes,
        batchnorm=batchnorm,
        epochs=int(chosen["epochs"]),
        lr=float(chosen["lr"]),
        batch_size=int(chosen["batch_size"]),
        weight_decay=float(chosen["weight_decay"]),
        seed=seed,
        device=resolve_device(device),
        ignore_index=IGNORE_INDEX,
    )


def linear_predictions(probe: LinearProbe, val: SplitFeatures, device: str | torch.device | None = None) -> np.ndarray:
    """Class predicted by ``probe`` for every val patch (on ``device``; ``None``: where the probe is)."""
    if device is not None:
        probe = probe.to(resolve_device(device))
    return predict(probe, val.x)


# --------------------------------------------------------------------------- scoring


@dataclasses.dataclass(frozen=True, eq=False)
class SegmentationResult:
    """Full-resolution scores of one prediction of a val set."""

    iou: np.ndarray  #: per class; NaN where the class is neither in the target nor predicted
    miou: float  #: mean of the defined class IoUs
    n_classes_averaged: int
    pixel_accuracy: float
    confusion: np.ndarray  #: (C, C) int64, rows = ground truth, columns = prediction
    n_pixels: int
    #: (n_images, C, 3) int64 per val image (manifest order) and class: true positives, ground-truth pixels
    #: (row sum), predicted pixels (column sum): the addends of a bootstrap over images (``evaluation.units``)
    per_image: np.ndarray | None = None
    image_ids: tuple[str, ...] = ()


def tiling_of(val: SplitFeatures, tiling: TilingSpec | None = None) -> TilingSpec:
    """``tiling``, checked against the tiling recorded in the feature file (``None``: the recorded one)."""
    record = val.attrs.get("tiling")
    if record is None:
        if tiling is None:
            raise ConfigError(f"{val.name} records no tiling; pass the TilingSpec the features were made with")
        return tiling
    recorded = TilingSpec(record["resize_to"], record["rows"], record["cols"], tuple(record["out_size"]))
    if tiling is None:
        return recorded
    if (tiling.resize_to, tiling.rows, tiling.cols) != (recorded.resize_to, recorded.rows, recorded.cols):
        raise ConfigError(
            f"{val.name} was cut with {recorded} but scoring was asked with {tiling}: "
            "predictions would be stitched at the wrong places"
        )
    return tiling


def patch_grid(val: SplitFeatures) -> tuple[int, int]:
    """Patch grid ``(gh, gw)`` of one tile: recorded in the file, else read off the patch positions."""
    if "grid" in val.attrs:
        gh, gw = (int(v) for v in val.attrs["grid"])
        return gh, gw
    return int(val.meta["patch_row"].max()) + 1, int(val.meta["patch_col"].max()) + 1


def pixel_patch_index(image_hw: Sequence[int], tiling: TilingSpec, grid: Sequence[int]) -> np.ndarray:
    """(H, W) int64: which patch of the image each pixel shows after stitching.

    Patches are numbered ``tile_id * gh * gw + patch_row * gw + patch_col``;
    ``image_hw`` is the size of the tiled image (after ``resize_to``); this is
    the pixel -> patch map of ``tiling.stitch`` (nearest-exact per tile).
    """
    h, w = (int(v) for v in image_hw)
    th, tw = tiling.tile_hw((h, w))
    gh, gw = (int(v) for v in grid)
    rows, cols = np.arange(h), np.arange(w)
    row_term = (rows // th) * (tiling.cols * gh * gw) + nearest_exact_indices(gh, th)[rows % th] * gw
    col_term = (cols // tw) * (gh * gw) + nearest_exact_indices(gw, tw)[cols % tw]
    return row_term[:, None] + col_term[None, :]


@dataclasses.dataclass(frozen=True)
class _Histogram:
    """Sparse per-patch target histogram of one image: ``count`` pixels of class ``cls`` in patch ``patch``."""

    patch: np.ndarray
    cls: np.ndarray
    count: np.ndarray
    image_hw: tuple[int, int]


@lru_cache(maxsize=4096)
def _image_histogram(
    dataset: str,
    root: str,
    image_path: str,
    label_path: str,
    resize_to: tuple[int, int] | None,
    layout: tuple[int, int],
    grid: tuple[int, int],
    num_classes: int,
    ignore_index: int,
) -> _Histogram:
    """Target pixels per (patch, class) of one image; cached: many predictions are scored on one val set."""
    _, target = READERS[dataset](root, {"image_path": image_path, "label_path": label_path})
    original_hw = target.shape
    tiling = TilingSpec(resize_to, *layout)
    target = resize_for_tiling(target, tiling)
    valid = target != ignore_index
    values = target[valid].astype(np.int64)
    if values.size and values.max() >= num_classes:
        raise LabelError(
            f"{Path(root, label_path)}: label {int(values.max())} outside 0..{num_classes - 1} (and not {ignore_index})"
        )
    index = pixel_patch_index(target.shape, tiling, grid)[valid]
    n_patches = tiling.n_tiles * grid[0] * grid[1]
    counts = np.bincount(index * num_classes + values, minlength=n_patches * num_classes)
    nonzero = np.flatnonzero(counts)
    return _Histogram(nonzero // num_classes, nonzero % num_classes, counts[nonzero], original_hw)


def _patch_positions(val: SplitFeatures, manifest: pd.DataFrame, n_tiles: int, grid: tuple[int, int]) -> np.ndarray:
    """Index of every val row in the manifest-ordered list of all patches; checks full, single coverage."""
    gh, gw = grid
    per_image = n_tiles * gh * gw
    meta = val.meta
    if manifest["sample_id"].duplicated().any():
        dup = manifest.loc[manifest["sample_id"].duplicated(), "sample_id"].iloc[0]
        raise ConfigError(f"val manifest lists sample {dup!r} twice; each val image must be scored once")
    image = pd.Index(manifest["sample_id"].astype(str)).get_indexer(meta["sample_id"].astype(str))
    if (image < 0).any():
        missing = meta["sample_id"].to_numpy()[image < 0][0]
        raise ConfigError(f"{val.name}: sample {missing!r} is not in the val manifest")
    tile, row, col = (meta[c].to_numpy(np.int64) for c in ("tile_id", "patch_row", "patch_col"))
    if tile.max() >= n_tiles or row.max() >= gh or col.max() >= gw:
        raise ConfigError(
            f"{val.name}: tile/patch indices up to ({tile.max()}, {row.max()}, {col.max()}) do not fit "
            f"{n_tiles} tiles of {gh}x{gw} patches"
        )
    position = image * per_image + (tile * gh + row) * gw + col
    covered = np.bincount(position, minlength=len(manifest) * per_image)
    if (covered != 1).any():
        bad = int(np.flatnonzero(covered != 1)[0])
        sample = manifest["sample_id"].iloc[bad // per_image]
        what = "has no prediction" if covered[bad] == 0 else "is predicted more than once"
        raise ConfigError(
            f"{val.name}: patch {bad % per_image} of sample {sample!r} {what}; the feature file and the val "
            "manifest must cover exactly the same images"
        )
    return position


def score_segmentation(
    val: SplitFeatures,
    preds: np.ndarray,
    *,
    dataset: str,
    root: str | os.PathLike,
    manifest: pd.DataFrame,
    tiling: TilingSpec | None,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
) -> SegmentationResult:
    """Score per-patch ``preds`` of ``val`` at full resolution against the label maps of ``manifest``.

    ``tiling``: how the val images were cut (``None``: as recorded in the
    feature file). Images are taken in manifest order; each must be covered
    by exactly one prediction per patch.
    """
    if dataset not in READERS:
        raise ConfigError(f"segmentation scoring supports {sorted(READERS)}, not {dataset!r}")
    preds = np.asarray(preds)
    if preds.shape != (len(val.labels),):
        raise ValueError(f"preds has shape {preds.shape}; expected ({len(val.labels)},), one class per val patch")
    if preds.size and (preds.min() < 0 or preds.max() >= num_classes):
        raise LabelError(f"predictions range {preds.min()}..{preds.max()}; expected classes 0..{num_classes - 1}")
    tiling = tiling_of(val, tiling)
    grid = patch_grid(val)
    position = _patch_positions(val, manifest, tiling.n_tiles, grid)
    per_image = tiling.n_tiles * grid[0] * grid[1]
    by_position = np.empty(len(manifest) * per_image, dtype=np.int64)
    by_position[position] = preds
    sizes = val.meta.groupby("sample_id", sort=False)[["image_h", "image_w"]].first()

    key_lists, weight_lists = [], []
    for i, row in enumerate(manifest.to_dict("records")):
        hist = _image_histogram(
            dataset, str(root), str(row["image_path"]), str(row["label_path"]), tiling.resize_to,
            (tiling.rows, tiling.cols), grid, num_classes, ignore_index,
        )
        expected = tuple(int(v) for v in sizes.loc[str(row["sample_id"])])
        if hist.image_hw != expected:
            raise LabelError(
                f"{Path(root, row['label_path'])} is {hist.image_hw[0]}x{hist.image_hw[1]} but {val.name} was "
                f"extracted from a {expected[0]}x{expected[1]} image"
            )
        key_lists.append(hist.cls * num_classes + by_position[i * per_image + hist.patch])
        weight_lists.append(hist.count)
    keys, weights = np.concatenate(key_lists), np.concatenate(weight_lists)
    counts = np.bincount(keys, weights=weights, minlength=num_classes**2)
    confusion = np.rint(counts).astype(np.int64).reshape(num_classes, num_classes)
    # Per image, in the same pass: (image, class, tp / gt / pred) addends, one bincount.
    image = np.repeat(np.arange(len(manifest)), [len(k) for k in key_lists])
    truth, predicted = keys // num_classes, keys % num_classes
    cell = (image * num_classes)[:, None] * 3 + np.stack([truth * 3, truth * 3 + 1, predicted * 3 + 2], axis=1)
    addend = np.stack([np.where(truth == predicted, weights, 0), weights, weights], axis=1)
    by_image = np.bincount(cell.ravel(), weights=addend.ravel(), minlength=len(manifest) * num_classes * 3)
    miou, n_classes = mean_iou(confusion)
    return SegmentationResult(
        iou=iou_per_class(confusion),
        miou=miou,
        n_classes_averaged=n_classes,
        pixel_accuracy=pixel_accuracy(confusion),
        confusion=confusion,
        n_pixels=int(confusion.sum()),
        per_image=np.rint(by_image).astype(np.int64).reshape(len(manifest), num_classes, 3),
        image_ids=tuple(manifest["sample_id"].astype(str)),
    )


def select_samples(split: SplitFeatures, sample_ids: Sequence[str]) -> SplitFeatures:
    """Only the patches of ``sample_ids`` (e.g. the images of a qualitative figure)."""
    keep = split.meta["sample_id"].astype(str).isin([str(s) for s in sample_ids]).to_numpy()
    absent = sorted(set(map(str, sample_ids)) - set(split.meta["sample_id"].astype(str)))
    if absent:
        raise ConfigError(f"{split.name}: no patches of sample(s) {absent}")
    return _rows_of(split, keep)


def stitch_predictions(
    val: SplitFeatures, preds: np.ndarray, sample_id: str, tiling: TilingSpec | None = None
) -> np.ndarray:
    """[code] Full-resolution prediction map of one val image via ``tiling.stitch`` (uint8, tiled-image size)."""
    tiling = tiling_of(val, tiling)
    gh, gw = patch_grid(val)
    rows = (val.meta["sample_id"].astype(str) == str(sample_id)).to_numpy()
    if not rows.any():
        raise ConfigError(f"{val.name}: no patches of sample {sample_id!r}")
    meta = val.meta[rows]
    grid = np.full((tiling.n_tiles, gh, gw), -1, dtype=np.int64)
    tile, row, col = (meta[c].to_numpy() for c in ("tile_id", "patch_row", "patch_col"))
    grid[tile, row, col] = np.asarray(preds)[rows]
    if (grid < 0).any():
        raise ConfigError(f"{val.name}: sample {sample_id!r} lacks predictions for some patches")
    tiled_hw = tiling.image_hw((int(meta["image_h"].iloc[0]), int(meta["image_w"].iloc[0])))
    return stitch(grid, tiling, tiling.tile_hw(tiled_hw)).astype(np.uint8)


# --------------------------------------------------------------------------- evaluation setting


@dataclasses.dataclass(frozen=True, eq=False)
class EvalTarget:
    """What predictions are scored against: a dataset's val images, their tiling and class names."""

    dataset: str
    root: Path
    manifest: pd.DataFrame
    class_names: tuple[str, ...]
    tiling: TilingSpec | None = None  #: ``None``: as recorded in the val feature file

    @classmethod
    def load(
        cls,
        dataset: str,
        root: str | os.PathLike,
        manifest: pd.DataFrame | str | os.PathLike,
        tiling: TilingSpec | None = None,
    ) -> EvalTarget:
        """Target of ``dataset`` (``cityscapes``: 19 trainIds; ``ade20k``: 150 classes of ``objectInfo150.txt``)."""
        if dataset == "cityscapes":
            names = tuple(cityscapes.CLASSES)
        elif dataset == "ade20k":
            names = ade20k.read_classes(root)
        else:
            raise ConfigError(f"segmentation scoring supports {sorted(READERS)}, not {dataset!r}")
        table = manifest if isinstance(manifest, pd.DataFrame) else pd.read_csv(manifest, dtype={"sample_id": str})
        return cls(dataset, Path(root), table.reset_index(drop=True), names, tiling)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def score(self, val: SplitFeatures, preds: np.ndarray) -> SegmentationResult:
        """:func:`score_segmentation` of ``preds`` on this target."""
        return score_segmentation(
            val, preds, dataset=self.dataset, root=self.root, manifest=self.manifest,
            tiling=self.tiling, num_classes=self.num_classes,
        )


@dataclasses.dataclass(frozen=True)
class ProbeSettings:
    """Probe settings of the config (``probes.*``, ``seed``, ``device``)."""

    knn_k: int = 1
    knn_metric: str = "dot"
    linear: Mapping[str, Any] = dataclasses.field(default_factory=lambda: dict(LINEAR_DEFAULTS))
    batchnorm_models: tuple[str, ...] = ("mae", "simmim")
    seed: int = 0
    device: str | None = "auto"

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ProbeSettings:
        """From a validated workflow config (``probes.knn_k``, ``probes.linear_*``, ...)."""
        probes = config.get("probes", {})
        linear = {key: probes[f"linear_{key}"] for key in LINEAR_DEFAULTS if f"linear_{key}" in probes}
        return cls(
            knn_k=int(probes.get("knn_k", 1)),
            knn_metric=str(probes.get("knn_metric", "dot")),
            linear={**LINEAR_DEFAULTS, **linear},
            batchnorm_models=tuple(probes.get("batchnorm_models", ("mae", "simmim"))),
            seed=int(config.get("seed", 0)),
            device=config.get("device", "auto"),
        )

    def batchnorm(self, model: str) -> bool:
        """Does ``model`` get BatchNorm in front of its linear layer."""
        return model in self.batchnorm_models

    def knn_record(self, n_gallery: int) -> dict[str, Any]:
        """The ``settings`` record of a k-NN row."""
        return {"k": self.knn_k, "metric": self.knn_metric, "gallery": n_gallery, "gallery_excludes": IGNORE_INDEX}


def knn_result(
    train: SplitFeatures, val: SplitFeatures, target: EvalTarget, probes: ProbeSettings
) -> tuple[SegmentationResult, dict[str, Any]]:
    """Score of the k-NN probe (gallery ``train``) on ``val``, and its settings record."""
    check_compatible(train, val)
    preds = knn_predictions(train, val, k=probes.knn_k, metric=probes.knn_metric, device=probes.device)
    return target.score(val, preds), probes.knn_record(int((train.labels != 255).sum()))


def fit_linear(train: SplitFeatures, model: str, target: EvalTarget, probes: ProbeSettings):
    """The linear probe of ``model`` on ``train`` (BatchNorm first for ``probes.batchnorm_models``)."""
    return train_linear(
        train,
        num_classes=target.num_classes,
        batchnorm=probes.batchnorm(model),
        settings=probes.linear,
        seed=probes.seed,
        device=probes.device,
    )


# --------------------------------------------------------------------------- tidy rows


def provenance(
    attrs: Mapping[str, Any], *, probe: str, knn_metric: str, settings: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Provenance columns of a row from a feature file's attrs; ``knn_metric`` is empty for non-k-NN rows."""
    if "data_source" not in attrs:
        raise ConfigError(f"feature file of model {attrs.get('model')!r} records no data_source (synthetic/official)")
    out = {
        "preset": attrs["preset"],
        "weights": attrs["weights"],
        "knn_metric": knn_metric if probe == "knn" else "",
        "patch_labels": attrs["patch_labels"],
        "data": attrs["data_source"],
    }
    if settings is not None:
        out["settings"] = settings
    return out


def score_rows(
    result: SegmentationResult,
    *,
    experiment: str,
    dataset: str,
    model: str,
    probe: str,
    layer: int | None,
    level: str,
    class_names: Sequence[str],
    provenance: Mapping[str, Any],
) -> pd.DataFrame:
    """Tidy rows of one result: one ``iou`` row per class, a ``mean``/``miou`` row, an ``all``/``pixel_acc`` row.

    ``provenance`` holds ``PROVENANCE`` (preset, weights, knn_metric,
    patch_labels, data) and optionally ``settings`` (a dict, written as compact JSON).
    """
    if len(class_names) != len(result.iou):
        raise ValueError(f"{len(class_names)} class names for {len(result.iou)} class IoUs")
    missing = [key for key in PROVENANCE if key not in provenance]
    if missing:
        raise ConfigError(f"provenance lacks {missing}; every result row records {list(PROVENANCE)}")
    settings = provenance.get("settings")
    constant = {
        "experiment": experiment, "dataset": dataset, "model": model, "probe": probe,
        "layer": pd.NA if layer is None else int(layer), "level": level,
        **{key: provenance[key] for key in PROVENANCE},
        "settings": json.dumps(settings, sort_keys=True, separators=(",", ":")) if settings is not None else "",
    }
    classes = [*class_names, "mean", "all"]
    metrics = ["iou"] * len(class_names) + ["miou", "pixel_acc"]
    values = [*result.iou.tolist(), result.miou, result.pixel_accuracy]
    table = pd.DataFrame({"class": classes, "metric": metrics, "value": values}).assign(**constant)
    table["layer"] = table["layer"].astype("Int64")
    return table[list(RESULT_COLUMNS)]
