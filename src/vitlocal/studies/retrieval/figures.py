"""FAIR1M retrieval figures (Figs 6, 7, 11) and Table 3, from the rows of ``compute``.

Each writer takes the concatenated experiment rows, the output paths by
suffix and the config, writes the files (figure + CSV of exactly the numbers
shown, or CSV + LaTeX) and returns those numbers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from vitlocal.datasets import fair1m
from vitlocal.plotting.figure_helpers import (
    demo_flag,
    model_handles,
    set_title,
    sort_models,
    tidy_rows,
    with_provenance,
    write_figure,
)
from vitlocal.plotting.base import (
    model_colour,
    model_label,
    model_order,
    new_figure,
    require_rows,
)
from vitlocal.plotting.tables import write_table

from . import CATEGORIES, EXCLUDE_OWN, EXPERIMENT

#: Variant kinds in the order of the panels, with the x-axis label of each.
KINDS: dict[str, str] = {
    "shift": "shift right (px)",
    "rotate": "rotation (deg CCW)",
    "scale": "zoom factor",
    "blur": "blur kernel (px)",
    "noise": "noise sigma",
    "freqnoise": "freq. band (1 = high)",
}
CATEGORY_LABELS = {
    "same_patch": "same patch",
    "same_fine": "same fine class",
    "same_super": "same super class",
    "other_object": "other object",
    "background": "background",
}


def _similarity(rows: pd.DataFrame) -> str:
    metrics = sorted({m for m in rows["knn_metric"] if m})
    return "similarity: " + (", ".join(metrics) or "?")


def _subtitle(rows: pd.DataFrame, extra: str = "") -> str:
    presets = sorted({p for p in rows["preset"] if p})
    layers = sorted({str(v) for v in rows["layer"] if v != ""})
    parts = [f"preset {', '.join(presets)}", _similarity(rows), f"layer {', '.join(layers)}"]
    return " · ".join(parts + ([extra] if extra else []))


# --- Figs 6, 7, 11 ---------------------------------------------------------------------------


def retrieval_data(df: pd.DataFrame, experiment: str, what: str, models: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per (model, variant, category): count, share and the variant's query count."""
    rows = require_rows(tidy_rows(df, what), what, experiment=experiment)
    if models is not None:
        rows = rows[rows["model"].isin(models)]
        if rows.empty:
            raise ValueError(f"{what}: none of the models {list(models)} has rows")
    keys = ["model", "layer", "level", "class"]
    wide = rows.pivot_table(index=keys, columns="metric", values="value", aggfunc="first").reset_index()
    wide.columns.name = None
    queries = wide[wide["class"] == "queries"].set_index(["model", "level"])["count"].rename("queries")
    data = wide[wide["class"] != "queries"].join(queries, on=["model", "level"])
    data = data.rename(columns={"level": "variant", "class": "category"})
    kind_level = data["variant"].str.rsplit("-", n=1, expand=True)
    unknown = sorted(set(kind_level[0]) - set(KINDS))
    if unknown:
        raise ValueError(f"{what}: unknown variant kinds {unknown}; expected {list(KINDS)}")
    data.insert(2, "kind", kind_level[0])
    data.insert(3, "level", kind_level[1].astype(float))
    order = {c: i for i, c in enumerate((*CATEGORIES, "upper_bound"))}
    data = data.assign(_k=data["kind"].map(list(KINDS).index), _c=data["category"].map(order))
    data = sort_models(data.sort_values(["_k", "level", "_c"], kind="stable"), "_k", "level", "_c")
    data = data.drop(columns=["_k", "_c"])[["model", "layer", "variant", "kind", "level", "category", "count",
                                           "share", "queries"]]
    for column in ("count", "queries"):
        data[column] = data[column].astype(int)
    return with_provenance(data, rows)


