"""``table_dvt`` (raw vs DVT per model and probe) and ``fig_dvt`` (PCA-to-RGB of raw, G and denoised maps)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from vitlocal.experiments.figure_helpers import (
    PROBES,
    check_single_layer,
    check_unique,
    demo_flag,
    tidy_rows,
    with_provenance,
)
from vitlocal.experiments.plotting import (
    model_label,
    model_order,
    new_figure,
    provenance_subtitle,
    require_rows,
    save_figure,
    write_csv,
)
from vitlocal.experiments.tables import write_table

#: The DVT paper's linear-probe mIoU, before -> after (ViT-B, 512 px, mmseg heads; dvt.md). Context only:
#: another protocol (VOC / ADE20K linear heads at 512 px), not a target for this study's numbers.
DVT_PAPER = {
    "mae": {"voc": (50.24, 50.53), "ade": (23.60, 23.62)},
    "dino": {"voc": (63.00, 66.22), "ade": (31.03, 32.40)},
    "dinov2_reg4": {"voc": (83.64, 84.50), "ade": (48.22, 49.34)},
    "deit3": {"voc": (70.62, 73.36), "ade": (32.73, 36.57)},
    "eva02": {"voc": (71.52, 73.15), "ade": (37.45, 37.87)},
    "clip": {"voc": (77.78, 79.01), "ade": (40.51, 41.10)},
    "dinov2": {"voc": (83.60, 84.84), "ade": (47.29, 48.66)},
}


def table_dvt_data(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, probe): Cityscapes mIoU raw, DVT, DVT - raw; the DVT paper's gains beside."""
    rows = require_rows(tidy_rows(df, "table_dvt"), "table_dvt", metric="miou", probe=PROBES, level=["raw", "dvt"])
    check_unique(rows, ("model", "probe", "level"), "table_dvt")
    check_single_layer(rows, "table_dvt")
    wide = rows.pivot(index=["model", "probe"], columns="level", values="value").reset_index()
    wide.columns.name = None
    wide["diff"] = wide["dvt"] - wide["raw"]
    wide["task"] = "cityscapes " + wide["probe"].map({"knn": "k-NN", "linear": "linear"})
    for key, name in (("voc", "paper_voc_linear"), ("ade", "paper_ade20k_linear")):
        wide[f"{name}_raw"] = wide["model"].map(lambda m, k=key: DVT_PAPER.get(m, {}).get(k, (np.nan,))[0])
        wide[f"{name}_diff"] = wide["model"].map(
            lambda m, k=key: (lambda v: v[1] - v[0])(DVT_PAPER[m][k]) if m in DVT_PAPER else np.nan)
    order = {m: i for i, m in enumerate(model_order(wide["model"]))}
    wide = wide.assign(_m=wide["model"].map(order)).sort_values(["_m", "probe"]).drop(columns="_m")
    wide.insert(1, "label", wide["model"].map(model_label))
    wide["layer"] = rows["layer"].iloc[0]
    columns = ["model", "label", "task", "probe", "layer", "raw", "dvt", "diff",
               "paper_voc_linear_raw", "paper_voc_linear_diff", "paper_ade20k_linear_raw", "paper_ade20k_linear_diff"]
    return with_provenance(wide[columns], rows)


def table_dvt(df: pd.DataFrame, out_csv: str | Path, out_tex: str | Path, *, demo: bool | None = None) -> pd.DataFrame:
    """Write the raw-vs-DVT table (CSV + LaTeX); return it."""
    data = table_dvt_data(df)
    is_demo, subject = demo_flag(data, demo)
    caption = ("Cityscapes mIoU of raw and DVT-denoised last-layer features (stage-2 denoiser), with the "
               "difference; DVT paper's own linear-probe numbers (VOC / ADE20K, 512 px, mmseg heads) beside as "
               f"context, not targets ({provenance_subtitle(data.assign(probe='knn'))}).")
    write_table(data, out_csv, out_tex, caption, "tab:table_dvt",
                columns={"label": "Model", "task": "task", "raw": "raw", "dvt": "DVT", "diff": "DVT - raw",
                         "paper_voc_linear_raw": "paper VOC", "paper_voc_linear_diff": "paper VOC gain",
                         "paper_ade20k_linear_raw": "paper ADE", "paper_ade20k_linear_diff": "paper ADE gain"},
                demo=is_demo, demo_subject=subject)
    return data


