"""Seeded textures so synthetic classes differ in colour *and* local pattern.

Patch classifiers must have something to learn: each class gets a base colour,
a noise scale and optionally stripes at its own orientation.
"""

from __future__ import annotations

import cv2
import numpy as np


def value_noise(h: int, w: int, rng: np.random.Generator, cell: float) -> np.ndarray:
    """Smooth noise in [0, 1]: a random grid of ``cell``-pixel spacing, upsampled bicubically."""
    gh, gw = max(2, int(np.ceil(h / cell)) + 1), max(2, int(np.ceil(w / cell)) + 1)
    grid = rng.random((gh, gw), dtype=np.float32)
    up = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(up, 0.0, 1.0)


def texture(
    h: int,
    w: int,
    base_rgb: tuple[int, int, int],
    rng: np.random.Generator,
    *,
    cell: float = 8.0,
    amplitude: float = 40.0,
    stripe_period: float | None = None,
    stripe_angle_deg: float = 0.0,
) -> np.ndarray:
    """An ``(h, w, 3)`` uint8 texture around ``base_rgb``.

    ``cell`` sets the grain, ``amplitude`` the contrast (0-255 scale), and an
    optional sinusoidal stripe pattern gives the class an orientation.
    """
    pattern = value_noise(h, w, rng, cell) - 0.5
    if stripe_period:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        theta = np.deg2rad(stripe_angle_deg)
        phase = (xx * np.cos(theta) + yy * np.sin(theta)) * (2 * np.pi / stripe_period)
        pattern = 0.5 * pattern + 0.5 * np.sin(phase + rng.uniform(0, 2 * np.pi))
    out = np.asarray(base_rgb, np.float32)[None, None, :] + amplitude * pattern[..., None]
    return np.clip(out, 0, 255).astype(np.uint8)
