"""The one-page card of a model (PDF, PNG, JSON, CSV) and the comparison table of every carded model.

The card draws the model in colour and the other carded models of the same
run in grey; every number carries its 95 % bootstrap interval (an error bar;
on the layer curve a band), but the measured cost of each post-processor
(machine-dependent), the best m (chosen on held-out training images) and the
best layer (a description). Numbers read from other studies' CSVs take their
intervals from the per-unit statistics beside those CSVs (``summary``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.transforms import blended_transform_factory

from ...plotting.base import demo_subject_of, model_colour, model_label, new_figure, save_figure, write_csv, write_text
from ...plotting.tables import to_latex
from .summary import card_entries

GREY = "#9a9a9a"
TEXT_POINTS = 5.5
#: Columns of the comparison table: (section, name) of an entry -> header; higher is better for each but the last.
TABLE = {
    ("post-processors", "k-NN, raw"): "k-NN mIoU",
    ("post-processors", "k-NN, BatchNorm-standardised"): "k-NN BN",
    ("post-processors", "linear, raw"): "linear mIoU",
    ("post-processors", "k-NN, best-m removed"): "k-NN best-m",
    ("post-processors", "k-NN, DVT"): "k-NN DVT",
    ("diagnostics", "dvt_artifact_share"): "DVT artifact share",
    ("diagnostics", "position_r2"): "position R2",
    ("diagnostics", "high_norm_share"): "high-norm share",
}
#: Ranked so that 1 is best: larger is better except for the high-norm and artifact shares.
LOWER_IS_BETTER = {"high-norm share", "DVT artifact share"}


def all_entries(rows: pd.DataFrame, models: Sequence[str], main_train_set: str = "set4",
                units: pd.DataFrame | None = None, **boot) -> pd.DataFrame:
    """Every model's entries (``units`` and ``boot``: ``summary.card_entries``)."""
    return pd.concat([card_entries(m, rows, main_train_set, units, **boot) for m in models], ignore_index=True)


def _interval(ax, y, entries: pd.DataFrame, colour: str, offset: float, size: float, label: str | None):
    values = entries["value"].to_numpy(float)
    lo, hi = entries["lo"].to_numpy(float), entries["hi"].to_numpy(float)
    err = np.vstack([np.where(np.isnan(lo), 0, values - lo), np.where(np.isnan(hi), 0, hi - values)])
    ax.errorbar(values, y + offset, xerr=err, fmt="o", ms=size, color=colour, capsize=2, lw=1, label=label)


def published_layers(models: Sequence[str]) -> pd.DataFrame:
    """The paper's k-NN mIoU per layer (Fig 2) of those ``models`` it reports: ``model, layer, published``."""
    from ...published import load_published, to_our_keys

    p = to_our_keys(load_published())
    keep = ((p["experiment"] == "layerwise") & (p["probe"] == "knn") & (p["metric"] == "miou")
            & (p["class"] == "mean") & p["model"].isin(list(models)))
    return p.loc[keep, ["model", "layer", "published"]].sort_values(["model", "layer"]).reset_index(drop=True)


