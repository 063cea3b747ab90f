"""Cityscapes in its official layout: listing, reading (labelIds -> trainIds) and subsets.

The label table comes from ``cityscapesscripts.helpers.labels`` so that the
19 evaluation classes, their order and the ignored ids are exactly those of
the official toolkit. The authors' subset lists are the truth for
reproduction; a seeded per-city draw stands in for them only when the listed
images are absent altogether (synthetic demo data).
"""

from __future__ import annotations

import os
import re
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from cityscapesscripts.helpers.labels import labels as _CS_LABELS

from ..errors import ConfigError, DatasetNotFoundError, LabelError
from ..io import check_same_size, read_label_map, read_rgb
from .base import DatasetInfo, require_dir

INFO = DatasetInfo(
    name="Cityscapes",
    url="https://www.cityscapes-dataset.com/downloads/",
    needs_account=True,
    licence="Cityscapes research licence",
    layout=(
        "<root>/leftImg8bit/{train,val,test}/<city>/<city>_<seq6>_<frame6>_leftImg8bit.png\n"
        "<root>/gtFine/{train,val,test}/<city>/<city>_<seq6>_<frame6>_gtFine_labelIds.png\n"
        "                                       (..._instanceIds.png, _color.png, _polygons.json)\n"
        "(leftImg8bit_trainvaltest.zip + gtFine_trainvaltest.zip)"
    ),
)

IGNORE = 255
NUM_LABEL_IDS = 34  # labelIds 0..33 are the only values a gtFine labelIds PNG may hold

TRAIN_CITIES: tuple[str, ...] = (
    "aachen", "bochum", "bremen", "cologne", "darmstadt", "dusseldorf",
    "erfurt", "hamburg", "hanover", "jena", "krefeld", "monchengladbach",
    "strasbourg", "stuttgart", "tubingen", "ulm", "weimar", "zurich",
)
VAL_CITIES: tuple[str, ...] = ("frankfurt", "lindau", "munster")

#: The official label table restricted to real labelIds (``license plate`` has id -1).
LABELS = tuple(label for label in _CS_LABELS if 0 <= label.id < NUM_LABEL_IDS)

#: The 19 evaluation classes, index = trainId.
CLASSES: tuple[str, ...] = tuple(
    label.name for label in sorted(LABELS, key=lambda label: label.trainId) if 0 <= label.trainId < IGNORE
)


def _train_id_lut() -> np.ndarray:
    lut = np.full(256, IGNORE, dtype=np.uint8)
    for label in LABELS:
        if 0 <= label.trainId < IGNORE:
            lut[label.id] = label.trainId
    return lut


#: ``LABEL_TO_TRAIN[labelId] -> trainId`` (255 for void and unused ids).
LABEL_TO_TRAIN: np.ndarray = _train_id_lut()

_IMAGE_SUFFIX = "_leftImg8bit.png"
_LABEL_SUFFIX = "_gtFine_labelIds.png"
_INSTANCE_SUFFIX = "_gtFine_instanceIds.png"
_LIST_PATH = re.compile(
    r"^/?leftImg8bit/(?P<split>train|val|test)/(?P<city>[a-z]+)/"
    r"(?P<sample_id>(?P=city)_\d{6}_\d{6})_leftImg8bit\.png$"
)
MANIFEST_COLUMNS = ["sample_id", "city", "image_path", "label_path", "source"]


class DuplicateImagesWarning(UserWarning):
    """An authors' list names the same image more than once (kept, as they trained on it)."""


class SubsetFallbackWarning(UserWarning):
    """The listed images are absent, so a seeded per-city draw replaced the authors' list."""


def label_path_for(image_path: str) -> str:
    """The gtFine labelIds path (relative) of a leftImg8bit image path (relative)."""
    if not image_path.startswith("leftImg8bit/") or not image_path.endswith(_IMAGE_SUFFIX):
        raise ConfigError(f"not a Cityscapes leftImg8bit path: {image_path!r}")
    return "gtFine/" + image_path[len("leftImg8bit/") : -len(_IMAGE_SUFFIX)] + _LABEL_SUFFIX


