"""Crop geometry of DVT's views: which image coordinates each crop patch covers.

Coordinates are normalised to ``[0, 1]`` with ``(x, y)`` order; pixel ``k``
covers ``[k, k + 1)``, so a box ``(top, left, height, width)`` spans
``[left, left + width) x [top, top + height)``. A crop is resized to the ViT
input, whose patch ``(r, c)`` has its centre at ``q = ((c + .5) / gw,
(r + .5) / gh)``: the same ``q`` for every view (what ``G`` depends on).
With a horizontal flip the input column ``c`` shows the crop at ``1 - q_x``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from ..errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Box:
    """A crop in pixels of the image, and whether it is flipped horizontally after cropping."""

    top: int
    left: int
    height: int
    width: int
    flip: bool = False


def full_box(image_hw: Sequence[int]) -> Box:
    """The whole image, unflipped: the view whose denoised map is kept."""
    return Box(0, 0, int(image_hw[0]), int(image_hw[1]), False)


def random_resized_box(
    image_hw: Sequence[int], rng: np.random.Generator, *, scale: Sequence[float] = (0.1, 0.5),
    ratio: Sequence[float] = (3 / 4, 4 / 3), flip_p: float = 0.5,
) -> Box:
    """One random-resized crop (torchvision's sampling: area fraction ``scale``, log-uniform ``ratio``).

    Ten tries for a box that fits, else the central crop at the closest
    allowed aspect ratio, as torchvision does.
    """
    h, w = (int(v) for v in image_hw)
    if not 0 < scale[0] <= scale[1] <= 1 or not 0 < ratio[0] <= ratio[1]:
        raise ConfigError(f"dvt crops: scale {list(scale)} must lie in (0, 1] and ratio {list(ratio)} be positive")
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    flip = bool(rng.random() < flip_p)
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(rng.integers(0, h - ch + 1))
            left = int(rng.integers(0, w - cw + 1))
            return Box(top, left, ch, cw, flip)
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return Box((h - ch) // 2, (w - cw) // 2, ch, cw, flip)


def input_coords(grid: Sequence[int]) -> np.ndarray:
    """``q``: (gh, gw, 2) patch centres of the ViT input in ``[0, 1]``, ``(x, y)`` order."""
    gh, gw = (int(v) for v in grid)
    ys, xs = (np.arange(gh) + 0.5) / gh, (np.arange(gw) + 0.5) / gw
    return np.stack(np.meshgrid(xs, ys, indexing="xy"), axis=-1).astype(np.float32)


def image_coords(box: Box, image_hw: Sequence[int], grid: Sequence[int]) -> np.ndarray:
    """``p``: (gh, gw, 2) image coordinates in ``[0, 1]`` of the patch centres of ``box``'s view."""
    h, w = (float(v) for v in image_hw)
    q = input_coords(grid)
    qx = 1.0 - q[..., 0] if box.flip else q[..., 0]
    x = (box.left + qx * box.width) / w
    y = (box.top + q[..., 1] * box.height) / h
    return np.stack([x, y], axis=-1).astype(np.float32)
