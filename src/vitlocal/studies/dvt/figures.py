"""``table_dvt`` (raw vs DVT per model and probe) and ``fig_dvt`` (PCA-to-RGB of raw, G and denoised maps)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from vitlocal.plotting.figure_helpers import (
    check_single_layer,
    check_unique,
    demo_flag,
    tidy_rows,
    with_provenance,
)
from vitlocal.plotting.base import (
    model_label,
    model_order,
    new_figure,
    provenance_subtitle,
    save_figure,
    write_csv,
)
from vitlocal.plotting.tables import write_table

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


_PROBE_LABEL = {"knn": "k-NN", "linear": "linear", "none": ""}
_TRANSFORMS = ("shift", "rotate", "scale")


def _split_level(rows: pd.DataFrame) -> pd.DataFrame:
    """``raw:blur-8`` -> side ``raw``, sub-level ``blur-8``."""
    side, _, sub = zip(*(level.partition(":") for level in rows["level"])) if len(rows) else ((), (), ())
    return rows.assign(side=pd.Series(side, index=rows.index, dtype=object),
                       sub=pd.Series(sub, index=rows.index, dtype=object))


def _task_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """One value per (model, task, probe, side): each experiment summed up the way its study reads it."""
    frames = []
    seg = rows[rows["experiment"].isin(["dvt_cityscapes", "dvt_ade20k"]) & (rows["metric"] == "miou")]
    if len(seg):
        name = seg["experiment"].map({"dvt_cityscapes": "Cityscapes", "dvt_ade20k": "ADE20K"})
        frames.append(seg.assign(task=name + " " + seg["probe"].map(_PROBE_LABEL) + " mIoU", side=seg["level"]))
    rob = _split_level(rows[(rows["experiment"] == "dvt_robustness") & (rows["metric"] == "miou")])
    rob = rob[~rob["sub"].str.endswith("-0")]
    if len(rob):
        kind = rob["sub"].str.rsplit("-", n=1).str[0]
        frames.append(rob.assign(task="Fig 3 " + kind + ": " + rob["probe"].map(_PROBE_LABEL) + " mIoU (mean of levels)"))
    ret = _split_level(rows[(rows["experiment"] == "dvt_retrieval") & (rows["metric"] == "share")
                            & (rows["class"] == "same_patch")])
    if len(ret):
        family = ret["sub"].str.split("-").str[0].isin(_TRANSFORMS).map({True: "transforms", False: "degradations"})
        frames.append(ret.assign(task="FAIR1M same patch: " + family + " (mean share)"))
    tra = _split_level(rows[(rows["experiment"] == "dvt_tracking") & (rows["metric"] == "acc_same_instance")])
    if len(tra):
        frames.append(tra.assign(task="BDD100K tracking: same instance (mean over gaps)"))
    if not frames:
        raise ValueError("table_dvt: no rows of dvt_cityscapes, dvt_ade20k, dvt_robustness, dvt_retrieval or "
                         f"dvt_tracking (experiments present: {', '.join(sorted(set(rows['experiment'])))})")
    tasks = pd.concat(frames, ignore_index=True)
    bad = sorted(set(tasks["side"]) - {"raw", "dvt", "dvt1"})
    if bad:
        raise ValueError(f"table_dvt: levels must be raw / dvt / dvt1 (or raw:<level>, ...), found {bad}")
    return tasks.groupby(["model", "task", "probe", "side"], sort=False).agg(
        value=("value", "mean"), layer=("layer", "first")).reset_index()


def table_dvt_data(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, task, probe): raw, DVT, DVT - raw; the DVT paper's linear-probe gains beside."""
    rows = tidy_rows(df, "table_dvt")
    rows = rows[rows["experiment"].str.startswith("dvt_")]
    for experiment, part in rows.groupby("experiment"):
        keys = ("model", "probe", "level", "class", "metric")
        check_unique(part, keys, f"table_dvt ({experiment})")
    check_single_layer(rows[rows["layer"] != ""], "table_dvt")
    tasks = _task_rows(rows)
    wide = tasks.pivot(index=["model", "task", "probe", "layer"], columns="side", values="value").reset_index()
    wide.columns.name = None
    missing = [side for side in ("raw", "dvt") if side not in wide.columns]
    if missing or wide[["raw", "dvt"]].isna().any().any():
        raise ValueError("table_dvt: every task needs both raw and dvt rows")
    wide["diff"] = wide["dvt"] - wide["raw"]
    # Stage 1's F per tile, where dvt.stage1_tasks asked for it (empty elsewhere).
    wide["dvt1"] = wide["dvt1"] if "dvt1" in wide.columns else np.nan
    wide["dvt1_diff"] = wide["dvt1"] - wide["raw"]
    for key, name in (("voc", "paper_voc_linear"), ("ade", "paper_ade20k_linear")):
        wide[f"{name}_raw"] = wide["model"].map(lambda m, k=key: DVT_PAPER.get(m, {}).get(k, (np.nan,))[0])
        wide[f"{name}_diff"] = wide["model"].map(
            lambda m, k=key: (lambda v: v[1] - v[0])(DVT_PAPER[m][k]) if m in DVT_PAPER else np.nan)
    order = {m: i for i, m in enumerate(model_order(wide["model"]))}
    task_order = {t: i for i, t in enumerate(dict.fromkeys(tasks["task"]))}
    wide = wide.assign(_m=wide["model"].map(order), _t=wide["task"].map(task_order)).sort_values(
        ["_m", "_t", "probe"]).drop(columns=["_m", "_t"])
    wide.insert(1, "label", wide["model"].map(model_label))
    columns = ["model", "label", "task", "probe", "layer", "raw", "dvt", "diff", "dvt1", "dvt1_diff",
               "paper_voc_linear_raw", "paper_voc_linear_diff", "paper_ade20k_linear_raw", "paper_ade20k_linear_diff"]
    return with_provenance(wide[columns], rows)


