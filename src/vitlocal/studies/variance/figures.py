"""Figures and tables of the feature-variance study: Fig 4a-c, the top-m overlap, Table 6.

Writers follow ``vitlocal.plotting.figure_helpers``: ``<id>_data`` (the
numbers), ``draw_<id>`` (the Figure), ``<id>`` (writes both, returns the numbers).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ...plotting.figure_helpers import (
    PROBES,
    PROVENANCE_COLUMNS,
    check_single_layer,
    check_unique,
    demo_flag,
    model_handles,
    parse_int_level,
    set_title,
    sort_models,
    tidy_rows,
    with_provenance,
    write_figure,
)
from ...plotting.base import (
    PROBE_LABELS,
    PROBE_LINESTYLES,
    PROBE_MARKERS,
    model_colour,
    model_label,
    model_order,
    new_figure,
    provenance_subtitle,
    require_rows,
    save_figure,
    style,
)
from ...plotting.tables import write_table

#: Table 6 inputs in the paper's order (levels ``full``, ``without_top<m>``, ``only_top<m>``, ``random<m>``).
R2_INPUTS: dict[str, str] = {"full": "full", "without_top": "without top-{m}", "only_top": "only top-{m}",
                             "random": "random {m}"}
OVERLAP_DATASETS = ("cityscapes", "ade20k", "fair1m")

# --- Fig. 4a-c: feature variance and its removal ---------------------------------------


def fig4a_data(df: pd.DataFrame, dataset: str = "cityscapes") -> pd.DataFrame:
    """Per-dimension variance per model, sorted descending; ``rank`` 0 = largest.

    The rank is recomputed from the values, so rows may carry it in ``level``
    or not at all.
    """
    rows = require_rows(tidy_rows(df, "fig4a"), "fig4a", experiment="feature_variance", dataset=dataset,
                        metric="variance")
    check_single_layer(rows, "fig4a")
    data = rows[["model", "value"]].sort_values(["model", "value"], ascending=[True, False], kind="stable")
    data["rank"] = data.groupby("model").cumcount()
    data = sort_models(data, "rank")
    return with_provenance(data[["model", "rank", "value"]], rows)


def draw_fig4a(data: pd.DataFrame, subtitle: str = "") -> Figure:
    with style():
        fig = new_figure(5.0, 3.5)
        ax = fig.add_subplot()
        for model, series in data.groupby("model", sort=False):
            ax.plot(series["rank"], series["value"], color=model_colour(model), label=model_label(model))
        ax.set_yscale("log")
        ax.set_xlabel("feature dimension, rank by variance (0 = largest)")
        ax.set_ylabel("variance over train patches")
        ax.legend()
        set_title(fig, "Fig. 4a — per-dimension feature variance (Cityscapes train)", subtitle)
    return fig


def fig4a(df: pd.DataFrame, out_pdf: str | Path, out_png: str | Path, out_csv: str | Path, *,
          demo: bool | None = None) -> pd.DataFrame:
    """Write Fig. 4a (PDF, PNG) and its CSV; return the plotted numbers."""
    data = fig4a_data(df)
    return write_figure(draw_fig4a(data, provenance_subtitle(data)), data, out_pdf, out_png, out_csv,
                         *demo_flag(data, demo))


def _removal_rows(df: pd.DataFrame, what: str, dataset: str, models: Sequence[str] | None = None) -> pd.DataFrame:
    equal: dict[str, str | Sequence[str]] = {"experiment": "variance_removal", "dataset": dataset,
                                             "metric": "miou", "probe": PROBES}
    if models is not None:
        equal["model"] = models
    rows = require_rows(tidy_rows(df, what), what, **equal)
    check_unique(rows, ("model", "probe", "level"), what)
    check_single_layer(rows, what)
    return rows.assign(m=[parse_int_level(lv, "m=", what) for lv in rows["level"]])


def fig4b_data(df: pd.DataFrame, model: str = "mae", dataset: str = "cityscapes") -> pd.DataFrame:
    """k-NN and linear mIoU of ``model`` after removing its top-m variance dimensions, per m."""
    rows = _removal_rows(df, "fig4b", dataset, [model])
    data = rows[["model", "probe", "m", "value"]].sort_values(["probe", "m"], kind="stable")
    steps = sorted(set(data["m"]))
    data["x"] = data["m"].map({m: i for i, m in enumerate(steps)})
    return with_provenance(data, rows)


def draw_fig4b(data: pd.DataFrame, subtitle: str = "") -> Figure:
    model = data["model"].iloc[0]
    with style():
        fig = new_figure(5.0, 3.4)
        ax = fig.add_subplot()
        for probe, series in data.groupby("probe", sort=False):
            ax.plot(series["x"], series["value"], color=model_colour(model), linestyle=PROBE_LINESTYLES[probe],
                    marker=PROBE_MARKERS[probe], label=PROBE_LABELS[probe])
        ticks = data.drop_duplicates("x").sort_values("x")
        ax.set_xticks(ticks["x"], ticks["m"].astype(str))
        ax.set_xlabel("m = top-variance dimensions removed (categorical axis)")
        ax.set_ylabel("mIoU (19 classes)")
        ax.legend()
        set_title(fig, f"Fig. 4b — {model_label(model)} without its top-m variance dimensions", subtitle)
    return fig


def fig4b(df: pd.DataFrame, out_pdf: str | Path, out_png: str | Path, out_csv: str | Path, *,
          demo: bool | None = None, model: str = "mae") -> pd.DataFrame:
    """Write Fig. 4b (PDF, PNG) and its CSV; return the plotted numbers."""
    data = fig4b_data(df, model)
    return write_figure(draw_fig4b(data, provenance_subtitle(data)), data, out_pdf, out_png, out_csv,
                         *demo_flag(data, demo))


def fig4c_data(df: pd.DataFrame, dataset: str = "cityscapes") -> pd.DataFrame:
    """(k-NN, linear) mIoU pairs per model as m grows, plus each model's BatchNorm-standardised point.

    ``kind`` is ``variance_removal`` (one row per m, m = 0 = raw features) or
    ``bn_standardized``; the latter's linear value is its own linear row when
    present, else the model's m = 0 linear value (the probe already
    standardises), which ``linear_from`` records.
    """
    rows = _removal_rows(df, "fig4c", dataset)
    trajectories = rows.pivot(index=["model", "m"], columns="probe", values="value")
    trajectories = trajectories.reindex(columns=list(PROBES)).reset_index()
    trajectories = trajectories.assign(kind="variance_removal", linear_from="variance_removal")
    parts = [trajectories]
    tidy = tidy_rows(df, "fig4c")
    bn = tidy[(tidy["experiment"] == "bn_standardized") & (tidy["dataset"] == dataset)
              & (tidy["metric"] == "miou") & tidy["probe"].isin(PROBES)]
    if not bn[bn["probe"] == "knn"].empty:
        check_unique(bn, ("model", "probe"), "fig4c (bn_standardized)")
        points = bn.pivot(index="model", columns="probe", values="value").reindex(columns=list(PROBES))
        points = points[points["knn"].notna()].reset_index()
        raw_linear = trajectories[trajectories["m"] == 0].set_index("model")["linear"]
        own = points["linear"].notna()
        points["linear_from"] = np.where(own, "bn_standardized", "variance_removal m=0")
        if (~own).any():
            points.loc[~own, "linear"] = points.loc[~own, "model"].map(raw_linear).astype(float)
        parts.append(points.assign(kind="bn_standardized", m=pd.NA))
        rows = pd.concat([rows, bn], ignore_index=True)
    data = pd.concat(parts, ignore_index=True)
    data["m"] = data["m"].astype("Int64")
    data.columns.name = None
    data = sort_models(data, "kind", "m")
    return with_provenance(data[["model", "kind", "m", "knn", "linear", "linear_from"]], rows)


def draw_fig4c(data: pd.DataFrame, subtitle: str = "") -> Figure:
    from matplotlib.lines import Line2D

    with style():
        fig = new_figure(5.6, 4.4)
        ax = fig.add_subplot()
        models = model_order(data["model"])
        for model in models:
            colour = model_colour(model)
            path = data[(data["model"] == model) & (data["kind"] == "variance_removal")].dropna(subset=["knn", "linear"])
            path = path.sort_values("m")
            ax.plot(path["knn"], path["linear"], color=colour, marker=".", linewidth=1.0)
            for (x0, y0), (x1, y1) in zip(path[["knn", "linear"]].values[:-1], path[["knn", "linear"]].values[1:]):
                ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                            arrowprops={"arrowstyle": "->", "color": colour, "lw": 1.0})
            start = path[path["m"] == 0]
            ax.plot(start["knn"], start["linear"], color=colour, marker="o", markersize=7, markerfacecolor="white",
                    linestyle="none")
            if not path.empty:
                last = path.iloc[-1]
                ax.annotate(f"m={int(last['m'])}", (last["knn"], last["linear"]), fontsize=7, color=colour,
                            xytext=(3, 3), textcoords="offset points")
            bn = data[(data["model"] == model) & (data["kind"] == "bn_standardized")]
            ax.plot(bn["knn"], bn["linear"], color=colour, marker="*", markersize=11, linestyle="none")
        low = float(np.nanmin(data[["knn", "linear"]].to_numpy(dtype=float)))
        high = float(np.nanmax(data[["knn", "linear"]].to_numpy(dtype=float)))
        ax.plot([low, high], [low, high], color="0.7", linewidth=0.8, linestyle=":", zorder=0)
        ax.set_xlabel("k-NN mIoU")
        ax.set_ylabel("linear-probe mIoU")
        markers = [
            Line2D([], [], color="0.3", marker="o", markerfacecolor="white", linestyle="none", label="m = 0 (raw)"),
            Line2D([], [], color="0.3", marker=".", label="m grows (arrows)"),
            Line2D([], [], color="0.3", marker="*", markersize=10, linestyle="none", label="k-NN on BN-standardised"),
        ]
        ax.legend(handles=model_handles(models) + markers, loc="center left", bbox_to_anchor=(1.0, 0.5))
        set_title(fig, "Fig. 4c — k-NN vs linear as top-variance dimensions are removed", subtitle)
    return fig


def fig4c(df: pd.DataFrame, out_pdf: str | Path, out_png: str | Path, out_csv: str | Path, *,
          demo: bool | None = None) -> pd.DataFrame:
    """Write Fig. 4c (PDF, PNG) and its CSV; return the plotted numbers."""
    data = fig4c_data(df)
    return write_figure(draw_fig4c(data, provenance_subtitle(data.assign(probe="knn"))), data,
                         out_pdf, out_png, out_csv, *demo_flag(data, demo))


# --- top-200 overlap across datasets ------------------------------------------------------


def overlap_data(df: pd.DataFrame) -> pd.DataFrame:
    """Counts comparing top-m variance dimensions between datasets ``"A vs B"``, per model and metric."""
    rows = require_rows(tidy_rows(df, "top_dims_overlap"), "top_dims_overlap", experiment="feature_variance_overlap")
    check_unique(rows, ("model", "dataset", "level", "metric"), "top_dims_overlap")
    pairs = rows["dataset"].str.extract(r"^\s*(?P<dataset_a>\S+)\s+vs\s+(?P<dataset_b>\S+)\s*$")
    bad = rows.loc[pairs["dataset_a"].isna(), "dataset"]
    if not bad.empty:
        raise ValueError(f"top_dims_overlap: dataset {bad.iloc[0]!r} is not '<dataset> vs <dataset>'")
    data = pd.concat([rows[["model", "level", "metric"]], pairs, rows[["value"]]], axis=1)
    rank = {d: i for i, d in enumerate(_dataset_order(data))}
    data = data.assign(_a=data["dataset_a"].map(rank), _b=data["dataset_b"].map(rank))
    data = sort_models(data, "metric", "_a", "_b").drop(columns=["_a", "_b"])
    return with_provenance(data[["model", "level", "dataset_a", "dataset_b", "metric", "value"]], rows)


def _dataset_order(data: pd.DataFrame) -> list[str]:
    names = set(data["dataset_a"]) | set(data["dataset_b"])
    return [d for d in OVERLAP_DATASETS if d in names] + sorted(names - set(OVERLAP_DATASETS))


def draw_overlap(data: pd.DataFrame, subtitle: str = "") -> Figure:
    """One heatmap per (model, metric); ``count_shared`` is symmetric and fills both triangles."""
    datasets = _dataset_order(data)
    index = {d: i for i, d in enumerate(datasets)}
    panels = list(data.groupby(["model", "metric", "level"], sort=False))
    with style():
        fig = new_figure(2.6 * len(panels) + 0.6, 2.9)
        axes = np.atleast_1d(fig.subplots(1, len(panels)))
        for ax, ((model, metric, level), panel) in zip(axes, panels):
            matrix = np.full((len(datasets), len(datasets)), np.nan)
            for a, b, value in panel[["dataset_a", "dataset_b", "value"]].itertuples(index=False):
                matrix[index[a], index[b]] = value
                if metric == "count_shared":
                    matrix[index[b], index[a]] = value
            ax.imshow(matrix, cmap="Blues", vmin=0)
            ax.grid(False)
            for (i, j), value in np.ndenumerate(matrix):
                if not np.isnan(value):
                    ax.text(j, i, f"{value:g}", ha="center", va="center", fontsize=8)
            ax.set_xticks(range(len(datasets)), datasets, rotation=30)
            ax.set_yticks(range(len(datasets)), datasets)
            ax.set_title(f"{model_label(model)}: {metric} ({level})")
        set_title(fig, "Top variance dimensions shared across datasets", subtitle)
    return fig


def top_dims_overlap(
    df: pd.DataFrame, out_csv: str | Path, out_tex: str | Path, out_pdf: str | Path, out_png: str | Path, *,
    demo: bool | None = None,
) -> pd.DataFrame:
    """Write the overlap table (CSV + LaTeX, one row per dataset pair) and its heatmap; return the rows."""
    data = overlap_data(df)
    is_demo, subject = demo_flag(data, demo)
    keys = ["model", "level", "dataset_a", "dataset_b"]
    wide = data.pivot(index=keys, columns="metric", values="value").reset_index()
    wide.columns.name = None
    wide = data[keys].drop_duplicates().merge(wide, on=keys, how="left")  # keep overlap_data's order
    wide.insert(1, "label", wide["model"].map(model_label))
    metrics = [c for c in wide.columns if c not in ("model", "label", "level", "dataset_a", "dataset_b")]
    columns = {"label": "Model", "level": "top dims", "dataset_a": "dataset A", "dataset_b": "dataset B",
               **{m: m.replace("_", " ") for m in metrics}}
    caption = f"Top variance dimensions compared across datasets ({provenance_subtitle(data)})."
    write_table(wide, out_csv, out_tex, caption, "tab:top_dims_overlap", float_format=".0f", columns=columns,
                demo=is_demo, demo_subject=subject)
    save_figure(draw_overlap(data, provenance_subtitle(data)), out_pdf, out_png, demo=is_demo, demo_subject=subject)
    return data


# --- Table 6: R² ---------------------------------------------------------------------------


def _r2_input(level: str) -> tuple[int, str]:
    """``"without_top200"`` -> (1, ``"without top-200"``): order in the table and column header."""
    found = re.fullmatch(r"(full|without_top|only_top|random)(\d*)", level)
    if found is None or (found.group(1) == "full") != (found.group(2) == ""):
        raise ValueError(f"table6: level {level!r} is not full, without_top<m>, only_top<m> or random<m>")
    kind, m = found.groups()
    return list(R2_INPUTS).index(kind), R2_INPUTS[kind].format(m=m)


def table6_data(df: pd.DataFrame) -> pd.DataFrame:
    """One row per model: ridge R² (class ``mean``) with full / without top-m / only top-m / random m inputs."""
    rows = require_rows(tidy_rows(df, "table6"), "table6", experiment="r2", metric="r2", **{"class": "mean"})
    check_unique(rows, ("model", "level"), "table6")
    check_single_layer(rows, "table6")
    levels = sorted(set(rows["level"]), key=lambda lv: (_r2_input(lv)[0], lv))
    wide = rows.pivot(index="model", columns="level", values="value").reindex(columns=levels)
    wide = wide.reindex(model_order(wide.index)).reset_index()
    wide.columns.name = None
    wide.insert(1, "label", wide["model"].map(model_label))
    return with_provenance(wide, rows)


def table6(df: pd.DataFrame, out_csv: str | Path, out_tex: str | Path, *, demo: bool | None = None) -> pd.DataFrame:
    """Write Table 6 (CSV + LaTeX); return it."""
    data = table6_data(df)
    is_demo, subject = demo_flag(data, demo)
    levels = [c for c in data.columns if c not in ("model", "label", *PROVENANCE_COLUMNS)]
    columns = {"label": "Model", **{lv: _r2_input(lv)[1] for lv in levels}}
    caption = (f"Ridge-regression R^2 of the 3 most common classes' pixel fractions from the central patch "
               f"({provenance_subtitle(data)}).")
    write_table(data, out_csv, out_tex, caption, "tab:table6", columns=columns, demo=is_demo, demo_subject=subject)
    return data
