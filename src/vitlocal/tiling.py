"""Tiles, patch labels and stitching: the geometry between images and patch grids.

[code] An image (optionally resized first) is cut into a ``rows x cols`` grid of
equal tiles, row-major (``tile_id = r * cols + c``). Each tile is divided by
255, normalised, then resized (bicubic) to the model input. Label maps take the
same path but are point-sampled onto the patch grid with OpenCV's
nearest-exact rule; per-patch predictions go back the same way (nearest-exact
upsampling per tile, then tiles placed row-major) to be scored at full
resolution.

Nearest-exact is implemented here in numpy, with the arithmetic of OpenCV 4.x
(``resizeNN_bitexact``: 16-bit fixed point), which is what the authors ran.
OpenCV >= 5 and Pillow round *exact ties* the other way: for the paper's main
case, a 256-px Cityscapes tile onto 14 patches, OpenCV 4 samples source rows
``64`` and ``192`` where OpenCV 5 samples ``63`` and ``191``. Owning the rule
keeps patch labels identical whatever OpenCV is installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import cv2
import numpy as np

from .errors import ConfigError, LabelError

Size = tuple[int, int]

#: Whole-image resize of RGB images before tiling ([choose]: the authors'
#: interpolation for ADE20K / BDD100K is unknown). INTER_AREA averages when
#: shrinking, so large frames are not aliased. Label maps use nearest-exact.
IMAGE_RESIZE_INTERPOLATION = cv2.INTER_AREA

#: [code] tile -> model-input resize.
TILE_RESIZE_INTERPOLATION = cv2.INTER_CUBIC


def as_size(value: int | Sequence[int], name: str) -> Size:
    """Normalise an int or an ``(H, W)`` pair to a tuple of two positive ints."""
    if isinstance(value, (int, np.integer)):
        pair = (int(value), int(value))
    else:
        try:
            pair = tuple(int(v) for v in value)
        except TypeError:
            pair = ()
        if len(pair) != 2:
            raise ConfigError(f"{name} must be an int or an (H, W) pair, got {value!r}")
    if min(pair) < 1:
        raise ConfigError(f"{name} must be positive, got {value!r}")
    return pair  # type: ignore[return-value]


@dataclass(frozen=True)
class TilingSpec:
    """How one dataset's images become model inputs.

    ``resize_to`` ``(H, W)`` is applied to the whole image first (``None``: keep
    its size); the (resized) image is cut into ``rows x cols`` equal tiles, each
    resized to ``out_size`` (an int for square inputs, or ``(H, W)``).
    """

    resize_to: Size | None
    rows: int
    cols: int
    out_size: int | Size = 224

    def __post_init__(self) -> None:
        for name in ("rows", "cols"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"TilingSpec.{name} must be a positive int, got {value!r}")
        out = as_size(self.out_size, "TilingSpec.out_size")
        square = isinstance(self.out_size, (int, np.integer))
        object.__setattr__(self, "out_size", out[0] if square else out)
        if self.resize_to is not None:
            resize_to = as_size(self.resize_to, "TilingSpec.resize_to")
            object.__setattr__(self, "resize_to", resize_to)
            self.tile_hw(resize_to)

    @property
    def n_tiles(self) -> int:
        return self.rows * self.cols

    @property
    def out_hw(self) -> Size:
        """Model input ``(H, W)`` of every tile."""
        return as_size(self.out_size, "TilingSpec.out_size")

    def image_hw(self, original_hw: Sequence[int]) -> Size:
        """Size of the image that is actually tiled (after ``resize_to``)."""
        return self.resize_to if self.resize_to is not None else as_size(original_hw, "image size")

    def tile_hw(self, image_hw: Sequence[int]) -> Size:
        """Tile size for an image of ``image_hw`` (already resized); must divide exactly."""
        h, w = as_size(image_hw, "image size")
        if h % self.rows or w % self.cols:
            raise ConfigError(
                f"an image of {h}x{w} cannot be cut into {self.rows}x{self.cols} equal tiles "
                f"({h} % {self.rows} = {h % self.rows}, {w} % {self.cols} = {w % self.cols}); "
                f"choose resize_to or a grid that divides the image size ({self})"
            )
        return h // self.rows, w // self.cols

    def patch_grid(self, patch_size: int) -> Size:
        """Patch grid ``(gh, gw)`` of one tile for a ViT with square patches of ``patch_size``."""
        h, w = self.out_hw
        if h % patch_size or w % patch_size:
            raise ConfigError(
                f"model input {h}x{w} is not a multiple of the patch size {patch_size}"
            )
        return h // patch_size, w // patch_size


_VIDEO = TilingSpec((672, 1120), 3, 5)
_VIDEO_FULL = TilingSpec((672, 1120), 1, 1, (672, 1120))

#: [code] per-dataset tilings. ``*-full`` feeds the whole frame (non-square
#: input, interpolated position embeddings) instead of 224-px tiles.
PRESETS: dict[str, TilingSpec] = {
    # 1024x2048 -> 32 tiles of 256 -> 224; smaller demo images tile the same way.
    "cityscapes": TilingSpec(None, 4, 8),
    # "672x448" in the paper is width x height: H=448, W=672 -> six 224 tiles.
    "ade20k": TilingSpec((448, 672), 2, 3),
    # FAIR1M items are already 224x224 crops.
    "fair1m": TilingSpec(None, 1, 1),
    "bdd100k": _VIDEO,
    "bdd100k-full": _VIDEO_FULL,
    "mot17": _VIDEO,
    "mot17-full": _VIDEO_FULL,
}


def get_preset(name: str) -> TilingSpec:
    """The tiling preset called ``name`` (a ``ConfigError`` lists the valid ones)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown tiling preset {name!r}; expected one of {sorted(PRESETS)}"
        ) from None