def _row(root: Path, split: str, city: str, sample_id: str) -> dict[str, str]:
    image_path = f"leftImg8bit/{split}/{city}/{sample_id}{_IMAGE_SUFFIX}"
    label_path = label_path_for(image_path)
    if not (root / label_path).is_file():
        raise INFO.missing(root, label_path)
    return {"sample_id": sample_id, "city": city, "image_path": image_path, "label_path": label_path}


def list_images(
    root: str | os.PathLike, split: str, cities: list[str] | tuple[str, ...] | None = None
) -> pd.DataFrame:
    """All images of ``split`` (optionally only ``cities``), sorted, with their labelIds paths.

    Every image must have its gtFine labelIds file: a missing one means a
    broken unpack, which would otherwise silently shrink the training set.
    """
    root = Path(root)
    split_dir = require_dir(INFO, root, "leftImg8bit", split)
    require_dir(INFO, root, "gtFine", split)
    if cities is None:
        cities = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    rows = []
    for city in sorted(cities):
        city_dir = require_dir(INFO, root, "leftImg8bit", split, city)
        for image in sorted(city_dir.glob(f"{city}_*{_IMAGE_SUFFIX}")):
            rows.append(_row(root, split, city, image.name[: -len(_IMAGE_SUFFIX)]))
    return pd.DataFrame(rows, columns=["sample_id", "city", "image_path", "label_path"])


def label_ids_to_train_ids(label_ids: np.ndarray, label_path: str | os.PathLike) -> np.ndarray:
    """Map a labelIds map to trainIds; any value outside the label table is an error."""
    bad = np.unique(label_ids[label_ids >= NUM_LABEL_IDS])
    if bad.size:
        raise LabelError(
            f"{label_path}: labelIds {bad[:10].tolist()} are not in the Cityscapes label table "
            f"(expected 0..{NUM_LABEL_IDS - 1})"
        )
    return LABEL_TO_TRAIN[label_ids.astype(np.intp)]


def read_sample(root: str | os.PathLike, row) -> tuple[np.ndarray, np.ndarray]:
    """``(image uint8 HxWx3, trainIds uint8 HxW)`` of one manifest row."""
    label_path = Path(root, row["label_path"])
    image = read_rgb(Path(root, row["image_path"]))
    label_ids = read_label_map(label_path)
    check_same_size(image, label_ids, label_path)
    return image, label_ids_to_train_ids(label_ids, label_path)


def read_instances(root: str | os.PathLike, row) -> np.ndarray:
    """The 16-bit instanceIds map (``id*1000+k`` for instance classes) of one manifest row."""
    label_path = str(row["label_path"])
    instance_path = Path(root, label_path[: -len(_LABEL_SUFFIX)] + _INSTANCE_SUFFIX)
    return read_label_map(instance_path).astype(np.uint16)


# --------------------------------------------------------------------------- subsets


def read_subset_list(list_csv: str | os.PathLike) -> pd.DataFrame:
    """Parse an authors' ``index;path`` list into index, split, city, sample_id, image_path."""
    rows = []
    for lineno, line in enumerate(Path(list_csv).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        index, sep, path = line.strip().partition(";")
        match = _LIST_PATH.match(path)
        if not sep or not index.isdigit() or match is None:
            raise ConfigError(
                f"{list_csv}:{lineno}: expected 'index;/leftImg8bit/<split>/<city>/"
                f"<city>_<seq6>_<frame6>_leftImg8bit.png', got {line!r}"
            )
        rows.append(
            {
                "index": int(index),
                "split": match["split"],
                "city": match["city"],
                "sample_id": match["sample_id"],
                "image_path": path.lstrip("/"),
            }
        )
    if not rows:
        raise ConfigError(f"{list_csv}: subset list is empty")
    return pd.DataFrame(rows)


def _unique_ids(sample_ids: pd.Series) -> list[str]:
    """Make repeated ids unique (``<id>__dup1``, ...) so manifests keep one key per row."""
    seen: dict[str, int] = {}
    out = []
    for sid in sample_ids:
        k = seen.get(sid, 0)
        seen[sid] = k + 1
        out.append(sid if k == 0 else f"{sid}__dup{k}")
    return out


def _from_list(root: Path, listing: pd.DataFrame, list_csv) -> pd.DataFrame:
    rows = [_row(root, r.split, r.city, r.sample_id) for r in listing.itertuples()]
    manifest = pd.DataFrame(rows)
    n_distinct = listing["sample_id"].nunique()
    if len(listing) > n_distinct:
        counts = listing["sample_id"].value_counts()
        repeated = counts[counts > 1]
        warnings.warn(
            f"{list_csv}: {len(listing)} rows but {n_distinct} distinct images; kept as listed "
            f"(the authors trained on the repeats): "
            + ", ".join(f"{sid} x{n}" for sid, n in repeated.items()),
            DuplicateImagesWarning,
            stacklevel=3,
        )
    manifest["sample_id"] = _unique_ids(manifest["sample_id"])
    manifest["source"] = "authors_list"
    return manifest[MANIFEST_COLUMNS]


def _fallback_counts(wanted: dict[str, int], present: list[str]) -> dict[str, int]:
    """Per-city counts: the list's where the city exists, the rest spread evenly over present cities.

    Spreading keeps the subset's total size; the remainder goes to the first
    cities in sorted order so the rule is deterministic.
    """
    counts = {city: wanted.get(city, 0) for city in present}
    deficit = sum(wanted.values()) - sum(counts.values())
    share, extra = divmod(deficit, len(present))
    for i, city in enumerate(present):
        counts[city] += share + (1 if i < extra else 0)
    return counts


def _city_rng(seed: int, city: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(city.encode())])


