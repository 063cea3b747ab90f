"""Figure and table outputs by name: which writer makes them, from which experiment rows.

One entry per named target of rules/figures.smk; the script stays a thin
dispatcher and tests can make any figure from tidy CSVs without Snakemake.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from ..errors import ConfigError
from . import figures
from .runner import concat_results

#: figure -> (experiment whose rows it plots, kind): "figure" writes pdf/png/csv,
#: "table" writes csv/tex, "figure+table" writes all four.
OUTPUTS: dict[str, tuple[str, str]] = {
    "fig1": ("train_size", "figure"),
    "fig2": ("layerwise", "figure"),
    "fig3": ("degradation", "figure"),
    "table2": ("ade20k", "table"),
    "fig4a": ("feature_variance", "figure"),
    "fig4b": ("variance_removal", "figure"),
    "fig4c": ("variance_removal", "figure"),
    "top_dims_overlap": ("top_dims_overlap", "figure+table"),
    "table6": ("r2", "table"),
}

#: Outputs made by their own rules (not from experiment CSVs).
SPECIAL_OUTPUTS = {"fig10": "figure", "fig13": "figure", "table1": "table"}

SUFFIXES = {"figure": ("pdf", "png", "csv"), "table": ("csv", "tex"), "figure+table": ("csv", "tex", "pdf", "png")}


def output_paths(figure: str, results_dir: str | Path) -> dict[str, str]:
    """``{suffix: path}`` of a figure's files under ``results/<preset>/figures/<figure>/``."""
    kind = OUTPUTS[figure][1] if figure in OUTPUTS else SPECIAL_OUTPUTS[figure]
    return {s: f"{results_dir}/figures/{figure}/{figure}.{s}" for s in SUFFIXES[kind]}


def make_output(figure: str, result_csvs: Sequence[str], out: Mapping[str, str], *, main_train_set: str) -> pd.DataFrame:
    """Write ``figure`` from the experiment CSVs (one per model); return the numbers it shows."""
    if figure not in OUTPUTS:
        raise ConfigError(f"unknown figure {figure!r}; known: {', '.join(OUTPUTS)}")
    df = concat_results(result_csvs)
    if figure == "fig3":
        return figures.fig3(df, out["pdf"], out["png"], out["csv"], clean_train_set=main_train_set)
    if figure == "top_dims_overlap":
        return figures.top_dims_overlap(df, out["csv"], out["tex"], out["pdf"], out["png"])
    writer = getattr(figures, figure)
    if OUTPUTS[figure][1] == "table":
        return writer(df, out["csv"], out["tex"])
    return writer(df, out["pdf"], out["png"], out["csv"])