# --- fig_dvt -------------------------------------------------------------------------------


def pca_basis(x: np.ndarray, k: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean, top-``k`` principal directions (C, k) of ``x`` (n, C), and the 1st / 99th percentile of the scores."""
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    basis = vt[:k].T
    scores = (x - mean) @ basis
    return mean, basis, np.percentile(scores, 1, axis=0), np.percentile(scores, 99, axis=0)


def to_rgb(maps: np.ndarray, mean, basis, low, high) -> np.ndarray:
    """(..., C) features -> (..., 3) colours in [0, 1] on one model's basis (scores clipped to its range)."""
    scores = (maps - mean) @ basis
    return np.clip((scores - low) / np.maximum(high - low, 1e-12), 0, 1)


def fig_dvt_panels(stage1: dict, stage2_out: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """RGB panels (n, gh, gw, 3) of one model: raw, G (around the raw mean), stage-1 F, stage-2 output."""
    raw = stage1["raw"]
    dim = raw.shape[-1]
    mean, basis, low, high = pca_basis(raw.reshape(-1, dim))
    artifact = stage1["artifact"][:n]
    centred = artifact - artifact.mean(axis=(1, 2), keepdims=True) + mean
    return {
        "raw": to_rgb(raw[:n], mean, basis, low, high),
        "G (artifact)": to_rgb(centred, mean, basis, low, high),
        "stage-1 F": to_rgb(stage1["denoised"][:n], mean, basis, low, high),
        "stage-2 DVT": to_rgb(stage2_out[:n], mean, basis, low, high),
    }


def fig_dvt(models: Sequence[str], stage1: Sequence[dict], stage2_out: Sequence[np.ndarray], out_pdf, out_png,
            out_csv, *, n_images: int = 2, demo_subject: str | None = None, preset: str = "") -> pd.DataFrame:
    """Rows: model x training tile; columns: the tile, raw, G, F, stage-2 output. Writes the CSV of the PCA fits."""
    rows = [(m, s, out, i) for m, s, out in zip(models, stage1, stage2_out) for i in range(min(n_images, len(s["raw"])))]
    columns = ["image", "raw", "G (artifact)", "stage-1 F", "stage-2 DVT"]
    fig = new_figure(1.6 * len(columns), 1.6 * max(1, len(rows)) + 0.6)
    axes = fig.subplots(max(1, len(rows)), len(columns), squeeze=False)
    records = []
    for r, (model, s, out, i) in enumerate(rows):
        panels = fig_dvt_panels(s, out, i + 1)
        images = s["images"]
        for c, name in enumerate(columns):
            ax = axes[r, c]
            if name == "image":  # only the first few tiles' images are stored
                shown = images[i] if i < len(images) else np.zeros((1, 1, 3))
            else:
                shown = panels[name][i]
            ax.imshow(shown, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
        axes[r, 0].set_ylabel(f"{model_label(model)}\n{s['dataset'][i]} {s['sample_id'][i]}:{s['tile_id'][i]}",
                              fontsize=6)
        records.append({"model": model, "dataset": str(s["dataset"][i]), "sample_id": str(s["sample_id"][i]),
                        "tile_id": int(s["tile_id"][i]), "weights": s["attrs"]["weights"], "preset": preset,
                        "stage1_loss": float(s["loss"][i]),
                        "raw_to_F_cos": _mean_cos(s["raw"][i], s["denoised"][i]),
                        "stage2_to_F_cos": _mean_cos(out[i], s["denoised"][i])})
    fig.suptitle(f"DVT: PCA of raw features, artifact map G and denoised features (one basis per model, fitted on "
                 f"the raw features){' · preset ' + preset if preset else ''}", fontsize=8)
    save_figure(fig, out_pdf, out_png, demo=demo_subject is not None, demo_subject=demo_subject)
    data = pd.DataFrame(records)
    write_csv(data, out_csv)
    return data


def _mean_cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    return float((np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)).mean())