def _seeded_fallback(root: Path, listing: pd.DataFrame, list_csv, seed: int) -> pd.DataFrame:
    (split,) = listing["split"].unique()
    available = list_images(root, split)
    present = sorted(available["city"].unique())
    if not present:
        raise INFO.missing(root, f"images in leftImg8bit/{split}")
    counts = _fallback_counts(listing["city"].value_counts().to_dict(), present)
    parts, short = [], []
    for city in present:
        pool = available[available["city"] == city].reset_index(drop=True)
        n = min(counts[city], len(pool))
        if n < counts[city]:
            short.append(f"{city}: {n} of {counts[city]}")
        pick = np.sort(_city_rng(seed, city).choice(len(pool), size=n, replace=False))
        parts.append(pool.iloc[pick])
    manifest = pd.concat(parts, ignore_index=True)
    manifest["source"] = "seeded_fallback"
    warnings.warn(
        f"{list_csv}: none of its {listing['sample_id'].nunique()} images is under {root}; "
        f"used a seeded per-city draw instead (seed={seed}, {len(manifest)} images"
        + (f"; too few images in {', '.join(short)}" if short else "")
        + "). Results are NOT those of the authors' subset.",
        SubsetFallbackWarning,
        stacklevel=3,
    )
    return manifest[MANIFEST_COLUMNS]


def select_subset(root: str | os.PathLike, list_csv: str | os.PathLike, seed: int) -> pd.DataFrame:
    """Manifest of an authors' subset list, or a seeded per-city stand-in when none of it exists.

    All listed images present: the list exactly (order and repeats kept,
    repeats warned about). None present: per city, as many images as the list
    holds for it, drawn with ``seed``; cities the root lacks have their count
    spread over the cities present. Some present: an error, since a partial
    copy of Cityscapes cannot reproduce the subset and must not pass silently.
    """
    root = Path(root)
    listing = read_subset_list(list_csv)
    if listing["split"].nunique() != 1:
        raise ConfigError(f"{list_csv}: mixes splits {sorted(listing['split'].unique())}")
    require_dir(INFO, root, "leftImg8bit", listing["split"].iloc[0])
    distinct = listing.drop_duplicates("image_path")
    exists = np.array([(root / p).is_file() for p in distinct["image_path"]])
    if exists.all():
        return _from_list(root, listing, list_csv)
    if not exists.any():
        return _seeded_fallback(root, listing, list_csv, seed)
    missing = distinct["image_path"][~exists].tolist()
    raise DatasetNotFoundError(
        f"{list_csv}: {len(missing)} of {len(distinct)} listed images are missing under {root}, "
        f"e.g. {', '.join(missing[:3])}. A partial Cityscapes copy cannot reproduce this subset; "
        f"unpack the full leftImg8bit/gtFine archives from {INFO.url}."
    )
