"""Seeded synthetic NWPU-RESISC45 (256x256 JPEGs), written by ``ucmerced.write_class_folders``."""

from __future__ import annotations

import os
from pathlib import Path

from ..datasets.resisc45 import LAYOUT
from .ucmerced import write_class_folders


def write(root: str | os.PathLike, *, n_per_class: int = 10, seed: int = 0) -> Path:
    """Write ``<root>/NWPU-RESISC45/<class>/<class>_NNN.jpg`` (NNN from 001); returns ``root``."""
    return write_class_folders(
        root, LAYOUT, n_per_class, 700, 1, lambda _k: (256, 256), seed, format="JPEG", quality=95
    )
