"""Figures and table of the tracking study: Figs 8, 9, 12 and Table 5.

Writers follow ``vitlocal.plotting.figure_helpers``: ``<id>_data`` (the
numbers), ``draw_<id>`` (the Figure), ``<id>`` (writes both, returns the numbers).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ...plotting.figure_helpers import (
    PROVENANCE_COLUMNS,
    check_unique,
    demo_flag,
    model_handles,
    set_title,
    sort_models,
    tidy_rows,
    with_provenance,
    write_figure,
)
from ...plotting.base import (
    PROBE_LABELS,
    model_colour,
    model_label,
    model_order,
    new_figure,
    provenance_subtitle,
    require_rows,
    style,
)
from ...plotting.tables import write_table

METRIC_LABELS = {"acc_same_instance": "same instance", "acc_same_category": "same category"}
MODE_LINESTYLES = {"full": "-", "tiled": "--"}
_LEVEL = re.compile(r"(?:(?P<mode>tiled|full):)?delta=(?P<gap>\d+)")


def _with_gaps(rows: pd.DataFrame, what: str) -> pd.DataFrame:
    """Rows with ``mode`` (``tiled`` when the level has no prefix) and integer ``gap`` parsed from the level."""
    parsed = rows["level"].map(_LEVEL.fullmatch)
    bad = sorted(rows.loc[parsed.isna(), "level"].unique())
    if bad:
        raise ValueError(f"{what}: levels {bad} are not '[tiled:|full:]delta=<gap>'")
    return rows.assign(mode=[m["mode"] or "tiled" for m in parsed], gap=[int(m["gap"]) for m in parsed])


def _subtitle(data: pd.DataFrame) -> str:
    """Preset and similarity (tracking rows are probe ``none``, so the generic subtitle omits it)."""
    parts = [provenance_subtitle(data)]
    metrics = sorted({m for m in data.get("knn_metric", pd.Series(dtype=str)) for m in str(m).split(";") if m})
    if metrics and "similarity" not in parts[0]:
        parts.append("similarity: " + ", ".join(metrics))
    return " · ".join(p for p in parts if p)


def curves_data(df: pd.DataFrame, experiment: str, dataset: str, what: str) -> pd.DataFrame:
    """Same-instance and same-category accuracy per model and gap (Figs 8, 9)."""
    rows = require_rows(tidy_rows(df, what), what, experiment=experiment, dataset=dataset,
                        metric=list(METRIC_LABELS), probe="none")
    check_unique(rows, ("model", "metric", "level"), what)
    rows = _with_gaps(rows, what)
    data = sort_models(rows[["model", "metric", "gap", "value", "knn_metric"]], "metric", "gap")
    return with_provenance(data.drop(columns="knn_metric"), rows)


def draw_curves(data: pd.DataFrame, title: str, subtitle: str = "") -> Figure:
    with style():
        fig = new_figure(7.6, 3.2)
        metrics = [m for m in METRIC_LABELS if m in set(data["metric"])]
        axes = np.atleast_1d(fig.subplots(1, len(metrics), sharey=True))
        for ax, metric in zip(axes, metrics):
            for model, series in data[data["metric"] == metric].groupby("model", sort=False):
                series = series.sort_values("gap")
                ax.plot(series["gap"], series["value"], color=model_colour(model), marker="o")
            ax.set_title(METRIC_LABELS[metric])
            ax.set_xlabel("frame gap Δ")
            ax.set_ylim(0, 1.02)
        axes[0].set_ylabel("accuracy of the nearest object at t + Δ")
        axes[-1].legend(handles=model_handles(model_order(data["model"])), loc="lower left")
        set_title(fig, title, subtitle)
    return fig


def _curve_figure(df, out_pdf, out_png, out_csv, demo, *, experiment, dataset, what, title) -> pd.DataFrame:
    data = curves_data(df, experiment, dataset, what)
    return write_figure(draw_curves(data, title, _subtitle(data)), data, out_pdf, out_png, out_csv,
                        *demo_flag(data, demo))


def fig8(df: pd.DataFrame, out_pdf: str | Path, out_png: str | Path, out_csv: str | Path, *,
         demo: bool | None = None) -> pd.DataFrame:
    """Write Fig. 8 (BDD100K) and its CSV; return the plotted numbers."""
    return _curve_figure(df, out_pdf, out_png, out_csv, demo, experiment="tracking", dataset="bdd100k",
                         what="fig8", title="Fig. 8 — tracking by nearest object at t + Δ (BDD100K)")


def fig9(df: pd.DataFrame, out_pdf: str | Path, out_png: str | Path, out_csv: str | Path, *,
         demo: bool | None = None) -> pd.DataFrame:
    """Write Fig. 9 (MOT17) and its CSV; return the plotted numbers."""
    return _curve_figure(df, out_pdf, out_png, out_csv, demo, experiment="tracking_mot17", dataset="mot17",
                         what="fig9", title="Fig. 9 — tracking by nearest object at t + Δ (MOT17)")


# --- Table 5 / Fig. 12: tiled vs whole frames ------------------------------------------------


def full_vs_tile_data(df: pd.DataFrame, what: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(tracking, cityscapes)``: same-instance accuracy per model, mode and gap; mIoU per model, probe, mode.

    Either part may be empty (its dataset not configured), not both.
    """
    rows = tidy_rows(df, what)
    tracking = rows[(rows["experiment"] == "tracking_full_vs_tile") & (rows["metric"] == "acc_same_instance")]
    city = rows[(rows["experiment"] == "cityscapes_full_vs_tile") & (rows["metric"] == "miou")]
    if tracking.empty and city.empty:
        require_rows(rows, what, experiment=["tracking_full_vs_tile", "cityscapes_full_vs_tile"])
        raise ValueError(f"{what}: no acc_same_instance (tracking) or miou (Cityscapes) rows")
    check_unique(tracking, ("model", "level"), what)
    check_unique(city, ("model", "probe", "level"), what)
    if not tracking.empty:
        tracking = _with_gaps(tracking, what)
        tracking = with_provenance(sort_models(tracking[["model", "mode", "gap", "value"]], "mode", "gap"), tracking)
    if not city.empty:
        city = with_provenance(sort_models(city.rename(columns={"level": "mode"})[["model", "probe", "mode", "value"]],
                                           "probe", "mode"), city)
    return tracking.reset_index(drop=True), city.reset_index(drop=True)


