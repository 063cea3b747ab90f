"""Seeded synthetic UC Merced, and the class-folder scene writer shared with RESISC45.

Each class gets its own hue, saturation, brightness, grain and stripe
orientation/period (cycled with different periods so neighbours differ), with per-image jitter in brightness and
stripe phase, so a k-NN classifier has something to learn. Like the real set,
a few UC Merced images are not 256x256: every 10th image written (counting
across classes, from the 8th) gets one of ``ODD_SIZES``. Content is for
testing the pipeline, never a result.
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from ..datasets.ucmerced import LAYOUT, SceneLayout
from ..errors import ConfigError
from .textures import texture

#: ``(height, width)`` of the off-size images, like the real set's 256x253-ish ones.
ODD_SIZES: tuple[tuple[int, int], ...] = ((253, 256), (247, 256), (256, 252))


def scene_image(class_index: int, n_classes: int, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """An ``(h, w, 3)`` uint8 scene of class ``class_index``: class colour + class stripes, jittered."""
    h, w = size
    hue = class_index / n_classes
    saturation = 0.3 + 0.25 * (class_index % 3)
    value = 0.4 + 0.4 * ((class_index * 2) % 5) / 4
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    jitter = rng.normal(0.0, 5.0, size=3)
    base = tuple(int(np.clip(255 * c + j, 0, 255)) for c, j in zip((r, g, b), jitter))
    return texture(
        h,
        w,
        base,
        rng,
        cell=3.0 + 5.0 * (class_index % 4),
        amplitude=45.0,
        stripe_period=6.0 + 4.0 * (class_index % 5),
        stripe_angle_deg=(class_index * 180.0 * 7 / n_classes) % 180.0,
    )


def write_class_folders(
    root: str | os.PathLike,
    layout: SceneLayout,
    n_per_class: int,
    max_per_class: int,
    first_number: int,
    size_of: Callable[[int], tuple[int, int]],
    seed: int,
    **save_kwargs,
) -> Path:
    """Write ``n_per_class`` images per class of ``layout`` under ``root``; returns ``root``.

    Image ``k`` overall (class-major order) has size ``size_of(k)``; each
    image depends only on ``seed``, its class and its number.
    """
    if not 1 <= n_per_class <= max_per_class:
        raise ConfigError(f"{layout.info.name}: n_per_class={n_per_class}; expected 1..{max_per_class}")
    base = Path(root, *layout.folder)
    k = 0
    for c, class_name in enumerate(layout.classes):
        (base / class_name).mkdir(parents=True, exist_ok=True)
        for number in range(first_number, first_number + n_per_class):
            rng = np.random.default_rng([seed, c, number])
            image = scene_image(c, len(layout.classes), size_of(k), rng)
            Image.fromarray(image).save(base / class_name / layout.file_name(class_name, number), **save_kwargs)
            k += 1
    return Path(root)


def _ucm_size(k: int) -> tuple[int, int]:
    return ODD_SIZES[(k // 10) % len(ODD_SIZES)] if k % 10 == 7 else (256, 256)


def write(root: str | os.PathLike, *, n_per_class: int = 10, seed: int = 0) -> Path:
    """Write ``<root>/UCMerced_LandUse/Images/<class>/<class>NN.tif`` (NN from 00); returns ``root``."""
    return write_class_folders(root, LAYOUT, n_per_class, 100, 0, _ucm_size, seed, format="TIFF")
