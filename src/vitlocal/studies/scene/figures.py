"""Writers of Fig 5, Table 4 and fig_recon (``figure_helpers`` conventions: data, draw, write)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ...plotting.figure_helpers import (
    check_unique,
    demo_flag,
    set_title,
    tidy_rows,
    with_provenance,
    write_figure,
)
from ...plotting.base import model_label, model_order, new_figure, provenance_subtitle, require_rows
from ...plotting.tables import write_table
from . import SCENE_DATASETS

DATASET_LABELS = {"ucmerced": "UC Merced", "resisc45": "NWPU-RESISC45"}
REP_STYLE = {"cls": ("[CLS]", "C0"), "mean": ("mean patch", "C3")}

# --- Fig 5 ---------------------------------------------------------------------------


def fig5_data(df: pd.DataFrame) -> pd.DataFrame:
    """k-NN accuracy per dataset, model, representation, removed dims and input size, with the k-NN's settings."""
    rows = require_rows(tidy_rows(df, "fig5"), "fig5", experiment="scene_knn", metric="accuracy")
    for column in ("representation", "input_px", "gsd_ratio", "removed_dims", "k", "knn"):
        if column not in rows.columns:
            raise ValueError(f"fig5: scene_knn rows lack column {column!r} (rows of an older version: rerun scene_knn)")
    rows = rows.assign(
        removed_dims=rows["removed_dims"].astype(int), input_px=rows["input_px"].astype(int),
        gsd_ratio=rows["gsd_ratio"].astype(float), k=rows["k"].astype(int),
        base_model=[m if int(r) == 0 else m.removesuffix(f"-{int(r)}") for m, r in
                    zip(rows["model"], rows["removed_dims"])],
    )
    check_unique(rows, ("dataset", "model", "representation", "input_px"), "fig5")
    data = rows[["dataset", "base_model", "model", "representation", "removed_dims", "input_px", "gsd_ratio",
                 "value", "knn", "k", "knn_metric", "layer"]]
    order = {m: i for i, m in enumerate(model_order(data["base_model"]))}
    data = data.assign(_d=data["dataset"].map({d: i for i, d in enumerate(SCENE_DATASETS)}),
                       _m=data["base_model"].map(order))
    data = data.sort_values(["_d", "_m", "representation", "removed_dims", "input_px"], kind="stable")
    return with_provenance(data.drop(columns=["_d", "_m"]), rows)


def draw_fig5(data: pd.DataFrame, subtitle: str = "") -> Figure:
    datasets = [d for d in SCENE_DATASETS if d in set(data["dataset"])]
    models = model_order(data["base_model"].unique())
    fig = new_figure(3.0 * len(models), 2.6 * len(datasets) + 1.2)
    axes = fig.subplots(len(datasets), len(models), squeeze=False, sharey=True)
    for i, dataset in enumerate(datasets):
        for j, model in enumerate(models):
            ax = axes[i][j]
            panel = data[(data["dataset"] == dataset) & (data["base_model"] == model)]
            for (rep, removed), line in panel.groupby(["representation", "removed_dims"], sort=True):
                label, colour = REP_STYLE[rep]
                name = label if removed == 0 else f"{label}, top-{removed} removed"
                ax.plot(line["input_px"], line["value"], color=colour, linestyle="-" if removed == 0 else "--",
                        marker="o" if removed == 0 else "s", label=name)
            ax.set_xscale("log", base=2)
            sizes = sorted(set(panel["input_px"]))
            ax.set_xticks(sizes, [str(s) for s in sizes])
            ax.minorticks_off()
            ax.set_title(f"{model_label(model)} — {DATASET_LABELS.get(dataset, dataset)}")
            ax.set_ylim(0, 1)
            if j == 0:
                ax.set_ylabel("k-NN accuracy")
            if i == len(datasets) - 1:  # axis labels, not supxlabel: constrained layout then keeps the legend clear
                ax.set_xlabel("input size (px); GSD x 224/size")
    knn = data.iloc[0]
    vote = f"{knn['k']}-NN, {knn['knn_metric']}" + (", vote weighted by exp(sim/T)" if knn["knn"] == "scalemae" else "")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=4, frameon=False)
    set_title(fig, f"k-NN scene classification across ground sample distances ({vote})", subtitle)
    return fig


def fig5(df: pd.DataFrame, out_pdf, out_png, out_csv, *, demo: bool | None = None) -> pd.DataFrame:
    data = fig5_data(df)
    is_demo, subject = demo_flag(data, demo)
    return write_figure(draw_fig5(data, provenance_subtitle(df.assign(probe="knn"))), data, out_pdf, out_png,
                        out_csv, is_demo, subject)


# --- Table 4 -------------------------------------------------------------------------