def fig12_data(df: pd.DataFrame) -> pd.DataFrame:
    """One frame of both parts: ``part`` tracking (x = gap) or cityscapes (x = probe)."""
    tracking, city = full_vs_tile_data(df, "fig12")
    parts = []
    if not tracking.empty:
        parts.append(tracking.assign(part="tracking", metric="acc_same_instance", probe="none"))
    if not city.empty:
        parts.append(city.assign(part="cityscapes", metric="miou", gap=pd.NA))
    data = pd.concat(parts, ignore_index=True)
    columns = ["part", "model", "mode", "probe", "gap", "metric", "value"]
    return data[columns + [c for c in PROVENANCE_COLUMNS if c in data.columns]]


def draw_fig12(data: pd.DataFrame, subtitle: str = "") -> Figure:
    parts = [p for p in ("tracking", "cityscapes") if p in set(data["part"])]
    with style():
        fig = new_figure(4.0 * len(parts) + 1.2, 3.3)
        axes = np.atleast_1d(fig.subplots(1, len(parts)))
        for ax, part in zip(axes, parts):
            panel = data[data["part"] == part]
            if part == "tracking":
                for (model, mode), series in panel.groupby(["model", "mode"], sort=False):
                    series = series.sort_values("gap")
                    ax.plot(series["gap"].astype(int), series["value"], color=model_colour(model),
                            linestyle=MODE_LINESTYLES[mode])
                ax.set_xlabel("frame gap Δ")
                ax.set_ylabel("same-instance accuracy (BDD100K)")
                ax.set_ylim(0, 1.02)
            else:
                models = model_order(panel["model"])
                probes = [p for p in ("knn", "linear") if p in set(panel["probe"])]
                width = 0.8 / (2 * len(probes))
                for i, model in enumerate(models):
                    for j, (probe, mode) in enumerate((p, m) for p in probes for m in ("tiled", "full")):
                        value = panel[(panel["model"] == model) & (panel["probe"] == probe) & (panel["mode"] == mode)]
                        if value.empty:
                            continue
                        ax.bar(i + (j - len(probes) + 0.5) * width, value["value"].iloc[0], width,
                               color=model_colour(model), alpha=1.0 if mode == "full" else 0.45,
                               hatch="" if probe == "knn" else "//", edgecolor="0.2", linewidth=0.5)
                ax.set_xticks(range(len(models)), [model_label(m) for m in models])
                ax.set_ylabel("Cityscapes mIoU")
                ax.set_title("bars: " + ", ".join(f"{PROBE_LABELS[p]} tiled | full" for p in probes))
        from matplotlib.lines import Line2D

        handles = model_handles(model_order(data["model"])) + [
            Line2D([], [], color="0.3", linestyle=style_, label=f"{mode} (tracking)" if mode else "")
            for mode, style_ in MODE_LINESTYLES.items()]
        axes[-1].legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5))
        set_title(fig, "Fig. 12 — tiled vs whole frames (interpolated position embeddings)", subtitle)
    return fig