def draw_card(model: str, entries: pd.DataFrame, subtitle: str, published: pd.DataFrame | None = None):
    """Left: post-processors and diagnostics with intervals; right: the layer curve and the read numbers.

    ``published``: the paper's layer curves (dotted), drawn only beside real (not demo) numbers.
    """
    mine, refs = entries[entries["model"] == model], entries[entries["model"] != model]
    lines = [f"{model_label(model)}: local-feature card   {subtitle}", ""]
    for r in mine[~mine["section"].isin(["layers"])].to_dict("records"):
        lines.append(f"{r['section']:>15} | {r['name']:<32} {_shown(r)}")
    lines += ["", "Definitions:"]
    lines += [f"  {d}" for d in dict.fromkeys(mine["definition"])]
    text_height = (len(lines) + 2) * TEXT_POINTS * 1.45 / 72  # inches (font height x line spacing): grows with the lines
    fig = new_figure(8.3, 7.0 + text_height)
    grid = fig.add_gridspec(3, 2, height_ratios=[3.5, 3.5, text_height])
    for i, section in enumerate(("post-processors", "diagnostics")):
        ax = fig.add_subplot(grid[i, 0])
        names = list(dict.fromkeys(mine.loc[mine["section"] == section, "name"]))
        y = np.arange(len(names))[::-1].astype(float)
        for ref in refs["model"].unique():
            sel = refs[(refs["model"] == ref) & (refs["section"] == section)].set_index("name").reindex(names)
            _interval(ax, y, sel.reset_index(), GREY, -0.15, 3, None)
        sel = mine[mine["section"] == section].set_index("name").reindex(names).reset_index()
        _interval(ax, y, sel, model_colour(model), 0.15, 5, model_label(model))
        ax.set_yticks(y, names)
        ax.set_xlabel("mIoU" if section == "post-processors" else "share / R²")
        ax.set_title(f"{section}, 95 % CI over val images", fontsize=8)
    ax = fig.add_subplot(grid[0:2, 1])
    for ref in refs["model"].unique():
        layers = refs[(refs["model"] == ref) & (refs["section"] == "layers")]
        ax.plot([int(n.split()[1]) for n in layers["name"]], layers["value"], color=GREY, lw=1, marker=".")
    layers = mine[mine["section"] == "layers"]
    at = [int(n.split()[1]) for n in layers["name"]]
    ax.plot(at, layers["value"], color=model_colour(model), lw=2, marker="o", label=model_label(model))
    if np.isfinite(layers["lo"].to_numpy(float)).any():
        ax.fill_between(at, layers["lo"].to_numpy(float), layers["hi"].to_numpy(float), color=model_colour(model),
                        alpha=0.2, lw=0, label="95 % CI over val images")
    ax.plot([], [], color=GREY, lw=1, label="other carded models")
    if published is not None and len(published):
        for name, curve in published.groupby("model"):
            ax.plot(curve["layer"], curve["published"], ls=":", marker="x", lw=1,
                    color=model_colour(model) if name == model else GREY)
        ax.plot([], [], color=GREY, ls=":", marker="x", lw=1, label="published (paper)")
    ax.set_xlabel("layer")
    ax.set_ylabel("k-NN mIoU (Cityscapes val)")
    ax.set_title("k-NN mIoU per layer (Fig 2)", fontsize=8)
    ax.legend(fontsize=8)
    room = fig.add_subplot(grid[2, :])  # the text's room, sized above; the text itself is left out of the layout
    room.axis("off")
    where = blended_transform_factory(fig.transFigure, room.transAxes)  # from the page's left edge, the room's top
    fig.text(0.01, 1, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=TEXT_POINTS,
             transform=where).set_in_layout(False)
    return fig


def _shown(entry) -> str:
    """A card line's number: with its interval, or why it has none."""
    if not np.isfinite(entry["value"]):
        return "undefined (no unit to count: e.g. no high-norm token)"
    whole = entry["section"] == "selection" or entry["name"] == "best k-NN layer"
    value = f"{int(entry['value'])}" if whole else f"{entry['value']:.3g} s" if entry["section"] == "cost" else \
        f"{entry['value']:.3f}"
    if entry["name"] == "best k-NN layer":
        return f"{value} (a description: no interval)"
    if entry["section"] == "cost":
        return f"{value} per val image (this run's machine; a measurement, no interval)"
    if entry["section"] == "selection":
        return f"{value} (chosen on held-out training images; no interval)"
    if not np.isfinite(entry["lo"]):
        return f"{value} (no per-unit statistics read: no interval)"
    return f"{value} [{entry['lo']:.3f}, {entry['hi']:.3f}]"


def card(rows: pd.DataFrame, model: str, models: Sequence[str], out_pdf, out_png, out_json, out_csv,
         main_train_set: str = "set4", units: pd.DataFrame | None = None, **boot) -> pd.DataFrame:
    """Write ``model``'s card (``models``: every carded model, the others drawn in grey; ``units``, ``boot``:
    the per-unit statistics of the numbers it reads and the bootstrap's ``resamples`` and ``seed``)."""
    entries = all_entries(rows, list(dict.fromkeys([model, *models])), main_train_set, units, **boot)
    mine = entries[entries["model"] == model]
    own = rows[(rows["model"] == model) & (rows["experiment"] == "card")]
    subtitle = f"preset {', '.join(sorted(set(own['preset'])))}; weights {', '.join(sorted(set(own['weights'])))}"
    subject = demo_subject_of(own)
    published = None if subject else published_layers(entries["model"].unique())
    fig = draw_card(model, entries, subtitle, published)
    save_figure(fig, out_pdf, out_png, demo=subject is not None, demo_subject=subject)
    write_csv(mine, out_csv)
    record = {"model": model, "subtitle": subtitle, "demo": subject,
              "entries": json.loads(mine.to_json(orient="records")),
              "references": sorted(set(entries["model"]) - {model}),
              "published_layerwise": [] if published is None else json.loads(published.to_json(orient="records"))}
    write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", out_json)
    return mine


