"""Seeded generators writing small datasets in the exact official layouts.

Content is learnable (textured classes, persistent tracks) so the pipeline has
something to measure, but nothing produced from it is a result of the study.
``generate`` is what the workflow calls; the size presets live in ``SIZES``:
``tiny`` for tests, ``demo`` for the embedded demo, ``full`` for official
image sizes (scale benchmarks).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError

#: Keyword arguments of each dataset's ``write`` per size preset.
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "cityscapes": {
        # 8 train images per city covers the largest authors' list (set8).
        "tiny": {"images_per_city": {"train": 2, "val": 2}, "size": (64, 128)},
        "demo": {"images_per_city": {"train": 8, "val": 10}, "size": (128, 256)},
        "full": {"images_per_city": {"train": 8, "val": 10}, "size": (1024, 2048)},
    },
    "ade20k": {
        "tiny": {"n_train": 12, "n_val": 6, "size": (96, 128), "n_classes_used": 8},
        "demo": {"n_train": 60, "n_val": 30, "size": (192, 256), "n_classes_used": 20},
        "full": {"n_train": 600, "n_val": 300, "size": (512, 683), "n_classes_used": 150},
    },
    "fair1m": {
        "tiny": {"n_train_part1": 4, "n_train_part2": 4, "n_val": 2, "min_size": 448, "max_size": 448},
        "demo": {"n_train_part1": 12, "n_train_part2": 12, "n_val": 2, "min_size": 672, "max_size": 672},
        "full": {"n_train_part1": 24, "n_train_part2": 24, "n_val": 4, "min_size": 1000, "max_size": 4000},
    },
    "bdd100k": {},  # the module's own PRESETS
    "mot17": {},  # the module's own PRESETS
    "ucmerced": {"tiny": {"n_per_class": 2}, "demo": {"n_per_class": 4}, "full": {"n_per_class": 100}},
    "resisc45": {"tiny": {"n_per_class": 2}, "demo": {"n_per_class": 3}, "full": {"n_per_class": 700}},
}


def write_kwargs(dataset: str, size: str) -> dict[str, Any]:
    """The keyword arguments ``generate`` passes to ``<dataset>.write`` for ``size``."""
    if dataset not in SIZES:
        raise ConfigError(f"no synthetic generator for {dataset!r}; available: {', '.join(SIZES)}")
    module = importlib.import_module(f"{__name__}.{dataset}")
    presets = SIZES[dataset] or module.PRESETS
    if size not in presets:
        raise ConfigError(f"synthetic size {size!r} for {dataset}: expected one of {', '.join(presets)}")
    return dict(presets[size])


def generate(dataset: str, root: str | os.PathLike, *, size: str = "demo", seed: int = 0) -> Path:
    """Write a synthetic ``dataset`` of preset ``size`` under ``root`` and return the root."""
    kwargs = write_kwargs(dataset, size)
    module = importlib.import_module(f"{__name__}.{dataset}")
    return Path(module.write(root, seed=seed, **kwargs))
