"""ADE20K SceneParsing (ADEChallengeData2016) in its official layout, and the authors' subset rule.

Masks hold 0 = "other" and 1..150 = the ``Idx`` of ``objectInfo150.txt``;
reading applies reduce_zero_label exactly once (0 -> 255, x -> x-1), so
returned labels are 0..149 or 255. Class names are read from the dataset's
own ``objectInfo150.txt`` (no copy is built in: a missing file means a
broken unpack).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError, CorruptFileError, DatasetNotFoundError, LabelError
from ..io import check_same_size, read_label_map, read_rgb
from .base import DatasetInfo, require_dir

INFO = DatasetInfo(
    name="ADE20K (ADEChallengeData2016)",
    url="http://sceneparsing.csail.mit.edu/",
    needs_account=False,
    layout=(
        "<root>/ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_XXXXXXXX.jpg\n"
        "<root>/ADEChallengeData2016/annotations/{training,validation}/ADE_{train,val}_XXXXXXXX.png\n"
        "<root>/ADEChallengeData2016/objectInfo150.txt\n"
        "(root may also be the ADEChallengeData2016 folder itself)"
    ),
)

IGNORE = 255
NUM_CLASSES = 150
DATA_DIR = "ADEChallengeData2016"
_SPLITS = {"training": "training", "train": "training", "validation": "validation", "val": "validation"}
_OBJECT_INFO_HEADER = ["Idx", "Ratio", "Train", "Val", "Name"]

#: The authors' subset settings per split (``per_class``, ``pool_last``): 600 train / 300 val images.
PAPER_SUBSET: dict[str, dict[str, int | None]] = {
    "training": {"per_class": 4, "pool_last": 2500},
    "validation": {"per_class": 2, "pool_last": None},
}

#: reduce_zero_label as a lookup table: 0 -> 255, x -> x - 1.
REDUCE_ZERO_LABEL = np.concatenate([[IGNORE], np.arange(255)]).astype(np.uint8)


class TooFewCandidatesWarning(UserWarning):
    """Some classes had fewer than ``per_class`` not-yet-chosen images containing them."""


def canonical_split(split: str) -> str:
    """``training`` / ``validation`` (``train`` / ``val`` accepted)."""
    if split not in _SPLITS:
        raise ConfigError(f"ADE20K split {split!r}: expected one of {sorted(_SPLITS)}")
    return _SPLITS[split]


def data_prefix(root: str | os.PathLike) -> str:
    """``"ADEChallengeData2016/"`` if ``root`` contains that folder, ``""`` if root is that folder."""
    root = Path(root)
    if not root.is_dir():
        raise INFO.missing(root)
    if (root / DATA_DIR).is_dir():
        return f"{DATA_DIR}/"
    if (root / "images").is_dir() and (root / "annotations").is_dir():
        return ""
    raise INFO.missing(root, DATA_DIR)


def read_classes(root: str | os.PathLike) -> tuple[str, ...]:
    """The 150 class names (index = reduced label) from ``objectInfo150.txt``.

    Fields are tab-separated and may carry stray spaces (the official file has
    ``"22 \\t"`` and ``"bed "``); synonyms after the first comma are kept.
    """
    path = Path(root, data_prefix(root) + "objectInfo150.txt")
    if not path.is_file():
        raise INFO.missing(root, f"{data_prefix(root)}objectInfo150.txt (class names)")
    lines = [line for line in path.read_text().splitlines() if line.strip()] or [""]
    header = [field.strip() for field in lines[0].split("\t")]
    if header != _OBJECT_INFO_HEADER:
        raise CorruptFileError(f"{path}: header {header}, expected {_OBJECT_INFO_HEADER}")
    names: dict[int, str] = {}
    for lineno, line in enumerate(lines[1:], start=2):
        fields = [field.strip() for field in line.split("\t")]
        if len(fields) != len(_OBJECT_INFO_HEADER) or not fields[0].isdigit():
            raise CorruptFileError(f"{path}:{lineno}: expected 5 tab-separated fields, got {line!r}")
        names[int(fields[0])] = fields[4]
    if sorted(names) != list(range(1, NUM_CLASSES + 1)):
        raise CorruptFileError(f"{path}: Idx values must be exactly 1..{NUM_CLASSES}")
    return tuple(names[i] for i in range(1, NUM_CLASSES + 1))


def list_images(root: str | os.PathLike, split: str) -> pd.DataFrame:
    """All images of a split in sorted order, with their annotation paths."""
    split = canonical_split(split)
    prefix = data_prefix(root)
    image_dir = require_dir(INFO, root, prefix + "images", split)
    require_dir(INFO, root, prefix + "annotations", split)
    rows = []
    for image in sorted(image_dir.glob("ADE_*.jpg")):
        label_path = f"{prefix}annotations/{split}/{image.stem}.png"
        if not Path(root, label_path).is_file():
            raise INFO.missing(root, label_path)
        rows.append(
            {"sample_id": image.stem, "image_path": f"{prefix}images/{split}/{image.name}", "label_path": label_path}
        )
    return pd.DataFrame(rows, columns=["sample_id", "image_path", "label_path"])


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A raw mask (0 = other, 1..150 = Idx), checked for out-of-range values."""
    mask = read_label_map(path)
    if mask.dtype != np.uint8 or mask.max(initial=0) > NUM_CLASSES:
        bad = np.unique(mask[mask > NUM_CLASSES])[:10].tolist()
        raise LabelError(f"{path}: values {bad} (dtype {mask.dtype}); expected uint8 0..{NUM_CLASSES}")
    return mask


