"""Shared helpers of the figure and table writers of every study.

Input of every writer: the tidy rows experiments write
(``vitlocal.reproduction.TIDY_COLUMNS``: experiment, dataset, model, probe,
layer, level, class, metric, value + provenance preset, weights, knn_metric,
patch_labels, data), possibly of several experiments concatenated. Each
output has three functions in its study's ``figures`` module:

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

import pandas as pd
from matplotlib.figure import Figure

from .base import (
    PROBE_LABELS,
    PROBE_LINESTYLES,
    PROBE_MARKERS,
    demo_subject_of,
    model_colour,
    model_label,
    model_order,
    save_figure,
    write_csv,
)

PROBES = ("knn", "linear")
PROVENANCE_COLUMNS = ("preset", "knn_metric", "weights", "data")



def tidy_rows(df: pd.DataFrame, what: str) -> pd.DataFrame:
    """Copy with text keys as str ("" for missing) and numeric values; errors name the figure."""
    needed = ("experiment", "dataset", "model", "probe", "layer", "level", "class", "metric", "value")
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: tidy results lack column(s) {', '.join(missing)}")
    out = df.copy()
    for column in ("experiment", "dataset", "model", "probe", "level", "class", "metric", *PROVENANCE_COLUMNS):
        if column in out.columns:
            out[column] = out[column].astype(object).where(out[column].notna(), "").astype(str)
    out["layer"] = out["layer"].astype(object).where(out["layer"].notna(), "").astype(str)
    try:
        out["value"] = pd.to_numeric(out["value"], errors="raise").astype(float)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what}: non-numeric value in column 'value' ({error})") from None
    return out


def check_unique(rows: pd.DataFrame, keys: Sequence[str], what: str) -> None:
    duplicated = rows.duplicated(list(keys), keep=False)
    if duplicated.any():
        first = rows.loc[duplicated, list(keys)].iloc[0].to_dict()
        raise ValueError(
            f"{what}: {int(duplicated.sum())} rows share their key {tuple(keys)}, e.g. {first}; "
            "pass one run (one layer / one train set) per model"
        )


def check_single_layer(rows: pd.DataFrame, what: str) -> None:
    layers = rows.groupby("model")["layer"].nunique()
    mixed = layers[layers > 1]
    if not mixed.empty:
        model = mixed.index[0]
        found = sorted(set(rows.loc[rows["model"] == model, "layer"]))
        raise ValueError(f"{what}: model {model!r} has rows of several layers {found}; pass one layer per model")


def with_provenance(data: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """Add the (joined) provenance of the source rows so a figure CSV says where its numbers come from."""
    data = data.copy()
    for column in PROVENANCE_COLUMNS:
        if column in rows.columns:
            data[column] = ";".join(sorted({v for v in rows[column] if v}))
    return data.reset_index(drop=True)


def demo_flag(rows: pd.DataFrame, demo: bool | None) -> tuple[bool, str | None]:
    subject = demo_subject_of(rows)
    return (subject is not None if demo is None else demo), subject


def parse_int_level(level: str, prefix: str, what: str) -> int:
    """``"m=200"`` or ``"200"`` (prefix ``"m="``) -> 200."""
    found = re.fullmatch(rf"(?:{re.escape(prefix)})?(\d+)", level)
    if found is None:
        raise ValueError(f"{what}: level {level!r} is not '{prefix}<int>' or '<int>'")
    return int(found.group(1))


def write_figure(
    fig: Figure, data: pd.DataFrame, out_pdf: str | Path, out_png: str | Path, out_csv: str | Path,
    demo: bool, subject: str | None,
) -> pd.DataFrame:
    save_figure(fig, out_pdf, out_png, demo=demo, demo_subject=subject)
    write_csv(data, out_csv)
    return data


def set_title(fig: Figure, title: str, subtitle: str) -> None:
    fig.suptitle(f"{title}\n{subtitle}" if subtitle else title)


def model_handles(models: Sequence[str]) -> list:
    from matplotlib.lines import Line2D

    return [Line2D([], [], color=model_colour(m), label=model_label(m)) for m in models]


def probe_handles() -> list:
    from matplotlib.lines import Line2D

    return [Line2D([], [], color="0.3", linestyle=PROBE_LINESTYLES[p], marker=PROBE_MARKERS[p],
                   label=PROBE_LABELS[p]) for p in PROBES]


def sort_models(data: pd.DataFrame, *columns: str) -> pd.DataFrame:
    order = {m: i for i, m in enumerate(model_order(data["model"]))}
    return data.assign(_m=data["model"].map(order)).sort_values(["_m", *columns], kind="stable").drop(columns="_m")