def draw_retrieval(data: pd.DataFrame, title: str, subtitle: str):
    """Share of each category (rows of panels) vs level of each kind (columns); a line per model.

    The upper bound (queries that have a same patch at all) is dashed in the
    same-patch row, in the model's colour.
    """
    kinds = [k for k in KINDS if k in set(data["kind"])]
    categories = [c for c in CATEGORIES if c in set(data["category"])]
    models = model_order(data["model"])
    fig = new_figure(2.3 * len(kinds) + 1.6, 1.7 * len(categories) + 1.0)
    axes = np.asarray(fig.subplots(len(categories), len(kinds), squeeze=False, sharey="row"))
    for j, kind in enumerate(kinds):
        for i, category in enumerate(categories):
            ax = axes[i, j]
            for model in models:
                mine = data[(data["model"] == model) & (data["kind"] == kind)]
                shown = mine[mine["category"] == category]
                ax.plot(shown["level"], shown["share"], marker="o", color=model_colour(model))
                bound = mine[mine["category"] == "upper_bound"]
                if category == "same_patch" and not bound.empty:
                    ax.plot(bound["level"], bound["share"], linestyle="--", color=model_colour(model), alpha=0.7)
            ax.set_ylim(-0.03, 1.03)
            ax.set_xticks(sorted(set(data.loc[data["kind"] == kind, "level"])))
            if i == 0:
                ax.set_title(kind)
            if i == len(categories) - 1:
                ax.set_xlabel(KINDS[kind])
            if j == 0:
                ax.set_ylabel(f"share: {CATEGORY_LABELS[category]}")
    handles = model_handles(models)
    if "upper_bound" in set(data["category"]):
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], color="0.3", linestyle="--", label="upper bound (same patch exists)"))
    fig.legend(handles=handles, loc="outside right upper")
    set_title(fig, title, subtitle)
    return fig


def _write_retrieval(rows: pd.DataFrame, out: Mapping[str, str], *, experiment: str, what: str, title: str,
                     models: Sequence[str] | None = None, note: str = "",
                     extra: Mapping[str, str] | None = None) -> pd.DataFrame:
    data = retrieval_data(rows, experiment, what, models)
    is_demo, subject = demo_flag(data, None)
    fig = draw_retrieval(data, title, _subtitle(data, note))
    return write_figure(fig, data.assign(**(extra or {})), out["pdf"], out["png"], out["csv"], is_demo, subject)


def fig6(rows: pd.DataFrame, out: Mapping[str, str], config: Mapping[str, Any]) -> pd.DataFrame:
    return _write_retrieval(rows, out, experiment=EXPERIMENT, what="fig6",
                            title="Nearest clean patch of each transformed object patch (FAIR1M)")


def excluded_unit(rows: pd.DataFrame) -> str:
    """What Fig 7's rows masked (``retrieval.exclude_own``, from their settings): ``crop`` or ``scene``."""
    mine = rows.loc[rows["experiment"] == EXCLUDE_OWN, "settings"]
    units = sorted({json.loads(s).get("exclude_own", "not recorded") for s in mine.drop_duplicates()})
    if len(units) != 1 or units[0] not in ("crop", "scene"):
        raise ValueError(f"fig7: the rows' retrieval.exclude_own is {units}; rerun the retrieval jobs")
    return units[0]


def fig7(rows: pd.DataFrame, out: Mapping[str, str], config: Mapping[str, Any]) -> pd.DataFrame:
    unit = excluded_unit(rows)
    what = "224-px crop" if unit == "crop" else "FAIR1M scene (every crop cut from it)"
    return _write_retrieval(rows, out, experiment=EXCLUDE_OWN, what="fig7",
                            title=f"Nearest clean patch, the query's own {what} excluded (FAIR1M)",
                            note="same patch impossible by construction", extra={"exclude_own": unit})


def fig11(rows: pd.DataFrame, out: Mapping[str, str], config: Mapping[str, Any]) -> pd.DataFrame:
    """Fig 6's protocol for the models of ``retrieval.fig11_models``; the figure and CSV name missing ones."""
    from . import fig11_models

    wanted = list(config.get("retrieval", {}).get("fig11_models", []))
    shown = fig11_models(config)
    missing = [m for m in wanted if m not in shown]
    note = f"not configured: {', '.join(model_label(m) for m in missing)}" if missing else ""
    if not set(wanted) & set(shown):
        note += f"; showing {', '.join(model_label(m) for m in shown)} instead"
    return _write_retrieval(rows, out, experiment=EXPERIMENT, what="fig11", models=shown, note=note,
                            title=" vs ".join(model_label(m) for m in wanted) + " (FAIR1M retrieval)",
                            extra={"missing_models": ";".join(missing)})