def fig12(df: pd.DataFrame, out_pdf: str | Path, out_png: str | Path, out_csv: str | Path, *,
          demo: bool | None = None) -> pd.DataFrame:
    """Write Fig. 12 and its CSV; return the plotted numbers."""
    data = fig12_data(df)
    return write_figure(draw_fig12(data, _subtitle(data)), data, out_pdf, out_png, out_csv, *demo_flag(data, demo))


def table5_data(df: pd.DataFrame) -> pd.DataFrame:
    """One row per model: Cityscapes k-NN / linear mIoU and same-instance accuracy (smallest Δ, mean over Δ).

    Each number tiled and full; a model without a part has ``NaN`` there.
    """
    tracking, city = full_vs_tile_data(df, "table5")
    columns: dict[str, pd.Series] = {}
    if not city.empty:
        for (probe, mode), group in city.groupby(["probe", "mode"]):
            columns[f"cityscapes_{probe}_{mode}"] = group.set_index("model")["value"]
    if not tracking.empty:
        first = int(tracking["gap"].min())
        for mode, group in tracking.groupby("mode"):
            columns[f"tracking_delta{first}_{mode}"] = group[group["gap"] == first].set_index("model")["value"]
            columns[f"tracking_mean_{mode}"] = group.groupby("model")["value"].mean()
    wide = pd.DataFrame(columns)
    order = sorted(wide.columns, key=lambda c: (c.rsplit("_", 1)[0], c.endswith("_full")))
    wide = wide[order].reindex(model_order(wide.index))
    wide.index.name = "model"
    wide = wide.reset_index()
    wide.insert(1, "label", wide["model"].map(model_label))
    sources = pd.concat([p for p in (tracking, city) if not p.empty], ignore_index=True)
    return with_provenance(wide, sources)


def _header(column: str) -> str:
    """``cityscapes_knn_tiled`` -> ``Cityscapes k-NN tiled``; ``tracking_delta1_full`` -> ``track Δ=1 full``."""
    part, *rest = column.split("_")
    mode = rest[-1]
    if part == "cityscapes":
        return f"Cityscapes {PROBE_LABELS.get(rest[0], rest[0])} {mode}"
    what = rest[0].replace("delta", "Δ=") if rest[0].startswith("delta") else "mean over Δ"
    return f"tracking {what} {mode}"


def table5(df: pd.DataFrame, out_csv: str | Path, out_tex: str | Path, *, demo: bool | None = None) -> pd.DataFrame:
    """Write Table 5 (CSV + LaTeX); return it."""
    data = table5_data(df)
    is_demo, subject = demo_flag(data, demo)
    numbers = [c for c in data.columns if c not in ("model", "label", *PROVENANCE_COLUMNS)]
    caption = ("Tiled (3x5 tiles of 224 px; Cityscapes 4x8) vs whole frames with interpolated position "
               "embeddings: Cityscapes val mIoU and BDD100K same-instance tracking accuracy "
               f"({_subtitle(data)}).")
    write_table(data, out_csv, out_tex, caption, "tab:table5", columns={"label": "Model", **{c: _header(c) for c in numbers}},
                size="footnotesize", demo=is_demo, demo_subject=subject)
    return data
