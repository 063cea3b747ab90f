"""Image and label-map decoding with errors that name the file.

Images come back as ``uint8`` arrays ``(H, W, 3)`` in RGB order; label maps
as 2-D integer arrays with their on-disk bit depth preserved (16-bit instance
PNGs stay 16-bit).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import CorruptFileError, DatasetNotFoundError

# Satellite tiles (FAIR1M) exceed Pillow's decompression-bomb guard.
Image.MAX_IMAGE_PIXELS = None


def _open(path: str | os.PathLike) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"missing file: {path}")
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CorruptFileError(f"cannot decode image {path}: {exc}") from exc
    return img


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to ``uint8 (H, W, 3)`` RGB."""
    img = _open(path)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8).copy()


def read_label_map(path: str | os.PathLike) -> np.ndarray:
    """Decode a single-channel label PNG keeping its bit depth (8 or 16 bit)."""
    img = _open(path)
    arr = np.asarray(img)
    if arr.ndim != 2:
        raise CorruptFileError(
            f"label map {path} has shape {arr.shape}; expected a single-channel image"
        )
    if arr.dtype == np.int32:  # Pillow reads 16-bit PNGs as mode "I"
        arr = arr.astype(np.uint16)
    return arr.copy()


def write_png(path: str | os.PathLike, array: np.ndarray, compress_level: int = 1) -> None:
    """Write uint8 RGB/RGBA/L or uint16 L arrays as PNG (16-bit kept).

    Level 1 compression: the pixels are identical to the default level 6 at a
    fraction of the time, which matters when writing full-size synthetic data.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.ascontiguousarray(array)
    if array.dtype == np.uint16:
        Image.fromarray(array).save(path, compress_level=compress_level)
    elif array.dtype == np.uint8:
        Image.fromarray(array).save(path, compress_level=compress_level)
    else:
        raise TypeError(f"write_png: unsupported dtype {array.dtype} for {path}")


def check_same_size(image: np.ndarray, labels: np.ndarray, label_path) -> None:
    """Raise if an image and its label map differ in size."""
    if image.shape[:2] != labels.shape[:2]:
        raise CorruptFileError(
            f"label map {label_path} is {labels.shape[1]}x{labels.shape[0]} but its "
            f"image is {image.shape[1]}x{image.shape[0]} (width x height)"
        )


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