# --- Table 3 ---------------------------------------------------------------------------------


def _grid(settings: str) -> str:
    grid = json.loads(settings)["grid"]
    return f"{grid[0]}x{grid[1]}"


def published_totals() -> dict[tuple[str, str], float]:
    """``(metric, grid) -> count`` of the published FAIR1M subset sizes; conflicting values raise.

    The authors counted on 14x14 grids, DINOv2's on 16x16 (``fair1m_stats`` setting).
    """
    from vitlocal.published import load_published, to_our_keys

    stats = to_our_keys(load_published())
    stats = stats[stats["experiment"] == "fair1m_stats"]
    totals: dict[tuple[str, str], float] = {}
    for row in stats.to_dict("records"):
        key = (row["metric"], "16x16" if row["model"] == "dinov2" else "14x14")
        if totals.setdefault(key, row["published"]) != row["published"]:
            raise ValueError(f"published fair1m_stats disagree for {key}: {totals[key]} vs {row['published']}")
    return totals


def table3_data(df: pd.DataFrame) -> pd.DataFrame:
    """Per fine class: crops drawn for it and object patches on each model grid; totals with published counts."""
    rows = require_rows(tidy_rows(df, "table3"), "table3", experiment="fair1m_stats")
    rows = rows.assign(grid=rows["settings"].map(_grid))
    counts = {}
    for grid, group in rows.groupby("grid", sort=True):
        per_model = group.pivot_table(index=["class", "metric"], columns="model", values="value", aggfunc="first")
        if (per_model.nunique(axis=1) > 1).any():
            raise ValueError(f"table3: models on the {grid} grid disagree on the FAIR1M counts")
        counts[grid] = per_model.iloc[:, 0]
    grids = sorted(counts, key=lambda g: tuple(int(v) for v in g.split("x")))
    totals = published_totals()
    first = counts[grids[0]]
    table = []
    for name in fair1m.CLASSES:
        table.append({"super_class": fair1m.SUPERCLASS_OF[name], "class": name,
                      "crops": first[(name, "count_crops_selected")],
                      **{f"patches {g}": counts[g][(name, "count_object_patches")] for g in grids}})
    n_crops = sum(row["crops"] for row in table)
    for label, cls, metric, crops in (("all object patches", "all_nonbg", "count_nonbg_query_patches", n_crops),
                                      ("all patches", "all", "count_patches", np.nan)):
        table.append({"super_class": "", "class": label, "crops": crops,
                      **{f"patches {g}": counts[g][(cls, metric)] for g in grids},
                      **{f"published {g}": totals.get((metric, g), np.nan) for g in ("14x14", "16x16")}})
    data = pd.DataFrame(table)
    models = ", ".join(model_order(m for m in rows["model"] if "-" not in m))
    data["models"] = models
    return with_provenance(data, rows)


def table3(rows: pd.DataFrame, out: Mapping[str, str], config: Mapping[str, Any]) -> pd.DataFrame:
    data = table3_data(rows)
    is_demo, subject = demo_flag(data, None)
    grids = [c for c in data.columns if c.startswith("patches ")]
    columns = {"super_class": "super class", "class": "fine class", "crops": "crops", **{g: g for g in grids},
               "published 14x14": "published 14x14", "published 16x16": "published 16x16"}
    caption = (f"FAIR1M few-shot subset: crops drawn per fine class and object patches per fine class on each "
               f"model's patch grid; totals beside the authors' counts (per-class counts were not published; "
               f"preset {', '.join(sorted(set(data['preset'])))}).")
    write_table(data, out["csv"], out["tex"], caption, "tab:table3", float_format=".0f", columns=columns,
                demo=is_demo, demo_subject=subject)
    return data


