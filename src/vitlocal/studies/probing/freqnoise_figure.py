"""Fig. 10: what frequency noise does, band by band (mask, filtered noise, noisy image).

Uses exactly the functions the Fig. 3 experiment uses
(``vitlocal.features.degrade``), with one seed for every band: the bands then
filter the same white-noise draw, as ``apply_variant`` does for one image.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ...plotting.base import new_figure, save_figure, style, write_csv
from ...features.degrade import (
    FREQUENCY_BANDS,
    FREQUENCY_NOISE_SIGMA,
    band_mask,
    band_noise,
    frequency_noise,
)

COLUMNS = ("band mask (centred spectrum)", "band-limited noise", "noisy image")


def fig10_data(
    image: np.ndarray, bands: Sequence[tuple[float, float]], sigma: float, seed: int
) -> tuple[pd.DataFrame, list[dict[str, np.ndarray]]]:
    """Per band: its radii and noise statistics (frame) and the three panels (arrays)."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"fig10: expected a uint8 RGB image (H, W, 3), got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    rows, panels = [], []
    for index, (inner, outer) in enumerate(bands, start=1):
        noise = band_noise(image.shape, (inner, outer), seed, sigma)
        noisy = frequency_noise(image, (inner, outer), seed, sigma)
        rows.append({
            "level": f"freqnoise-{index}", "band": index, "r_inner": inner, "r_outer": outer, "sigma": sigma,
            "seed": seed, "noise_std": float(noise.std()),
            "applied_std": float((noisy.astype(np.float64) - image).std()),
        })
        panels.append({"mask": band_mask(h, w, inner, outer), "noise": noise, "noisy": noisy})
    return pd.DataFrame(rows), panels


def _noise_display(noise: np.ndarray) -> np.ndarray:
    """Noise as an RGB image: 0.5 grey = 0, ±4 std of this band's noise at the ends."""
    scale = 4.0 * float(noise.std()) or 1.0
    return np.clip(0.5 + noise / (2.0 * scale), 0.0, 1.0)


def draw_fig10(image: np.ndarray, data: pd.DataFrame, panels: list[dict[str, np.ndarray]], subtitle: str = "") -> Figure:
    aspect = image.shape[0] / image.shape[1]
    with style():
        fig = new_figure(7.5, 2.3 * aspect * len(panels) + 1.4)
        axes = fig.subplots(len(panels), len(COLUMNS), squeeze=False)
        for row, (band, panel) in enumerate(zip(data.to_dict("records"), panels)):
            shown = (panel["mask"], _noise_display(panel["noise"]), panel["noisy"])
            for col, array in enumerate(shown):
                ax = axes[row, col]
                ax.imshow(array, cmap="gray" if col == 0 else None, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                ax.grid(False)
                if row == 0:
                    ax.set_title(COLUMNS[col])
            axes[row, 0].set_ylabel(
                f"band {band['band']}\n{band['r_inner']:g}-{band['r_outer']:g} Nyquist\nstd {band['noise_std']:.1f}",
                fontsize=7)
        title = f"Fig. 10 — frequency noise (σ = {data['sigma'].iloc[0]:g} before filtering, seed {data['seed'].iloc[0]})"
        fig.suptitle(f"{title}\n{subtitle}" if subtitle else title)
    return fig


def fig10(
    image: np.ndarray,
    out_pdf: str | Path,
    out_png: str | Path,
    out_csv: str | Path,
    *,
    bands: Sequence[tuple[float, float]] = FREQUENCY_BANDS,
    sigma: float = FREQUENCY_NOISE_SIGMA,
    seed: int,
    demo: bool,
    preset: str = "",
    demo_subject: str | None = None,
) -> pd.DataFrame:
    """Write Fig. 10 (PDF, PNG) and its CSV (per band: radii, noise std); return the CSV rows."""
    data, panels = fig10_data(image, bands, sigma, seed)
    if preset:
        data["preset"] = preset
    fig = draw_fig10(image, data, panels, f"preset {preset}" if preset else "")
    save_figure(fig, out_pdf, out_png, demo=demo, demo_subject=demo_subject)
    write_csv(data, out_csv)
    return data