def comparison(rows: pd.DataFrame, models: Sequence[str]) -> pd.DataFrame:
    """One row per model: the table's numbers, their intervals and each column's rank (1 = best)."""
    entries = all_entries(rows, models).set_index(["section", "name"])
    out = []
    for model in models:
        mine = entries[entries["model"] == model]
        row = {"model": model}
        for key, header in TABLE.items():
            hit = mine.loc[[key]] if key in mine.index else None
            row[header] = float(hit["value"].iloc[0]) if hit is not None else np.nan
            row[f"{header} lo"] = float(hit["lo"].iloc[0]) if hit is not None else np.nan
            row[f"{header} hi"] = float(hit["hi"].iloc[0]) if hit is not None else np.nan
        out.append(row)
    table = pd.DataFrame(out)
    for header in TABLE.values():
        table[f"{header} rank"] = table[header].rank(ascending=header in LOWER_IS_BETTER, method="min").astype("Int64")
    return table


def cards_table(rows: pd.DataFrame, models: Sequence[str], out_csv, out_tex, out_md) -> pd.DataFrame:
    """The comparison table as CSV, LaTeX and Markdown."""
    table = comparison(rows, models)
    subject = demo_subject_of(rows[rows["experiment"] == "card"])
    write_csv(table, out_csv)
    shown = pd.DataFrame({"model": table["model"].map(model_label)})
    for header in TABLE.values():
        shown[header] = [_cell(v, lo, hi, r) for v, lo, hi, r in
                         zip(table[header], table[f"{header} lo"], table[f"{header} hi"], table[f"{header} rank"])]
    caption = ("Local-feature cards: value [95 % bootstrap interval over Cityscapes val images; DVT artifact share: "
               "over DVT's stage-1 training images] (rank, 1 = best; high-norm and artifact shares: lower is better). "
               "best-m: top-m variance dims removed, m chosen on held-out training images, never on val. "
               "--: not computed for the model (DVT: only models of dvt.models).")
    tex = to_latex(shown, align="l" * len(shown.columns), demo_subject=subject)
    write_text(f"% {caption}\n{tex}", out_tex)
    md = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    md += ["| " + " | ".join(map(str, r)) + " |" for r in shown.itertuples(index=False)]
    banner = [f"**DEMO ({subject}): not results of the study.**", ""] if subject else []
    write_text("\n".join([f"# {caption}", "", *banner, *md, ""]), out_md)
    return table


def _cell(value: float, lo: float, hi: float, rank) -> str:
    if not np.isfinite(value):
        return "--"
    ci = f" [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) else ""
    return f"{value:.3f}{ci} ({rank})"


def write_card_files(paths: Sequence[str], model: str, models: Sequence[str], out: dict,
                     main_train_set: str = "set4", *, resamples: int, seed: int) -> pd.DataFrame:
    """What the ``card`` rule calls: the CSVs of every carded model and the per-unit statistics (``.parquet``)
    of those it reads -> ``model``'s card files."""
    from ...evaluation.units import read_units
    from ..base import concat_results

    csvs = [p for p in paths if not str(p).endswith(".parquet")]
    units = read_units([p for p in paths if str(p).endswith(".parquet")])
    return card(concat_results(csvs), model, models, out["pdf"], out["png"], out["json"], out["csv"],
                main_train_set, units, resamples=resamples, seed=seed)


def write_table_files(paths: Sequence[str], models: Sequence[str], out: dict) -> pd.DataFrame:
    """What the ``cards`` rule calls."""
    from ..base import concat_results

    for path in (out["csv"], out["tex"], out["md"]):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    return cards_table(concat_results(list(paths)), models, out["csv"], out["tex"], out["md"])