def table_dvt(df: pd.DataFrame, out_csv: str | Path, out_tex: str | Path, *, demo: bool | None = None) -> pd.DataFrame:
    """Write the raw-vs-DVT table (CSV + LaTeX); return it."""
    data = table_dvt_data(df)
    is_demo, subject = demo_flag(data, demo)
    stage1 = data["dvt1"].notna().any()
    caption = ("Raw vs DVT-denoised last-layer features (stage-2 denoiser"
               + ("; DVT1: stage 1's per-tile F, where computed" if stage1 else "")
               + ") on each study's task, with the difference (mIoU, retrieval share and tracking accuracy as "
               "fractions); DVT paper's own linear-probe numbers (VOC / ADE20K, 512 px, mmseg heads) beside as "
               f"context, not targets ({provenance_subtitle(data.assign(probe='knn'))}).")
    stage1_columns = {"dvt1": "DVT1", "dvt1_diff": "DVT1 - raw"} if stage1 else {}
    write_table(data, out_csv, out_tex, caption, "tab:table_dvt",
                columns={"label": "Model", "task": "task", "raw": "raw", "dvt": "DVT", "diff": "DVT - raw",
                         **stage1_columns,
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
            out_csv, *, n_images: int = 2, demo_subject: str | None = None, preset: str = "",
            training: Sequence[Mapping | None] | None = None) -> pd.DataFrame:
    """Rows: model x training tile; columns: the tile, raw, G, F, stage-2 output. Writes the CSV of the PCA fits.

    ``training``: per model, the stage-2 sidecar's ``training_log`` (None for
    a released checkpoint); a bottom panel draws each model's training and
    held-out loss through training (over-fitting shows as a held-out curve
    that turns up), and the CSV keeps its last and lowest held-out loss.
    """
    training = list(training) if training is not None else [None] * len(models)
    if len(training) != len(models):
        raise ValueError(f"fig_dvt: {len(training)} training logs for {len(models)} models")
    rows = [(m, s, out, log, i) for m, s, out, log in zip(models, stage1, stage2_out, training)
            for i in range(min(n_images, len(s["raw"])))]
    columns = ["image", "raw", "G (artifact)", "stage-1 F", "stage-2 DVT"]
    curves = any(log is not None for log in training)
    n_rows = max(1, len(rows))
    fig = new_figure(1.6 * len(columns), 1.6 * n_rows + 0.6 + 2.2 * curves)
    grid = fig.add_gridspec(n_rows + curves, len(columns), height_ratios=[1.0] * n_rows + [1.4] * curves)
    axes = np.array([[fig.add_subplot(grid[r, c]) for c in range(len(columns))] for r in range(n_rows)])
    records = []
    for r, (model, s, out, log, i) in enumerate(rows):
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
        held = log["held_out_loss"] if log else []
        records.append({"model": model, "dataset": str(s["dataset"][i]), "sample_id": str(s["sample_id"][i]),
                        "tile_id": int(s["tile_id"][i]), "weights": s["attrs"]["weights"], "preset": preset,
                        "stage1_loss": float(s["loss"][i]),
                        "raw_to_F_cos": _mean_cos(s["raw"][i], s["denoised"][i]),
                        "stage2_to_F_cos": _mean_cos(out[i], s["denoised"][i]),
                        "stage2_held_out_loss_last": float(held[-1]) if held else np.nan,
                        "stage2_held_out_loss_min": float(np.min(held)) if held else np.nan,
                        "stage2_held_out_tiles": len(log["held_out_tiles"]) if log else 0})
    if curves:
        _training_panel(fig.add_subplot(grid[n_rows, :]), models, training)
    fig.suptitle(f"DVT: PCA of raw features, artifact map G and denoised features (one basis per model, fitted on "
                 f"the raw features){' · preset ' + preset if preset else ''}", fontsize=8)
    save_figure(fig, out_pdf, out_png, demo=demo_subject is not None, demo_subject=demo_subject)
    data = pd.DataFrame(records)
    write_csv(data, out_csv)
    return data


def _training_panel(ax, models: Sequence[str], training: Sequence[Mapping | None]) -> None:
    """Stage 2's loss per model: the held-out tiles (solid) and the training batches in between (dashed)."""
    for index, (model, log) in enumerate(zip(models, training)):
        colour = f"C{index % 10}"
        if log is None:  # said, not silently left out
            ax.plot([], [], color=colour, linestyle=":", label=f"{model_label(model)}: no log (released checkpoint)")
            continue
        held = len(log["held_out_tiles"])
        label = f"{model_label(model)} ({held} held-out tile{'s' if held != 1 else ''})"
        ax.plot(log["steps"], log["held_out_loss"], color=colour, label=label)
        ax.plot(log["steps"], log["train_loss"], color=colour, linestyle="--", linewidth=0.8)
    ax.set_xlabel("stage-2 step", fontsize=7)
    ax.set_ylabel("MSE + 1 - cos", fontsize=7)
    ax.set_title("stage 2: held-out tiles at each point (solid) vs training batches, mean since the last point "
                 "(dashed)", fontsize=8)
    ax.tick_params(labelsize=6)
    ax.legend(fontsize=6, loc="upper right")


def _mean_cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    return float((np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)).mean())