def table4_data(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, mask ratio, encoder output): mean MSE, PSNR, SSIM and the number of images."""
    rows = require_rows(tidy_rows(df, "table4"), "table4", experiment="reconstruction")
    check_unique(rows, ("model", "level", "metric"), "table4")
    parts = rows["level"].str.extract(r"^mask=(?P<mask_ratio>[0-9.]+):(?P<features>intact|zeroed\d+)$")
    if parts.isna().any().any():
        bad = rows.loc[parts.isna().any(axis=1), "level"].iloc[0]
        raise ValueError(f"table4: level {bad!r} is not 'mask=<r>:intact' or 'mask=<r>:zeroed<m>'")
    rows = rows.assign(mask_ratio=parts["mask_ratio"].astype(float), features=parts["features"])
    wide = rows.pivot_table(index=["model", "mask_ratio", "features"], columns="metric", values="value",
                            aggfunc="first").reset_index()
    wide.columns.name = None
    wide["zeroed"] = wide["features"] != "intact"
    wide = wide.sort_values(["model", "mask_ratio", "zeroed"], kind="stable").drop(columns="zeroed")
    wide["features"] = [f if f == "intact" else f"top-{f.removeprefix('zeroed')} zeroed" for f in wide["features"]]
    wide["n_images"] = wide["n_images"].astype(int)
    return with_provenance(wide[["model", "mask_ratio", "features", "mse", "psnr", "ssim", "n_images"]], rows)


def table4(df: pd.DataFrame, out_csv, out_tex, *, demo: bool | None = None) -> pd.DataFrame:
    data = table4_data(df)
    is_demo, subject = demo_flag(data, demo)
    columns = {"mask_ratio": "Mask ratio", "features": "Encoder output", "mse": "MSE", "psnr": "PSNR (dB)",
               "ssim": "SSIM", "n_images": "Images"}
    caption = ("MAE reconstruction with the top-variance dimensions of the encoder output zeroed before the "
               "decoder: MSE / PSNR / SSIM on the masked patches (mask ratio > 0) or all patches (0), "
               f"mean over images ({', '.join(model_label(m) for m in model_order(data['model'].unique()))}).")
    write_table(data, out_csv, out_tex, caption, "tab:table4", float_format=".4f", columns=columns,
                demo=is_demo, demo_subject=subject)
    return data


# --- fig_recon -----------------------------------------------------------------------

RECON_COLUMNS = (("visible", "input (visible patches)"), ("intact", "intact"), ("zeroed", "top-{m} zeroed"))


def draw_fig_recon(records: Sequence[dict[str, Any]], m: int, subtitle: str = "") -> Figure:
    fig = new_figure(6.0, 2.0 * len(records) + 0.8)
    axes = fig.subplots(len(records), len(RECON_COLUMNS), squeeze=False)
    for i, record in enumerate(records):
        for j, (key, title) in enumerate(RECON_COLUMNS):
            ax = axes[i][j]
            ax.imshow(np.clip(record[key], 0, 1), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            text = title.format(m=m) if i == 0 else ""
            if key != "visible":
                text += ("\n" if text else "") + (f"PSNR {record[f'{key}_psnr']:.1f} dB, "
                                                  f"SSIM {record[f'{key}_ssim']:.3f}")
            ax.set_title(text, fontsize=7)
            if j == 0:
                ax.set_ylabel(f"{record['tile']}\nmask {record['mask_ratio']:g}", fontsize=7)
    set_title(fig, "MAE reconstructions with the top-variance dimensions zeroed", subtitle)
    return fig


def fig_recon(records: Sequence[dict[str, Any]], m: int, provenance: dict[str, str], out_pdf, out_png,
              out_csv) -> pd.DataFrame:
    """Draw the reconstructions; the CSV holds each shown image's metrics and the provenance."""
    metrics = [k for k in records[0] if k.startswith(("intact_", "zeroed_"))]
    data = pd.DataFrame([{"tile": r["tile"], "mask_ratio": r["mask_ratio"], **{k: r[k] for k in metrics}}
                         for r in records]).assign(zeroed_dims=m, **provenance)
    is_demo, subject = demo_flag(data, None)
    subtitle = f"preset {provenance['preset']} · {provenance['model']} · {provenance['weights']}"
    return write_figure(draw_fig_recon(records, m, subtitle), data, out_pdf, out_png, out_csv, is_demo, subject)



def write_fig_recon(key: str, config, *, table_csv, manifest, root, out) -> pd.DataFrame:
    """fig_recon: ``key``'s MAE reconstructs a few val tiles with Table 4's zeroed dims (from its CSV) and masks."""
    import json

    from ...subsets import read_manifest
    from . import build_reconstruction_model, settings
    from .reconstruction import reconstruction_examples

    s = settings(config)
    table = require_rows(tidy_rows(pd.read_csv(table_csv, dtype=str, keep_default_na=False), "fig_recon"),
                         "fig_recon", experiment="reconstruction", model=key)
    dims = json.loads(table["settings"].iloc[0])["zeroed_dims"]
    spec, model = build_reconstruction_model(config, key)
    records = reconstruction_examples(
        key, spec, model, dims=dims, root=root, manifest=read_manifest(manifest), mask_ratios=s["mask_ratios"],
        seed=config["seed"], n_examples=s["figure_examples"], device=config.get("device", "auto"),
    )
    provenance = {"preset": table["preset"].iloc[0], "model": key, "weights": table["weights"].iloc[0],
                  "data": table["data"].iloc[0]}
    return fig_recon(records, len(dims), provenance, out["pdf"], out["png"], out["csv"])
