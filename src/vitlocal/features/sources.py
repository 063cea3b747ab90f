"""Tile sources: one torch ``Dataset`` per dataset kind, item ``i`` = manifest row ``i`` as :class:`ImageTiles`.

Each item decodes its image once, applies the image variant to the *whole*
image (so blur and noise do not see tile borders and geometric transforms can
use real surroundings), cuts it into tiles in memory and puts one label per
patch on the model's patch grid. The engine (``features.engine``) only sees
tiles and per-patch columns, never a dataset.

Variant names: the degradation grammar of ``features.degrade`` (``"clean"``,
``"blur-4"``, ``"noise-20"``, ``"freqnoise-1"``, ``"shift-3"``,
``"rotate-10"``, ``"scale-0.9"``) plus ``"full"``: the clean image fed whole
(one tile at the size the image is tiled at, rounded to the patch size; the
model interpolates its position embedding). ``"full"`` does not compose with
a degradation: Table 5 / Fig 12 compare clean tiled vs clean whole images.
Geometric kinds change the labels, which only FAIR1M can recompute exactly
(from its boxes), so they are refused for the other datasets.

Per-patch columns besides ``label`` (class index, 255 = ignore):

- segmentation and FAIR1M with ``nearest_exact`` labels: ``label_majority``
  (the majority vote as well: cheap next to the model, and it lets the
  paper's wording be checked on the same features);
- FAIR1M: ``source_patch``, the row-major index in the untransformed crop of
  the patch holding this patch's centre (``-1`` if it left the crop): the
  "same patch" of the retrieval experiment (identity for photometric variants).

``ImageTiles.image_hw`` is the size of the decoded image (the FAIR1M crop),
before any ``resize_to``: the resolution its labels are defined at.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from torch.utils.data import Dataset

from ..datasets import ade20k, cityscapes, fair1m
from ..errors import ConfigError
from ..io import read_rgb
from ..models.registry import ModelSpec
from ..tiling import Size, TilingSpec, get_preset, patch_labels, tile_image
from .degrade import (
    FREQUENCY_BANDS,
    FREQUENCY_NOISE_SIGMA,
    CropContext,
    Variant,
    apply_variant,
    derive_seed,
    parse_variant,
    patch_correspondence,
)
from .engine import ImageTiles

#: Variant name of the whole-image mode (Table 5 / Fig 12).
FULL = "full"
IGNORE = 255
GEOMETRIC_KINDS = ("shift", "rotate", "scale")
TRACKING = ("bdd100k", "mot17")
SCENES = ("ucmerced", "resisc45")
Reader = Callable[[str, Mapping[str, Any]], tuple[np.ndarray, np.ndarray]]
#: Segmentation datasets and their ``read_sample(root, row) -> (image, labels)``.
SEGMENTATION_READERS: dict[str, Reader] = {
    "cityscapes": cityscapes.read_sample,
    "ade20k": ade20k.read_sample,
}
DATASETS = (*SEGMENTATION_READERS, "fair1m", *TRACKING, *SCENES)
#: [code] tracking frames are resized to this ``(H, W)``, then cut into 3x5 tiles.
DEFAULT_FRAME_SIZE: Size = (672, 1120)
PATCH_LABEL_METHODS = ("nearest_exact", "majority")


@dataclasses.dataclass(frozen=True)
class DegradeSettings:
    """Configurable parameters of the frequency-noise variants (every level lives in the variant name)."""

    bands: tuple[tuple[float, float], ...] = FREQUENCY_BANDS
    freq_sigma: float = FREQUENCY_NOISE_SIGMA

    def __post_init__(self) -> None:
        object.__setattr__(self, "bands", tuple((float(a), float(b)) for a, b in self.bands))
        object.__setattr__(self, "freq_sigma", float(self.freq_sigma))


# --------------------------------------------------------------------------- variants and tilings


def check_dataset(dataset: str) -> None:
    """Raise a ``ConfigError`` listing the datasets that have a tile source."""
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")


def split_variant(name: str) -> tuple[Variant, bool]:
    """``name`` -> ``(image degradation, whole-image mode)``; ``"full"`` is the clean image fed whole."""
    if name == FULL:
        return Variant("clean"), True
    try:
        return parse_variant(name), False
    except ConfigError as err:
        raise ConfigError(f"{err}; or {FULL!r} (the clean image fed whole)") from None


def check_variant(dataset: str, variant: Variant) -> None:
    """Refuse geometric variants where labels cannot follow the transform exactly."""
    if variant.kind in GEOMETRIC_KINDS and dataset != "fair1m":
        raise ConfigError(
            f"variant {variant.name!r} on {dataset}: geometric transforms are supported for fair1m only "
            "(its labels are re-rasterised from the transformed boxes; label maps cannot be warped exactly)"
        )


def base_tiling(dataset: str, frame_size: Sequence[int] | None = None) -> TilingSpec:
    """How ``dataset``'s images are cut (``resize_to``, rows, cols); ``out_size`` is set by :func:`model_tiling`.

    ``frame_size`` ``(H, W)`` replaces the tracking frame size (default 672x1120).
    """
    check_dataset(dataset)
    if dataset in TRACKING:
        return TilingSpec(tuple(frame_size or DEFAULT_FRAME_SIZE), 3, 5)
    if dataset in SCENES:
        return TilingSpec(None, 1, 1)
    return get_preset(dataset)


def round_to_patch(size: int, patch_size: int) -> int:
    """Nearest positive multiple of ``patch_size``: resizing by under half a patch beats cropping or padding."""
    return max(patch_size, int(np.floor(size / patch_size + 0.5)) * patch_size)


def model_tiling(base: TilingSpec, spec: ModelSpec, full: bool, image_hw: Sequence[int] | None = None) -> TilingSpec:
    """``base`` with the model's input: tiles of ``spec.input_size``, or (``full``) one whole-image tile.

    The whole image is fed at the size it is tiled at (``base.resize_to``, else
    ``image_hw``, the first image's size), each side rounded to the patch size.
    """
    if not full:
        return dataclasses.replace(base, out_size=spec.input_size)
    if base.resize_to is None and image_hw is None:
        raise ConfigError(f"whole-image mode of {base} needs the image size (resize_to is not set)")
    h, w = base.resize_to or image_hw
    return TilingSpec(base.resize_to, 1, 1, (round_to_patch(h, spec.patch_size), round_to_patch(w, spec.patch_size)))


def resolve_tiling(tiling: TilingSpec | str | None, dataset: str) -> TilingSpec:
    """A tiling given as spec, preset name or ``None`` (the dataset's default cut)."""
    if isinstance(tiling, TilingSpec):
        return tiling
    if isinstance(tiling, str):
        return get_preset(tiling)
    return base_tiling(dataset)


# --------------------------------------------------------------------------- labels


def label_columns(label_tiles: np.ndarray, grid: Size, method: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Patch labels ``(n, gh, gw)`` by ``method``, plus ``label_majority`` when ``method`` is nearest-exact."""
    labels = patch_labels(label_tiles, grid, method, ignore=IGNORE)
    if method == "majority":
        return labels, {}
    return labels, {"label_majority": patch_labels(label_tiles, grid, "majority", ignore=IGNORE)}


def transform_objects(
    objects: Sequence[fair1m.FairObject], affine: np.ndarray, x0: int, y0: int
) -> list[fair1m.FairObject]:
    """FAIR1M boxes (image coordinates) moved by ``affine``, given in OpenCV coordinates of the crop at ``(x0, y0)``.

    XML coordinates put pixel ``c`` on ``[c, c + 1)``, OpenCV puts its centre
    at ``c``, so a crop point is ``P - (x0, y0) - 0.5`` for the affine. Written
    as ``P + (A - I)(P - o) + t`` so the identity returns the points bit-exactly.
    """
    linear = np.asarray(affine, dtype=np.float64)[:, :2] - np.eye(2)
    offset = np.asarray(affine, dtype=np.float64)[:, 2]
    origin = np.array([x0 + 0.5, y0 + 0.5])
    return [
        dataclasses.replace(obj, points=obj.points + (obj.points - origin) @ linear.T + offset) for obj in objects
    ]


# --------------------------------------------------------------------------- sources


class TileSource(Dataset, ABC):
    """Shared state of every source: manifest rows, tiling, patch grid, the variant and its seeds.

    Rows are plain dicts, so DataLoader workers receive a cheap pickle. The
    per-image seed is ``derive_seed(seed, sample_id)``: noise does not depend
    on processing order or on which worker runs the item.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        manifest: pd.DataFrame,
        tiling: TilingSpec,
        grid: Size,
        variant: Variant,
        *,
        seed: int,
        settings: DegradeSettings = DegradeSettings(),
    ) -> None:
        if "sample_id" not in manifest.columns:
            raise ConfigError(f"manifest has no 'sample_id' column (columns: {list(manifest.columns)})")
        self.root = str(root)
        self.rows: list[dict[str, Any]] = manifest.to_dict("records")
        self.tiling, self.grid, self.variant = tiling, (int(grid[0]), int(grid[1])), variant
        self.seed, self.settings = int(seed), settings

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> ImageTiles:
        return self.item(self.rows[index])

    @abstractmethod
    def item(self, row: Mapping[str, Any]) -> ImageTiles:
        """The tiles and per-patch columns of one manifest row."""

    def degrade(
        self, image: np.ndarray, sample_id: str, context: CropContext | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The variant applied to the whole image: ``(image, affine ORIGINAL -> TRANSFORMED)``."""
        return apply_variant(
            image,
            self.variant,
            derive_seed(self.seed, sample_id),
            context=context,
            bands=self.settings.bands,
            freq_sigma=self.settings.freq_sigma,
        )

    def constant_labels(self, value: int) -> np.ndarray:
        """The same label on every patch of every tile (scene class, or ignore)."""
        return np.full((self.tiling.n_tiles, *self.grid), value, dtype=np.uint8)


class SegmentationSource(TileSource):
    """Cityscapes / ADE20K: image and label map tiled alike; labels point-sampled (or voted) per patch."""

    def __init__(self, reader: Reader, *args: Any, patch_label_method: str = "nearest_exact", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reader, self.method = reader, patch_label_method

    def item(self, row: Mapping[str, Any]) -> ImageTiles:
        sample_id = str(row["sample_id"])
        image, labels = self.reader(self.root, row)
        degraded, _ = self.degrade(image, sample_id)
        label, extra = label_columns(tile_image(labels, self.tiling), self.grid, self.method)
        return ImageTiles(sample_id, tile_image(degraded, self.tiling), label, image.shape[:2], extra)


@functools.lru_cache(maxsize=4096)
def _fair1m_objects(xml_path: str) -> tuple[fair1m.FairObject, ...]:
    """The boxes of one XML, parsed once per process: a job makes every variant of the same crops
    (``transform_objects`` returns moved copies; the cached points are read-only)."""
    objects = tuple(fair1m.read_objects(xml_path))
    for obj in objects:
        obj.points.setflags(write=False)
    return objects


class _SourceImages:
    """Decoded FAIR1M source images by path, least recently used first out past a byte budget.

    A crop decodes its whole source image (geometric variants take real
    surroundings), and one job makes every variant, often of several models, of
    the same crops: each image is decoded once while the job's images fit
    (the demo's 24 take 32 MB). Images are read-only, so no variant can change
    another's pixels.
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget, self.images = budget_bytes, collections.OrderedDict()

    def read(self, path: str) -> np.ndarray:
        stat = os.stat(path)
        key = (path, stat.st_mtime_ns, stat.st_size)  # a rewritten file is decoded again
        if key in self.images:
            self.images.move_to_end(key)
            return self.images[key]
        image = read_rgb(path)
        image.setflags(write=False)
        self.images[key] = image
        while len(self.images) > 1 and sum(i.nbytes for i in self.images.values()) > self.budget:
            self.images.popitem(last=False)
        return image


_FAIR1M_SOURCES = _SourceImages(budget_bytes=1 << 30)


@functools.lru_cache(maxsize=2048)
def _fair1m_labels(xml_path: str, x0: int, y0: int, size: int, affine: bytes) -> np.ndarray:
    """The label map of one crop under one variant's affine (``float64`` bytes, 2x3): rasterised once per job.

    Every non-geometric variant has the identity affine, and a geometric
    variant's affine depends only on the crop's seed, so every model of a job
    shares them. Read-only, like the images.
    """
    matrix = np.frombuffer(affine, dtype=np.float64).reshape(2, 3)
    labels = fair1m.rasterize(transform_objects(_fair1m_objects(xml_path), matrix, x0, y0), x0, y0, size)
    labels.setflags(write=False)
    return labels


class Fair1mSource(TileSource):
    """FAIR1M crops; geometric variants take pixels from the whole source image and move the boxes exactly."""

    def __init__(self, *args: Any, patch_label_method: str = "nearest_exact", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.tiling.n_tiles != 1:
            raise ConfigError(f"FAIR1M crops are fed as one tile; got tiling {self.tiling}")
        self.method = patch_label_method

    def item(self, row: Mapping[str, Any]) -> ImageTiles:
        sample_id = str(row["sample_id"])
        source, (x0, y0, size) = fair1m.read_crop(self.root, row, read=_FAIR1M_SOURCES.read)
        crop = source[y0 : y0 + size, x0 : x0 + size]
        image, affine = self.degrade(crop, sample_id, CropContext(source, x0, y0))
        label_map = _fair1m_labels(str(Path(self.root, row["xml_path"])), x0, y0, size,
                                   np.ascontiguousarray(affine, dtype=np.float64).tobytes())
        label, extra = label_columns(tile_image(label_map, self.tiling), self.grid, self.method)
        source_patch = patch_correspondence(affine, (size, size), self.grid).reshape(1, *self.grid)
        extra["source_patch"] = source_patch.astype(np.int32)
        return ImageTiles(sample_id, tile_image(image, self.tiling), label, (size, size), extra)


class TrackingSource(TileSource):
    """BDD100K / MOT17 frames resized to the frame size and tiled (or whole); boxes are read at evaluation."""

    def item(self, row: Mapping[str, Any]) -> ImageTiles:
        sample_id = str(row["sample_id"])
        image = read_rgb(Path(self.root, row["image_path"]))
        degraded, _ = self.degrade(image, sample_id)
        return ImageTiles(sample_id, tile_image(degraded, self.tiling), self.constant_labels(IGNORE), image.shape[:2])


class SceneSource(TileSource):
    """UC Merced / RESISC45: the whole image as one tile; every patch carries the scene class."""

    def item(self, row: Mapping[str, Any]) -> ImageTiles:
        sample_id = str(row["sample_id"])
        image = read_rgb(Path(self.root, row["image_path"]))
        degraded, _ = self.degrade(image, sample_id)
        label = self.constant_labels(int(row["label"]))
        return ImageTiles(sample_id, tile_image(degraded, self.tiling), label, image.shape[:2])


def first_image_hw(dataset: str, root: str | os.PathLike, manifest: pd.DataFrame) -> Size:
    """Size of the manifest's first image (FAIR1M: its crop): the whole-image size when nothing resizes."""
    if len(manifest) == 0:
        raise ConfigError(f"{dataset}: the manifest is empty")
    row = manifest.iloc[0]
    if dataset == "fair1m":
        return int(row["crop_size"]), int(row["crop_size"])
    h, w = read_rgb(Path(root, row["image_path"])).shape[:2]
    return h, w


def make_source(
    dataset: str,
    root: str | os.PathLike,
    manifest: pd.DataFrame,
    spec: ModelSpec,
    variant: str,
    *,
    tiling: TilingSpec | str | None = None,
    patch_label_method: str = "nearest_exact",
    seed: int = 0,
    settings: DegradeSettings = DegradeSettings(),
) -> TileSource:
    """The tile source of ``dataset`` for model ``spec`` and image ``variant``.

    ``tiling`` is how images are cut (a spec, a ``tiling.PRESETS`` name, or
    ``None`` for :func:`base_tiling`); its ``out_size`` is always replaced by
    the model's input (:func:`model_tiling`), so the tiles fit ``spec``. The
    source's ``tiling`` and ``grid`` attributes are what the engine needs.
    """
    check_dataset(dataset)
    if patch_label_method not in PATCH_LABEL_METHODS:
        raise ConfigError(f"unknown patch-label method {patch_label_method!r}; expected one of {PATCH_LABEL_METHODS}")
    degradation, full = split_variant(variant)
    check_variant(dataset, degradation)
    base = resolve_tiling(tiling, dataset)
    needs_size = full and base.resize_to is None
    cut = model_tiling(base, spec, full, first_image_hw(dataset, root, manifest) if needs_size else None)
    grid = cut.patch_grid(spec.patch_size)
    common = dict(seed=seed, settings=settings)
    args = (root, manifest, cut, grid, degradation)
    if dataset in SEGMENTATION_READERS:
        return SegmentationSource(
            SEGMENTATION_READERS[dataset], *args, patch_label_method=patch_label_method, **common
        )
    if dataset == "fair1m":
        return Fair1mSource(*args, patch_label_method=patch_label_method, **common)
    if dataset in TRACKING:
        return TrackingSource(*args, **common)
    return SceneSource(*args, **common)
