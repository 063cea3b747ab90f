"""Shared fixtures: paths of the project and its two configs; the bench scripts as modules."""

from __future__ import annotations

import copy
import importlib
import sys
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[1]


def load_config(name: str) -> dict:
    with open(PROJECT / name) as fh:
        return yaml.safe_load(fh)


@pytest.fixture
def paper_config() -> dict:
    return copy.deepcopy(load_config("config.yaml"))


@pytest.fixture
def demo_config() -> dict:
    return copy.deepcopy(load_config("config/demo.yaml"))


def bench_module(name: str):
    """``bench/<name>.py`` imported as a module (the bench scripts import each other as top-level modules)."""
    sys.path.insert(0, str(PROJECT / "bench"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(PROJECT / "bench"))


def write_planted_cityscapes(path, root, manifest, attrs, features, *, tiling, grid, layer: int = 12) -> str:
    """A feature file of Cityscapes ``manifest`` in the store's format, each tile's patch labels as the
    extraction makes them (nearest-exact), the embeddings ``features(labels) -> (n_patches, C)`` of one image."""
    import numpy as np
    import pandas as pd

    from vitlocal.datasets import cityscapes
    from vitlocal.features.store import FeatureWriter
    from vitlocal.tiling import patch_labels, tile_image

    with FeatureWriter(path, attrs, dtype="float32") as writer:
        for row in manifest.to_dict("records"):
            _, labels = cityscapes.read_sample(root, row)
            label = patch_labels(tile_image(labels, tiling), grid).reshape(-1)
            tile, prow, pcol = (a.reshape(-1) for a in np.indices((tiling.n_tiles, *grid)))
            meta = pd.DataFrame({"sample_id": row["sample_id"], "tile_id": tile, "patch_row": prow, "patch_col": pcol,
                                 "label": label, "image_h": labels.shape[0], "image_w": labels.shape[1]})
            writer.write(meta, {layer: np.asarray(features(label), dtype=np.float32)})
    return str(path)