def nearest_exact_indices(src: int, dst: int) -> np.ndarray:
    """Source index sampled by each of ``dst`` outputs: OpenCV 4.x INTER_NEAREST_EXACT.

    Mathematically ``floor((i + 0.5) * src / dst)`` (pixel centres), evaluated in
    OpenCV 4's 16-bit fixed point so that exact ties fall where the authors'
    labels put them (see the module docstring).
    """
    if src < 1 or dst < 1:
        raise ConfigError(f"resize sizes must be positive, got {src} -> {dst}")
    step = ((src << 16) + dst // 2) // dst
    start = step // 2 - src % 2
    index = (start + np.arange(dst, dtype=np.int64) * step) >> 16
    return np.minimum(index, src - 1)


def resize_nearest_exact(array: np.ndarray, out_hw: Sequence[int]) -> np.ndarray:
    """Nearest-exact resize of the last two axes of ``array`` (labels, stacks of tiles)."""
    array = np.asarray(array)
    if array.ndim < 2:
        raise ValueError(f"expected an array with at least 2 dims (..., H, W), got {array.shape}")
    oh, ow = as_size(out_hw, "output size")
    rows = nearest_exact_indices(array.shape[-2], oh)
    cols = nearest_exact_indices(array.shape[-1], ow)
    return array[..., rows[:, None], cols[None, :]]


def resize_for_tiling(array: np.ndarray, spec: TilingSpec) -> np.ndarray:
    """Apply ``spec.resize_to``: RGB images (H, W, 3) interpolated, label maps (H, W) nearest-exact."""
    array = np.asarray(array)
    if spec.resize_to is None or array.shape[:2] == spec.resize_to:
        return array
    h, w = spec.resize_to
    if array.ndim == 2:
        return resize_nearest_exact(array, (h, w))
    if array.ndim == 3:
        return cv2.resize(array, (w, h), interpolation=IMAGE_RESIZE_INTERPOLATION)
    raise ValueError(f"expected an image (H, W, C) or a label map (H, W), got shape {array.shape}")


def _layout(layout: TilingSpec | Sequence[int]) -> Size:
    if isinstance(layout, TilingSpec):
        return layout.rows, layout.cols
    return as_size(layout, "tile layout (rows, cols)")


def tile_image(array: np.ndarray, spec: TilingSpec) -> np.ndarray:
    """Resize (per ``spec``) and cut an image (H, W, C) or label map (H, W) into tiles.

    Returns ``(n_tiles, th, tw[, C])`` in row-major tile order.
    """
    array = resize_for_tiling(array, spec)
    if array.ndim not in (2, 3):
        raise ValueError(f"expected an image (H, W, C) or a label map (H, W), got shape {array.shape}")
    th, tw = spec.tile_hw(array.shape[:2])
    rest = array.shape[2:]
    tiles = array.reshape(spec.rows, th, spec.cols, tw, *rest).swapaxes(1, 2)
    return np.ascontiguousarray(tiles.reshape(spec.n_tiles, th, tw, *rest))


def untile(tiles: np.ndarray, layout: TilingSpec | Sequence[int]) -> np.ndarray:
    """Inverse of the cutting in :func:`tile_image`: ``(rows*cols, th, tw[, C])`` -> ``(rows*th, cols*tw[, C])``."""
    rows, cols = _layout(layout)
    tiles = np.asarray(tiles)
    if tiles.ndim < 3 or tiles.shape[0] != rows * cols:
        raise ValueError(
            f"expected {rows * cols} tiles (n, th, tw[, C]) for a {rows}x{cols} layout, "
            f"got shape {tiles.shape}"
        )
    n, th, tw, *rest = tiles.shape
    grid = tiles.reshape(rows, cols, th, tw, *rest).swapaxes(1, 2)
    return np.ascontiguousarray(grid.reshape(rows * th, cols * tw, *rest))


def preprocess_tiles(
    tiles: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    out_size: int | Sequence[int],
) -> np.ndarray:
    """[code] uint8 tiles (n, h, w, 3) -> float32 model input (n, 3, H, W).

    Order as the authors: divide by 255, normalise with ``mean``/``std``, *then*
    resize bicubically (``cv2.INTER_CUBIC``) to ``out_size``. Wrap the result
    with ``torch.from_numpy`` (no copy).
    """
    tiles = np.asarray(tiles)
    if tiles.ndim != 4 or tiles.shape[-1] != 3 or tiles.dtype != np.uint8:
        raise ValueError(f"expected uint8 tiles (n, h, w, 3), got {tiles.dtype} {tiles.shape}")
    mean_arr = np.asarray(mean, dtype=np.float32).reshape(-1)
    std_arr = np.asarray(std, dtype=np.float32).reshape(-1)
    if mean_arr.size != 3 or std_arr.size != 3:
        raise ConfigError(f"mean and std need 3 values (RGB), got {list(mean)} and {list(std)}")
    x = (tiles.astype(np.float32) / np.float32(255.0) - mean_arr) / std_arr
    oh, ow = as_size(out_size, "out_size")
    if x.shape[1:3] != (oh, ow):
        x = np.stack([cv2.resize(t, (ow, oh), interpolation=TILE_RESIZE_INTERPOLATION) for t in x])
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _check_label_values(labels: np.ndarray, num_classes: int | None, ignore: int) -> None:
    if num_classes is None:
        return
    bad = np.unique(labels[(labels >= num_classes) & (labels != ignore)])
    if bad.size:
        raise LabelError(
            f"label values {bad[:10].tolist()} are outside 0..{num_classes - 1} "
            f"and are not the ignore value {ignore}"
        )


def pixel_to_patch(size: int, cells: int) -> np.ndarray:
    """Patch index of each of ``size`` pixels: the cell containing the pixel's centre.

    Pixel ``i`` (centre ``i + 0.5``) belongs to cell ``floor((i + 0.5) * cells / size)``.
    When ``cells`` divides ``size`` these are plain blocks of ``size // cells``.
    """
    return ((2 * np.arange(size, dtype=np.int64) + 1) * cells) // (2 * size)


def _majority_vote(labels: np.ndarray, grid: Size, ignore: int) -> np.ndarray:
    n, h, w = labels.shape
    gh, gw = grid
    if h < gh or w < gw:
        raise ConfigError(
            f"majority vote needs at least one pixel per patch: tile {h}x{w} < grid {gh}x{gw}"
        )
    patch = pixel_to_patch(h, gh)[:, None] * gw + pixel_to_patch(w, gw)[None, :]
    flat = labels.reshape(n, h * w).astype(np.int64)
    keep = flat != ignore
    n_cls = int(flat[keep].max()) + 1 if keep.any() else 1
    n_patches = gh * gw
    key = (np.arange(n)[:, None] * n_patches + patch.reshape(1, -1)) * n_cls + flat
    counts = np.bincount(key[keep], minlength=n * n_patches * n_cls).reshape(n, n_patches, n_cls)
    # argmax takes the first maximum: ties go to the smallest label.
    out = counts.argmax(axis=-1)
    out[counts.sum(axis=-1) == 0] = ignore
    return out.reshape(n, gh, gw).astype(labels.dtype)


def patch_labels(
    label_tiles: np.ndarray,
    grid: int | Sequence[int],
    method: Literal["nearest_exact", "majority"] = "nearest_exact",
    ignore: int = 255,
    num_classes: int | None = None,
) -> np.ndarray:
    """One label per patch: ``(n, h, w)`` -> ``(n, gh, gw)`` (``(h, w)`` -> ``(gh, gw)``).

    ``nearest_exact`` [code, paper preset]: the label at the pixel nearest each
    patch centre (OpenCV 4 ``INTER_NEAREST_EXACT``). ``majority`` (the paper's
    wording): the most common label among the pixels whose centres fall inside
    the patch (see :func:`pixel_to_patch`); ``ignore`` pixels do not vote, a
    patch is ``ignore`` only if all its pixels are; ties go to the smallest
    label. With ``num_classes`` set, other values raise :class:`LabelError`.
    Keeps the input dtype.
    """
    labels = np.asarray(label_tiles)
    if labels.ndim not in (2, 3):
        raise ValueError(f"expected label tiles (n, h, w) or (h, w), got shape {labels.shape}")
    _check_label_values(labels, num_classes, ignore)
    gh, gw = as_size(grid, "patch grid")
    stack = labels[None] if labels.ndim == 2 else labels
    if method == "nearest_exact":
        out = resize_nearest_exact(stack, (gh, gw))
    elif method == "majority":
        out = _majority_vote(stack, (gh, gw), ignore)
    else:
        raise ConfigError(
            f"unknown patch-label method {method!r}; expected 'nearest_exact' or 'majority'"
        )
    return out[0] if labels.ndim == 2 else out


def stitch(
    patch_preds: np.ndarray,
    layout: TilingSpec | Sequence[int],
    tile_hw: Sequence[int],
) -> np.ndarray:
    """[code] Per-tile patch predictions ``(n_tiles, gh, gw)`` -> full map ``(rows*th, cols*tw)``.

    Each tile's grid is upsampled nearest-exact to ``tile_hw``, then tiles are
    placed row-major.
    """
    preds = np.asarray(patch_preds)
    if preds.ndim != 3:
        raise ValueError(f"expected patch predictions (n_tiles, gh, gw), got shape {preds.shape}")
    return untile(resize_nearest_exact(preds, tile_hw), layout)
