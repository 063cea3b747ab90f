"""Figures and tables of sections 3-4, drawn from tidy result rows.

Input: the tidy rows experiments write (``vitlocal.reproduction.TIDY_COLUMNS``:
experiment, dataset, model, probe, layer, level, class, metric, value +
provenance preset, weights, knn_metric, patch_labels, data), possibly of
several experiments concatenated. Each output has three functions:

- ``<id>_data(df)``: the numbers it shows, as a tidy frame (pure);
- ``draw_<id>(data, subtitle)``: the matplotlib Figure (pure);
- ``<id>(df, out_pdf, out_png, out_csv)``: writes the figure and the CSV of
  exactly the numbers plotted, returns them.

Demo outputs are recognised from the provenance (``data`` not "official" or
``weights`` containing "random") unless ``demo`` is given, and carry a banner.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..datasets.cityscapes import CLASSES as CITYSCAPES_CLASSES
from .plotting import (
    PROBE_LABELS,
    PROBE_LINESTYLES,
    PROBE_MARKERS,
    demo_subject_of,
    model_colour,
    model_label,
    model_order,
    new_figure,
    provenance_subtitle,
    require_rows,
    save_figure,
    style,
    write_csv,
)
from .tables import write_latex, write_table

#: Train sets of Fig. 1 (config names) and their axis labels (images per city).
TRAIN_SET_LABELS: dict[str, str] = {"set2": "2", "set4": "4", "set4_prime": "4'", "set8": "8"}

#: Fig. 3 panels: experiment -> (variant kind of its levels, x-axis label, tick label format).
DEGRADATIONS: dict[str, tuple[str, str, str]] = {
    "degradation_blur": ("blur", "box blur kernel (px)", "{:g}"),
    "degradation_noise": ("noise", "Gaussian noise σ (0-255)", "{:g}"),
    "degradation_freq": ("freqnoise", "frequency-noise band (1 = highest)", "{:g}"),
}
CLEAN = "clean"

#: Table 6 inputs in the paper's order (levels ``full``, ``without_top<m>``, ``only_top<m>``, ``random<m>``).
R2_INPUTS: dict[str, str] = {"full": "full", "without_top": "without top-{m}", "only_top": "only top-{m}",
                             "random": "random {m}"}
OVERLAP_DATASETS = ("cityscapes", "ade20k", "fair1m")
_PROBES = ("knn", "linear")
_PROVENANCE = ("preset", "knn_metric", "weights", "data")


# --- shared helpers -----------------------------------------------------------


def _tidy(df: pd.DataFrame, what: str) -> pd.DataFrame:
    """Copy with text keys as str ("" for missing) and numeric values; errors name the figure."""
    needed = ("experiment", "dataset", "model", "probe", "layer", "level", "class", "metric", "value")
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: tidy results lack column(s) {', '.join(missing)}")
    out = df.copy()
    for column in ("experiment", "dataset", "model", "probe", "level", "class", "metric", *_PROVENANCE):
        if column in out.columns:
            out[column] = out[column].astype(object).where(out[column].notna(), "").astype(str)
    out["layer"] = out["layer"].astype(object).where(out["layer"].notna(), "").astype(str)
    try:
        out["value"] = pd.to_numeric(out["value"], errors="raise").astype(float)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what}: non-numeric value in column 'value' ({error})") from None
    return out


def _check_unique(rows: pd.DataFrame, keys: Sequence[str], what: str) -> None:
    duplicated = rows.duplicated(list(keys), keep=False)
    if duplicated.any():
        first = rows.loc[duplicated, list(keys)].iloc[0].to_dict()
        raise ValueError(
            f"{what}: {int(duplicated.sum())} rows share their key {tuple(keys)}, e.g. {first}; "
            "pass one run (one layer / one train set) per model"
        )


def _single_layer(rows: pd.DataFrame, what: str) -> None:
    layers = rows.groupby("model")["layer"].nunique()
    mixed = layers[layers > 1]
    if not mixed.empty:
        model = mixed.index[0]
        found = sorted(set(rows.loc[rows["model"] == model, "layer"]))
        raise ValueError(f"{what}: model {model!r} has rows of several layers {found}; pass one layer per model")


def _with_provenance(data: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """Add the (joined) provenance of the source rows so a figure CSV says where its numbers come from."""
    data = data.copy()
    for column in _PROVENANCE:
        if column in rows.columns:
            data[column] = ";".join(sorted({v for v in rows[column] if v}))
    return data.reset_index(drop=True)


def _demo(rows: pd.DataFrame, demo: bool | None) -> tuple[bool, str | None]:
    subject = demo_subject_of(rows)
    return (subject is not None if demo is None else demo), subject


def _parse_int_level(level: str, prefix: str, what: str) -> int:
    """``"m=200"`` or ``"200"`` (prefix ``"m="``) -> 200."""
    found = re.fullmatch(rf"(?:{re.escape(prefix)})?(\d+)", level)
    if found is None:
        raise ValueError(f"{what}: level {level!r} is not '{prefix}<int>' or '<int>'")
    return int(found.group(1))


def _write_figure(
    fig: Figure, data: pd.DataFrame, out_pdf: str | Path, out_png: str | Path, out_csv: str | Path,
    demo: bool, subject: str | None,
) -> pd.DataFrame:
    save_figure(fig, out_pdf, out_png, demo=demo, demo_subject=subject)
    write_csv(data, out_csv)
    return data


def _title(fig: Figure, title: str, subtitle: str) -> None:
    fig.suptitle(f"{title}\n{subtitle}" if subtitle else title)


def _model_handles(models: Sequence[str]) -> list:
    from matplotlib.lines import Line2D

    return [Line2D([], [], color=model_colour(m), label=model_label(m)) for m in models]


def _probe_handles() -> list:
    from matplotlib.lines import Line2D

    return [Line2D([], [], color="0.3", linestyle=PROBE_LINESTYLES[p], marker=PROBE_MARKERS[p],
                   label=PROBE_LABELS[p]) for p in _PROBES]


def _sort_models(data: pd.DataFrame, *columns: str) -> pd.DataFrame:
    order = {m: i for i, m in enumerate(model_order(data["model"]))}
    return data.assign(_m=data["model"].map(order)).sort_values(["_m", *columns], kind="stable").drop(columns="_m")


# --- Fig. 1: train-set size -------------------------------------------------------


def fig1_data(df: pd.DataFrame, dataset: str = "cityscapes") -> pd.DataFrame:
    """k-NN and linear mIoU per model and train set (``set2`` ... ``set8``, labelled 2, 4, 4', 8)."""
    rows = require_rows(_tidy(df, "fig1"), "fig1", experiment="train_size", dataset=dataset,
                        metric="miou", probe=_PROBES)
    _check_unique(rows, ("model", "probe", "level"), "fig1")
    _single_layer(rows, "fig1")
    known = list(TRAIN_SET_LABELS)
    sets = sorted(set(rows["level"]), key=lambda s: (known.index(s) if s in known else len(known), s))
    data = rows[["model", "probe", "level", "value"]].copy()
    data["train_set"] = data["level"].map(lambda s: TRAIN_SET_LABELS.get(s, s))
    data["x"] = data["level"].map({s: i for i, s in enumerate(sets)})
    data = _sort_models(data, "probe", "x")
    return _with_provenance(data[["model", "probe", "level", "train_set", "x", "value"]], rows)


def draw_fig1(data: pd.DataFrame, subtitle: str = "") -> Figure:
    with style():
        fig = new_figure(5.2, 3.6)
        ax = fig.add_subplot()
        for (model, probe), series in data.groupby(["model", "probe"], sort=False):
            series = series.sort_values("x")
            ax.plot(series["x"], series["value"], color=model_colour(model), linestyle=PROBE_LINESTYLES[probe],
                    marker=PROBE_MARKERS[probe])
        ticks = data.drop_duplicates("x").sort_values("x")
        ax.set_xticks(ticks["x"], ticks["train_set"])
        ax.set_xlabel("training images per city")
        ax.set_ylabel("mIoU (19 classes)")
        models = model_order(data["model"])
        ax.legend(handles=_model_handles(models) + _probe_handles(), loc="center left", bbox_to_anchor=(1.0, 0.5))
        _title(fig, "Fig. 1 — k-NN vs linear probe by train-set size (Cityscapes val)", subtitle)
    return fig


def fig1(df: pd.DataFrame, out_pdf: str | Path, out_png: str | Path, out_csv: str | Path, *,
         demo: bool | None = None) -> pd.DataFrame:
    """Write Fig. 1 (PDF, PNG) and its CSV; return the plotted numbers."""
    data = fig1_data(df)
    return _write_figure(draw_fig1(data, provenance_subtitle(data)), data, out_pdf, out_png, out_csv,
                         *_demo(data, demo))


# --- Fig. 2: layers ---------------------------------------------------------------------


def fig2_data(df: pd.DataFrame, dataset: str = "cityscapes") -> pd.DataFrame:
    """k-NN mIoU per model and layer over all / easy / hard classes, from per-class IoU rows.

    The group means are ``probing.class_group_miou`` (NaN IoUs and missing
    classes left out; ``n_classes`` says how many were averaged).
    """
    # Imported here: probing pulls in torch, which no other figure needs.
    from .probing import CLASS_GROUPS, class_group_miou, group_classes

    rows = require_rows(_tidy(df, "fig2"), "fig2", experiment="layerwise", dataset=dataset, metric="iou", probe="knn")
    unknown = sorted(set(rows["class"]) - set(CITYSCAPES_CLASSES))
    if unknown:
        raise ValueError(f"fig2: classes {unknown} are not Cityscapes trainId classes {list(CITYSCAPES_CLASSES)}")
    _check_unique(rows, ("model", "layer", "class"), "fig2")
    try:
        rows = rows.assign(layer=rows["layer"].astype(int))
    except ValueError:
        raise ValueError(f"fig2: layerwise rows need an integer layer, got {sorted(set(rows['layer']))}") from None
    parts = [
        class_group_miou(rows, group).assign(group_size=len(group_classes(group, CITYSCAPES_CLASSES)))
        for group in CLASS_GROUPS
    ]
    data = pd.concat(parts, ignore_index=True).rename(columns={"class": "group"})
    data = _sort_models(data, "layer")
    data["group"] = pd.Categorical(data["group"], categories=list(CLASS_GROUPS))
    data = data.sort_values("group", kind="stable").assign(group=lambda d: d["group"].astype(str))
    return _with_provenance(data[["group", "model", "probe", "layer", "value", "n_classes", "group_size"]], rows)


def draw_fig2(data: pd.DataFrame, subtitle: str = "") -> Figure:
    with style():
        fig = new_figure(9.0, 3.2)
        groups = list(dict.fromkeys(data["group"]))
        axes = np.atleast_1d(fig.subplots(1, len(groups), sharey=True))
        for ax, group in zip(axes, groups):
            panel = data[data["group"] == group]
            for model, series in panel.groupby("model", sort=False):
                series = series.sort_values("layer")
                ax.plot(series["layer"], series["value"], color=model_colour(model), marker="o")
            ax.set_title(f"{group} classes ({panel['group_size'].iloc[0]})")
            ax.set_xlabel("layer")
            layers = sorted(data["layer"].unique())
            ax.set_xticks(layers)
        axes[0].set_ylabel("k-NN mIoU")
        axes[-1].legend(handles=_model_handles(model_order(data["model"])), loc="center left",
                        bbox_to_anchor=(1.0, 0.5))
        _title(fig, "Fig. 2 — k-NN mIoU by layer (Cityscapes val)", subtitle)
    return fig


def fig2(df: pd.DataFrame, out_pdf: str | Path, out_png: str | Path, out_csv: str | Path, *,
         demo: bool | None = None) -> pd.DataFrame:
    """Write Fig. 2 (PDF, PNG) and its CSV; return the plotted numbers."""
    data = fig2_data(df)
    return _write_figure(draw_fig2(data, provenance_subtitle(data)), data, out_pdf, out_png, out_csv,
                         *_demo(data, demo))


# --- Fig. 3: degradations --------------------------------------------------------------


def _degradation_level(level: str, kind: str, what: str) -> float:
    found = re.fullmatch(rf"{kind}-(\d+(?:\.\d+)?)", level)
    if found is None:
        raise ValueError(f"{what}: level {level!r} is not '{kind}-<level>'")
    return float(found.group(1))


def fig3_data(df: pd.DataFrame, dataset: str = "cityscapes", clean_train_set: str = "set4") -> pd.DataFrame:
    """mIoU per degradation kind, level, model and probe; the clean point first.

    The clean reference is a degradation row of level ``<kind>-0`` (as
    ``probing.degradation_rows`` writes) or ``clean`` if there is one, else the
    ``train_size`` row of ``clean_train_set`` (same train set, undegraded val);
    without either the curves start at the first level.
    """
    tidy = _tidy(df, "fig3")
    rows = require_rows(tidy, "fig3", experiment=list(DEGRADATIONS), dataset=dataset, metric="miou", probe=_PROBES)
    is_clean = rows["level"].str.fullmatch(r"clean|[a-z]+-0(\.0*)?")
    clean, degraded = rows[is_clean], rows[~is_clean]
    _check_unique(rows, ("experiment", "model", "probe", "level"), "fig3")
    _single_layer(degraded, "fig3")
    parts, used = [], []
    for experiment, (kind, _, tick) in DEGRADATIONS.items():
        panel = degraded[degraded["experiment"] == experiment]
        if panel.empty:
            continue
        panel = panel.assign(
            source=experiment,
            level_value=[_degradation_level(lv, kind, "fig3") for lv in panel["level"]],
        )
        reference = clean[clean["experiment"] == experiment].assign(level=CLEAN, source=experiment)
        if reference.empty:
            train = tidy[(tidy["experiment"] == "train_size") & (tidy["level"] == clean_train_set)
                         & (tidy["dataset"] == dataset) & (tidy["metric"] == "miou")
                         & tidy["probe"].isin(_PROBES) & tidy["model"].isin(set(panel["model"]))]
            _check_unique(train, ("model", "probe"), "fig3 clean reference (train_size)")
            reference = train.assign(level=CLEAN, source=f"train_size {clean_train_set}")
        reference = reference.assign(level_value=np.nan)
        both = pd.concat([reference, panel], ignore_index=True)
        used.append(both)
        steps = sorted(set(panel["level_value"]))
        both["x"] = both["level_value"].map({v: i + 1 for i, v in enumerate(steps)}).fillna(0).astype(int)
        both["x_label"] = [CLEAN if lv == CLEAN else tick.format(v) for lv, v in zip(both["level"], both["level_value"])]
        both["panel"] = kind
        parts.append(both)
    data = pd.concat(parts, ignore_index=True)
    data = _sort_models(data, "panel", "probe", "x")
    data["panel"] = pd.Categorical(data["panel"], categories=[k for k, _, _ in DEGRADATIONS.values()])
    data = data.sort_values("panel", kind="stable").assign(panel=lambda d: d["panel"].astype(str))
    columns = ["panel", "model", "probe", "level", "x", "x_label", "value", "source"]
    return _with_provenance(data[columns], pd.concat(used, ignore_index=True))


def draw_fig3(data: pd.DataFrame, subtitle: str = "") -> Figure:
    panels = list(dict.fromkeys(data["panel"]))
    axis_labels = {kind: label for kind, label, _ in DEGRADATIONS.values()}
    with style():
        fig = new_figure(3.2 * len(panels) + 1.4, 3.3)
        axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
        for ax, kind in zip(axes, panels):
            panel = data[data["panel"] == kind]
            for (model, probe), series in panel.groupby(["model", "probe"], sort=False):
                series = series.sort_values("x")
                ax.plot(series["x"], series["value"], color=model_colour(model), linestyle=PROBE_LINESTYLES[probe],
                        marker=PROBE_MARKERS[probe])
            ticks = panel.drop_duplicates("x").sort_values("x")
            ax.set_xticks(ticks["x"], ticks["x_label"])
            ax.set_xlabel(axis_labels[kind])
        axes[0].set_ylabel("mIoU (19 classes)")
        axes[-1].legend(handles=_model_handles(model_order(data["model"])) + _probe_handles(),
                        loc="center left", bbox_to_anchor=(1.0, 0.5))
        _title(fig, "Fig. 3 — robustness to image degradations (Cityscapes val degraded, train clean)", subtitle)
    return fig


def fig3(df: pd.DataFrame, out_pdf: str | Path, out_png: str | Path, out_csv: str | Path, *,
         demo: bool | None = None, clean_train_set: str = "set4") -> pd.DataFrame:
    """Write Fig. 3 (PDF, PNG) and its CSV; return the plotted numbers."""
    data = fig3_data(df, clean_train_set=clean_train_set)
    return _write_figure(draw_fig3(data, provenance_subtitle(data)), data, out_pdf, out_png, out_csv,
                         *_demo(data, demo))


# --- Table 2: ADE20K -----------------------------------------------------------------


def table2_data(df: pd.DataFrame, dataset: str = "ade20k") -> pd.DataFrame:
    """One row per model: k-NN and linear mIoU on ADE20K."""
    rows = require_rows(_tidy(df, "table2"), "table2", dataset=dataset, metric="miou", probe=_PROBES)
    _check_unique(rows, ("model", "probe"), "table2")
    _single_layer(rows, "table2")
    wide = rows.pivot(index="model", columns="probe", values="value").reindex(columns=list(_PROBES))
    wide = wide.reindex(model_order(wide.index)).reset_index()
    wide.insert(1, "label", wide["model"].map(model_label))
    wide.columns.name = None
    return _with_provenance(wide, rows)


def table2(df: pd.DataFrame, out_csv: str | Path, out_tex: str | Path, *, demo: bool | None = None) -> pd.DataFrame:
    """Write Table 2 (CSV + LaTeX); return it."""
    data = table2_data(df)
    is_demo, subject = _demo(data, demo)
    caption = f"ADE20K k-NN and linear-probe mIoU per model ({provenance_subtitle(data.assign(probe='knn'))})."
    write_table(data, out_csv, out_tex, caption, "tab:table2",
                columns={"label": "Model", "knn": "k-NN mIoU", "linear": "linear mIoU"},
                demo=is_demo, demo_subject=subject)
    return data


# --- Fig. 4a-c: feature variance and its removal ---------------------------------------


def fig4a_data(df: pd.DataFrame, dataset: str = "cityscapes") -> pd.DataFrame:
    """Per-dimension variance per model, sorted descending; ``rank`` 0 = largest.

    The rank is recomputed from the values, so rows may carry it in ``level``
    or not at all.
    """
    rows = require_rows(_tidy(df, "fig4a"), "fig4a", experiment="feature_variance", dataset=dataset,
                        metric="variance")
    _single_layer(rows, "fig4a")
    data = rows[["model", "value"]].sort_values(["model", "value"], ascending=[True, False], kind="stable")
    data["rank"] = data.groupby("model").cumcount()
    data = _sort_models(data, "rank")
    return _with_provenance(data[["model", "rank", "value"]], rows)


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
        _title(fig, "Fig. 4a — per-dimension feature variance (Cityscapes train)", subtitle)
    return fig


def fig4a(df: pd.DataFrame, out_pdf: str | Path, out_png: str | Path, out_csv: str | Path, *,
          demo: bool | None = None) -> pd.DataFrame:
    """Write Fig. 4a (PDF, PNG) and its CSV; return the plotted numbers."""
    data = fig4a_data(df)
    return _write_figure(draw_fig4a(data, provenance_subtitle(data)), data, out_pdf, out_png, out_csv,
                         *_demo(data, demo))


def _removal_rows(df: pd.DataFrame, what: str, dataset: str, models: Sequence[str] | None = None) -> pd.DataFrame:
    equal: dict[str, str | Sequence[str]] = {"experiment": "variance_removal", "dataset": dataset,
                                             "metric": "miou", "probe": _PROBES}
    if models is not None:
        equal["model"] = models
    rows = require_rows(_tidy(df, what), what, **equal)
    _check_unique(rows, ("model", "probe", "level"), what)
    _single_layer(rows, what)
    return rows.assign(m=[_parse_int_level(lv, "m=", what) for lv in rows["level"]])


def fig4b_data(df: pd.DataFrame, model: str = "mae", dataset: str = "cityscapes") -> pd.DataFrame:
    """k-NN and linear mIoU of ``model`` after removing its top-m variance dimensions, per m."""
    rows = _removal_rows(df, "fig4b", dataset, [model])
    data = rows[["model", "probe", "m", "value"]].sort_values(["probe", "m"], kind="stable")
    steps = sorted(set(data["m"]))
    data["x"] = data["m"].map({m: i for i, m in enumerate(steps)})
    return _with_provenance(data, rows)


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
        _title(fig, f"Fig. 4b — {model_label(model)} without its top-m variance dimensions", subtitle)
    return fig


def fig4b(df: pd.DataFrame, out_pdf: str | Path, out_png: str | Path, out_csv: str | Path, *,
          demo: bool | None = None, model: str = "mae") -> pd.DataFrame:
    """Write Fig. 4b (PDF, PNG) and its CSV; return the plotted numbers."""
    data = fig4b_data(df, model)
    return _write_figure(draw_fig4b(data, provenance_subtitle(data)), data, out_pdf, out_png, out_csv,
                         *_demo(data, demo))


def fig4c_data(df: pd.DataFrame, dataset: str = "cityscapes") -> pd.DataFrame:
    """(k-NN, linear) mIoU pairs per model as m grows, plus each model's BatchNorm-standardised point.

    ``kind`` is ``variance_removal`` (one row per m, m = 0 = raw features) or
    ``bn_standardized``; the latter's linear value is its own linear row when
    present, else the model's m = 0 linear value (the probe already
    standardises), which ``linear_from`` records.
    """
    rows = _removal_rows(df, "fig4c", dataset)
    trajectories = rows.pivot(index=["model", "m"], columns="probe", values="value")
    trajectories = trajectories.reindex(columns=list(_PROBES)).reset_index()
    trajectories = trajectories.assign(kind="variance_removal", linear_from="variance_removal")
    parts = [trajectories]
    tidy = _tidy(df, "fig4c")
    bn = tidy[(tidy["experiment"] == "bn_standardized") & (tidy["dataset"] == dataset)
              & (tidy["metric"] == "miou") & tidy["probe"].isin(_PROBES)]
    if not bn[bn["probe"] == "knn"].empty:
        _check_unique(bn, ("model", "probe"), "fig4c (bn_standardized)")
        points = bn.pivot(index="model", columns="probe", values="value").reindex(columns=list(_PROBES))
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
    data = _sort_models(data, "kind", "m")
    return _with_provenance(data[["model", "kind", "m", "knn", "linear", "linear_from"]], rows)


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
        ax.legend(handles=_model_handles(models) + markers, loc="center left", bbox_to_anchor=(1.0, 0.5))
        _title(fig, "Fig. 4c — k-NN vs linear as top-variance dimensions are removed", subtitle)
    return fig


def fig4c(df: pd.DataFrame, out_pdf: str | Path, out_png: str | Path, out_csv: str | Path, *,
          demo: bool | None = None) -> pd.DataFrame:
    """Write Fig. 4c (PDF, PNG) and its CSV; return the plotted numbers."""
    data = fig4c_data(df)
    return _write_figure(draw_fig4c(data, provenance_subtitle(data.assign(probe="knn"))), data,
                         out_pdf, out_png, out_csv, *_demo(data, demo))


# --- top-200 overlap across datasets ------------------------------------------------------


def overlap_data(df: pd.DataFrame) -> pd.DataFrame:
    """Counts comparing top-m variance dimensions between datasets ``"A vs B"``, per model and metric."""
    rows = require_rows(_tidy(df, "top_dims_overlap"), "top_dims_overlap", experiment="feature_variance_overlap")
    _check_unique(rows, ("model", "dataset", "level", "metric"), "top_dims_overlap")
    pairs = rows["dataset"].str.extract(r"^\s*(?P<dataset_a>\S+)\s+vs\s+(?P<dataset_b>\S+)\s*$")
    bad = rows.loc[pairs["dataset_a"].isna(), "dataset"]
    if not bad.empty:
        raise ValueError(f"top_dims_overlap: dataset {bad.iloc[0]!r} is not '<dataset> vs <dataset>'")
    data = pd.concat([rows[["model", "level", "metric"]], pairs, rows[["value"]]], axis=1)
    rank = {d: i for i, d in enumerate(_dataset_order(data))}
    data = data.assign(_a=data["dataset_a"].map(rank), _b=data["dataset_b"].map(rank))
    data = _sort_models(data, "metric", "_a", "_b").drop(columns=["_a", "_b"])
    return _with_provenance(data[["model", "level", "dataset_a", "dataset_b", "metric", "value"]], rows)


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
        _title(fig, "Top variance dimensions shared across datasets", subtitle)
    return fig


def top_dims_overlap(
    df: pd.DataFrame, out_csv: str | Path, out_tex: str | Path, out_pdf: str | Path, out_png: str | Path, *,
    demo: bool | None = None,
) -> pd.DataFrame:
    """Write the overlap table (CSV + LaTeX, one row per dataset pair) and its heatmap; return the rows."""
    data = overlap_data(df)
    is_demo, subject = _demo(data, demo)
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
    rows = require_rows(_tidy(df, "table6"), "table6", experiment="r2", metric="r2", **{"class": "mean"})
    _check_unique(rows, ("model", "level"), "table6")
    _single_layer(rows, "table6")
    levels = sorted(set(rows["level"]), key=lambda lv: (_r2_input(lv)[0], lv))
    wide = rows.pivot(index="model", columns="level", values="value").reindex(columns=levels)
    wide = wide.reindex(model_order(wide.index)).reset_index()
    wide.columns.name = None
    wide.insert(1, "label", wide["model"].map(model_label))
    return _with_provenance(wide, rows)


def table6(df: pd.DataFrame, out_csv: str | Path, out_tex: str | Path, *, demo: bool | None = None) -> pd.DataFrame:
    """Write Table 6 (CSV + LaTeX); return it."""
    data = table6_data(df)
    is_demo, subject = _demo(data, demo)
    levels = [c for c in data.columns if c not in ("model", "label", *_PROVENANCE)]
    columns = {"label": "Model", **{lv: _r2_input(lv)[1] for lv in levels}}
    caption = (f"Ridge-regression R^2 of the 3 most common classes' pixel fractions from the central patch "
               f"({provenance_subtitle(data)}).")
    write_table(data, out_csv, out_tex, caption, "tab:table6", columns=columns, demo=is_demo, demo_subject=subject)
    return data


# --- Fig. 13: qualitative predictions ------------------------------------------------------

_PREDICTION_KEY = re.compile(r"^(?P<model>.+)__(?P<probe>knn|linear)__(?P<index>\d+)$")

#: Longest side of a panel as stored in the figure: full-resolution maps would make the PDF huge.
QUALITATIVE_MAX_SIDE = 512


def cityscapes_palette() -> np.ndarray:
    """``(256, 3)`` uint8 colours indexed by trainId (cityscapesscripts); 255 and unused ids black."""
    from cityscapesscripts.helpers.labels import labels

    palette = np.zeros((256, 3), np.uint8)
    for label in labels:
        if 0 <= label.trainId < 255:
            palette[label.trainId] = label.color
    return palette


def _pixel_accuracy(pred: np.ndarray, gt: np.ndarray) -> tuple[float, int]:
    valid = gt != 255
    n = int(valid.sum())
    return (float((pred[valid] == gt[valid]).mean()) if n else float("nan")), n


def _load_qualitative(npz_path: str | Path) -> tuple[dict[int, dict[str, np.ndarray]], list[str]]:
    """Per image index: image, gt and ``(model, probe)`` maps; plus the models in display order."""
    images: dict[int, dict] = {}
    models = set()
    with np.load(npz_path) as archive:
        for key in archive.files:
            found = re.fullmatch(r"(image|gt)_(\d+)", key)
            if found:
                images.setdefault(int(found.group(2)), {})[found.group(1)] = archive[key]
                continue
            found = _PREDICTION_KEY.match(key)
            if found is None:
                raise ValueError(f"{npz_path}: unexpected key {key!r}; expected image_<i>, gt_<i> or "
                                 "<model>__<knn|linear>__<i>")
            models.add(found["model"])
            images.setdefault(int(found["index"]), {})[(found["model"], found["probe"])] = archive[key]
    for index, entry in sorted(images.items()):
        for needed in ("image", "gt"):
            if needed not in entry:
                raise ValueError(f"{npz_path}: image {index} has no key '{needed}_{index}'")
        shape = entry["gt"].shape
        for key, value in entry.items():
            expected = shape + (3,) if key == "image" else shape
            if value.shape != expected or value.dtype != np.uint8:
                raise ValueError(f"{npz_path}: {key} of image {index} is {value.dtype} {value.shape}; "
                                 f"expected uint8 {expected}")
    return images, model_order(models)


def fig13_data(npz_path: str | Path) -> pd.DataFrame:
    """One row per prediction panel: image, model, probe and its pixel accuracy (ignore 255)."""
    images, models = _load_qualitative(npz_path)
    rows = []
    for index, entry in sorted(images.items()):
        for model in models:
            for probe in _PROBES:
                if (model, probe) not in entry:
                    raise ValueError(f"{npz_path}: missing key '{model}__{probe}__{index}'")
                accuracy, n = _pixel_accuracy(entry[(model, probe)], entry["gt"])
                rows.append({"image": index, "model": model, "probe": probe, "pixel_acc": accuracy, "n_pixels": n})
    return pd.DataFrame(rows)


def draw_fig13(npz_path: str | Path, data: pd.DataFrame, subtitle: str = "") -> Figure:
    images, models = _load_qualitative(npz_path)
    palette = cityscapes_palette()
    columns = [("image", None), ("gt", None)] + [(m, p) for m in models for p in _PROBES]
    first = next(iter(images.values()))["gt"]
    aspect = first.shape[0] / first.shape[1]
    with style():
        fig = new_figure(1.5 * len(columns), 1.5 * aspect * len(images) + 0.9)
        axes = np.atleast_2d(fig.subplots(len(images), len(columns), squeeze=False))
        for row, (index, entry) in enumerate(sorted(images.items())):
            step = max(1, -(-max(entry["gt"].shape) // QUALITATIVE_MAX_SIDE))
            for col, (name, probe) in enumerate(columns):
                ax = axes[row, col]
                ax.set_axis_off()
                if name == "image":
                    ax.imshow(entry["image"][::step, ::step], interpolation="nearest")
                    title = f"image {index}"
                elif name == "gt":
                    ax.imshow(palette[entry["gt"][::step, ::step]], interpolation="nearest")
                    title = "ground truth"
                else:
                    ax.imshow(palette[entry[(name, probe)][::step, ::step]], interpolation="nearest")
                    shown = data[(data["image"] == index) & (data["model"] == name) & (data["probe"] == probe)]
                    title = f"{model_label(name)} {PROBE_LABELS[probe]}\nacc {shown['pixel_acc'].iloc[0]:.3f}"
                ax.set_title(title, fontsize=7)
        _title(fig, "Fig. 13 — k-NN and linear-probe predictions (Cityscapes val)", subtitle)
    return fig


def fig13(
    npz_path: str | Path, out_pdf: str | Path, out_png: str | Path, out_csv: str | Path, *,
    preset: str, knn_metric: str, demo: bool, demo_subject: str | None = None,
) -> pd.DataFrame:
    """Write Fig. 13 from an .npz of label maps (trainIds) and its CSV of panel accuracies."""
    data = fig13_data(npz_path).assign(preset=preset, knn_metric=knn_metric)
    fig = draw_fig13(npz_path, data, provenance_subtitle(data.assign(probe="knn")))
    return _write_figure(fig, data, out_pdf, out_png, out_csv, demo, demo_subject)


# --- Table 1: pre-training augmentations ---------------------------------------------------

TABLE1_FACTS: dict[str, str] = {
    "method": "pre-training", "data": "data", "random_resized_crop": "random resized crop (area)",
    "horizontal_flip": "horizontal flip", "colour_jitter": "colour jitter", "grayscale": "grayscale",
    "gaussian_blur": "Gaussian blur", "solarization": "solarization", "multi_crop": "multi-crop",
    "masking": "masking", "other": "other", "reference": "reference",
}


def table1_source() -> Path:
    """The shipped static facts (``vitlocal/data/table1_augmentations.csv``)."""
    from importlib import resources

    return Path(str(resources.files("vitlocal") / "data" / "table1_augmentations.csv"))


def table1_data(source: str | Path | None = None) -> pd.DataFrame:
    """The facts, one row per model, in the study's model order; every cell filled ("?" if unknown)."""
    path = Path(source) if source is not None else table1_source()
    facts = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("model", *TABLE1_FACTS, "source") if c not in facts.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    empty = [(r["model"], c) for r in facts.to_dict("records") for c in TABLE1_FACTS if not r[c].strip()]
    if empty:
        raise ValueError(f"{path}: empty cell(s) {empty[:3]}; write '?' where a fact is not known")
    order = {m: i for i, m in enumerate(model_order(facts["model"]))}
    return facts.sort_values("model", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)


def table1(out_csv: str | Path, out_tex: str | Path, *, source: str | Path | None = None) -> pd.DataFrame:
    """Write Table 1: CSV as shipped (with sources), LaTeX transposed (facts x models) to fit a page."""
    facts = table1_data(source)
    shown = facts.set_index("model")[list(TABLE1_FACTS)].T
    shown.columns = [model_label(m) for m in shown.columns]
    shown.insert(0, "fact", [TABLE1_FACTS[f] for f in shown.index])
    align = "l" + "p{1.75cm}" * (shown.shape[1] - 1)
    shown = shown.reset_index(drop=True)
    write_csv(facts, out_csv)
    write_latex(shown, out_tex, "Pre-training augmentations of each model (static facts, sources in the CSV).",
                "tab:table1", columns={c: ("" if c == "fact" else c) for c in shown.columns}, align=align,
                size="scriptsize")
    return facts