def read_sample(root: str | os.PathLike, row) -> tuple[np.ndarray, np.ndarray]:
    """``(image uint8 HxWx3, labels uint8 HxW)`` with labels 0..149 or 255 (reduce_zero_label)."""
    label_path = Path(root, row["label_path"])
    image = read_rgb(Path(root, row["image_path"]))
    mask = read_mask(label_path)
    check_same_size(image, mask, label_path)
    return image, REDUCE_ZERO_LABEL[mask]


# --------------------------------------------------------------------------- subsets


def class_presence(root: str | os.PathLike, images: pd.DataFrame) -> np.ndarray:
    """Boolean ``(n_images, 151)``: does mask i contain raw value c (column 0 = other)."""
    presence = np.zeros((len(images), NUM_CLASSES + 1), bool)
    for i, label_path in enumerate(images["label_path"]):
        counts = np.bincount(read_mask(Path(root, label_path)).ravel(), minlength=NUM_CLASSES + 1)
        presence[i] = counts > 0
    return presence


def _idx_list(classes: list[int]) -> str:
    return f"Idx {classes[:10]}{'...' if len(classes) > 10 else ''}"


def _shortfall_message(short: dict[int, int], in_pool: dict[int, int], per_class: int, where: str) -> str:
    """Name the classes left short, so a thin subset is never mistaken for the paper's.

    A class with no image left is either absent from every image of the pool,
    or exhausted: its images were all taken by classes drawn before it.
    """
    absent = sorted(cls for cls, n in short.items() if n == 0 and in_pool[cls] == 0)
    exhausted = sorted(cls for cls, n in short.items() if n == 0 and in_pool[cls] > 0)
    partial = {cls: n for cls, n in short.items() if n > 0}
    parts = []
    if absent:
        parts.append(f"no image for {len(absent)} classes ({_idx_list(absent)}): in no mask of the pool")
    if exhausted:
        parts.append(f"no image left for {len(exhausted)} classes ({_idx_list(exhausted)}): "
                     "every image holding them was taken by a class drawn earlier")
    if partial:
        parts.append(f"fewer than {per_class} images for {partial} (Idx: taken)")
    return f"{where}: " + "; ".join(parts)


def select_subset(
    root: str | os.PathLike,
    split: str,
    per_class: int,
    pool_last: int | None,
    seed: int | None = None,
) -> pd.DataFrame:
    """The authors' greedy per-class subset.

    For each class Idx from 150 down to 1, take ``per_class`` not-yet-chosen
    images whose mask contains it, from the last ``pool_last`` images of the
    sorted split (None = all): in sorted order when ``seed`` is None, else
    from a seeded shuffle of the candidates. Classes with too few candidates
    take what exists (column ``n_for_class`` < ``per_class``, and a warning).
    ``selected_for_class`` is the objectInfo150 Idx (reduced label + 1).
    Paper settings: ``PAPER_SUBSET[split]``.
    """
    if per_class < 1 or (pool_last is not None and pool_last < 1):
        raise ConfigError(f"ADE20K select_subset: per_class and pool_last must be >= 1, got {per_class}, {pool_last}")
    images = list_images(root, split)
    if pool_last is not None:
        images = images.iloc[-pool_last:].reset_index(drop=True)
    presence = class_presence(root, images)
    rng = None if seed is None else np.random.default_rng(seed)
    chosen = np.zeros(len(images), bool)
    picks: list[tuple[int, int, int]] = []  # (image index, class Idx, n taken for the class)
    short: dict[int, int] = {}
    for cls in range(NUM_CLASSES, 0, -1):
        candidates = np.flatnonzero(presence[:, cls] & ~chosen)
        if rng is not None:
            candidates = rng.permutation(candidates)
        take = candidates[:per_class]
        chosen[take] = True
        picks += [(int(i), cls, len(take)) for i in take]
        if len(take) < per_class:
            short[cls] = len(take)
    if not picks:
        raise DatasetNotFoundError(f"ADE20K {split}: no image under {root} contains any of the 150 classes")
    if short:
        in_pool = {cls: int(presence[:, cls].sum()) for cls in short}
        warnings.warn(_shortfall_message(short, in_pool, per_class, f"ADE20K {canonical_split(split)} under {root}"),
                      TooFewCandidatesWarning, stacklevel=2)
    manifest = images.iloc[[i for i, _, _ in picks]].reset_index(drop=True)
    manifest["selected_for_class"] = [cls for _, cls, _ in picks]
    manifest["n_for_class"] = [n for _, _, n in picks]
    return manifest
