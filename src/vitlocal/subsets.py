"""Which images each experiment uses, written as manifests.

One function per dataset turns the config's subset settings into a call of
that dataset module's own selection function; the result is a DataFrame with
a unique ``sample_id`` column, written as CSV (``write_manifest``) so every
later stage reads the same images in the same order.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from .config import DATASETS
from .errors import ConfigError
from .io import atomic_output

#: The authors' Cityscapes lists shipped with the project (config/subsets/cityscapes).
DEFAULT_CITYSCAPES_LISTS = Path("config/subsets/cityscapes")


def _cityscapes(subset: str, root: str, settings: Mapping[str, Any], seed: int) -> pd.DataFrame:
    from .datasets import cityscapes

    lists_dir = Path(settings.get("lists_dir", DEFAULT_CITYSCAPES_LISTS))
    train_sets = settings.get("train_sets", {})
    if subset == "val":
        list_name = settings.get("val_set", "validation_set.csv")
    elif subset in train_sets:
        list_name = train_sets[subset]
    else:
        raise ConfigError(
            f"cityscapes subset {subset!r}: not 'val' nor one of subsets.cityscapes.train_sets "
            f"({', '.join(train_sets)})"
        )
    return cityscapes.select_subset(root, lists_dir / list_name, seed=seed)


def _ade20k(subset: str, root: str, settings: Mapping[str, Any], seed: int) -> pd.DataFrame:
    from .datasets import ade20k

    if subset == "train":
        return ade20k.select_subset(
            root, "training", per_class=settings["train_per_class"], pool_last=settings["train_pool_last"]
        )
    if subset == "val":
        return ade20k.select_subset(root, "validation", per_class=settings["val_per_class"], pool_last=None)
    raise ConfigError(f"ade20k subset {subset!r}: expected 'train' or 'val'")


def _fair1m(subset: str, root: str, settings: Mapping[str, Any], seed: int) -> pd.DataFrame:
    from .datasets import fair1m

    return fair1m.select_crops(
        root,
        subset,
        per_class=settings["per_class"],
        crop_size=settings["crop_size"],
        min_fraction=settings["min_fraction"],
        seed=seed,
    )


def _bdd100k(subset: str, root: str, settings: Mapping[str, Any], seed: int) -> pd.DataFrame:
    from .datasets import bdd100k

    return bdd100k.select_subset(root, subset, n_videos=settings["n_videos"])


def _mot17(subset: str, root: str, settings: Mapping[str, Any], seed: int) -> pd.DataFrame:
    from .datasets import mot17

    return mot17.select_subset(root, subset, sequences=settings.get("sequences"))


def _ucmerced(subset: str, root: str, settings: Mapping[str, Any], seed: int) -> pd.DataFrame:
    from .datasets import ucmerced

    return ucmerced.list_images(root)


def _resisc45(subset: str, root: str, settings: Mapping[str, Any], seed: int) -> pd.DataFrame:
    from .datasets import resisc45

    return resisc45.list_images(root)


_SELECTORS = {
    "cityscapes": _cityscapes,
    "ade20k": _ade20k,
    "fair1m": _fair1m,
    "bdd100k": _bdd100k,
    "mot17": _mot17,
    "ucmerced": _ucmerced,
    "resisc45": _resisc45,
}
assert set(_SELECTORS) == set(DATASETS)


def select_subset(
    dataset: str, subset: str, *, root: str | os.PathLike, settings: Mapping[str, Any], seed: int
) -> pd.DataFrame:
    """The manifest of ``subset`` of ``dataset`` read from ``root``."""
    if dataset not in _SELECTORS:
        raise ConfigError(f"unknown dataset {dataset!r}; allowed: {', '.join(DATASETS)}")
    manifest = _SELECTORS[dataset](subset, str(root), settings, seed)
    if manifest["sample_id"].duplicated().any():
        dup = manifest.loc[manifest["sample_id"].duplicated(), "sample_id"].iloc[0]
        raise ValueError(f"{dataset}/{subset}: duplicate sample_id {dup!r} in manifest")
    return manifest.reset_index(drop=True)


def write_manifest(manifest: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write atomically: a crash never leaves a manifest that looks complete."""
    with atomic_output(path) as tmp:
        manifest.to_csv(tmp, index=False)


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest written by :func:`write_manifest` (ids stay strings)."""
    return pd.read_csv(path, dtype={"sample_id": str})
