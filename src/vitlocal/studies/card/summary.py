"""The card's entries: its own diagnostics plus what the other studies' CSVs say about the model.

One entry per number: ``section``, ``name``, ``value``, ``lo``/``hi`` (the 95 %
bootstrap interval; empty for numbers read from another study's CSV, which
holds no per-image statistics), ``source`` (the experiment) and
``definition`` (the one sentence printed on the card).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

DEFINITIONS = {
    "knn_miou": "k-NN mIoU on Cityscapes val at the last layer (k, similarity and gallery as the probing study).",
    "linear_miou": "Linear-probe mIoU on Cityscapes val at the last layer (the probing study's probe and schedule).",
    "top_removed": "k-NN mIoU after removing the top-m variance dimensions, ranked on the training patches.",
    "bn": "k-NN mIoU on BatchNorm-standardised features (training mean and variance).",
    "linear_bn": "Linear-probe mIoU on BatchNorm-standardised features (training mean and variance).",
    "best_removed": "mIoU on val with the top-m dims removed, m chosen on held-out training images (never on val).",
    "best_m": ("m of the k-NN's best top-m removal on a seeded quarter of the training images held out "
               "(gallery: the rest; ties: smallest m): val is never used to choose it."),
    "dvt": "mIoU on the DVT-denoised features (the dvt study's denoiser applied to train and val).",
    "seconds_per_image": ("Seconds to apply the post-processor to one val image's patch features (DVT: the "
                          "denoiser's forward), measured on this run's machine: machine-dependent, no interval."),
    "dvt_artifact_share": ("DVT stage 1's ||G|| / ||y||: norm of the position artifact G over that of the raw "
                           "features y, pooled over its training tiles (interval over those training images)."),
    "variance_share_top10": "Share of the summed per-dimension variance of val patch features in the 10 largest.",
    "variance_share_top200": "Share of the summed per-dimension variance of val patch features in the 200 largest.",
    "high_norm_share": "Share of val patch tokens (last layer, after the final norm) with norm > Q3 + 3 IQR of train norms.",
    "high_norm_on_background": "Share of the labelled high-norm tokens on background (flat, construction, nature, sky).",
    "background_share": "Share of all labelled val patches on background: the rate if high-norm tokens sat anywhere.",
    "position_r2": "R² of a ridge regression from patch feature to its grid (row, col), fit on train, scored on val tiles.",
    "layerwise_best": "Layer of highest k-NN mIoU on the val images (a description: nothing is selected with it).",
    "layerwise": "k-NN mIoU at this layer (Fig 2 protocol).",
    "train_size": "mIoU on Cityscapes val at the last layer, main train set (Fig 1 protocol).",
    "ade20k": "mIoU on ADE20K val at the last layer (Table 2 protocol).",
    "degradation": "mIoU at the strongest configured level divided by the clean mIoU (Fig 3 protocol).",
    "retrieval": "Share of FAIR1M query patches whose nearest gallery patch is the same patch / same fine class (Fig 6).",
    "tracking": "Same-instance accuracy of nearest-neighbour box matching (Fig 8 protocol).",
}


def _entry(section: str, name: str, value: float, source: str, definition: str, lo=np.nan, hi=np.nan,
           n_units: Any = "") -> dict[str, Any]:
    return {"section": section, "name": name, "value": float(value), "lo": float(lo), "hi": float(hi),
            "n_units": n_units, "source": source, "definition": definition}


def _mean_miou(rows: pd.DataFrame, **match: str) -> pd.DataFrame:
    sel = rows[(rows["metric"] == "miou") & (rows["class"] == "mean")]
    for key, value in match.items():
        sel = sel[sel[key] == value]
    return sel


#: Post-processor levels of the card's own rows -> their names on the card.
POST_PROCESSORS = {"raw": "raw", "best_m_removed": "best-m removed", "bn_standardised": "BatchNorm-standardised",
                   "dvt": "DVT"}
#: (probe, level) -> definition key of the card's mIoU rows (``top<m>_removed``: ``top_removed``).
_MIOU_KEYS = {("knn", "raw"): "knn_miou", ("linear", "raw"): "linear_miou", ("knn", "bn_standardised"): "bn",
              ("linear", "bn_standardised"): "linear_bn", **{(p, "best_m_removed"): "best_removed" for p in ("knn", "linear")},
              **{(p, "dvt"): "dvt" for p in ("knn", "linear")}}


def _own(rows: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for r in rows[rows["experiment"] == "card"].to_dict("records"):
        level = "" if pd.isna(r["level"]) else str(r["level"])
        if r["probe"] in ("knn", "linear"):
            probe = "k-NN" if r["probe"] == "knn" else "linear"
            m = re.fullmatch(r"top(\d+)_removed", level)
            name = f"{probe}, top-{m.group(1)} removed" if m else f"{probe}, {POST_PROCESSORS[level]}"
            key = "top_removed" if m else _MIOU_KEYS[(r["probe"], level)]
            section = "post-processors"
        elif r["metric"] == "seconds_per_image":
            name, key, section = f"cost, {POST_PROCESSORS[level]}", "seconds_per_image", "cost"
        elif r["metric"] == "best_m":
            name, key, section = "best m (held-out train images)", "best_m", "selection"
        else:
            name, key, section = str(r["metric"]), str(r["metric"]), "diagnostics"
        out.append(_entry(section, name, r["value"], "card", DEFINITIONS[key], r["lo"], r["hi"], r["n_units"]))
    order = ["post-processors", "selection", "cost", "diagnostics"]  # within post-processors: k-NN, then linear
    return sorted(out, key=lambda e: (order.index(e["section"]), e["name"].startswith("linear")))


def _read(rows: pd.DataFrame, main_train_set: str) -> list[dict[str, Any]]:
    out = []
    for probe in ("knn", "linear"):
        sel = _mean_miou(rows, experiment="train_size", probe=probe, level=main_train_set)
        if len(sel):
            out.append(_entry("segmentation", f"Cityscapes {probe}", sel["value"].iloc[-1], "train_size",
                              DEFINITIONS["train_size"]))
    layerwise = _mean_miou(rows, experiment="layerwise", probe="knn").dropna(subset=["layer"])
    if len(layerwise):
        best = layerwise.loc[layerwise["value"].idxmax()]
        out.append(_entry("segmentation", "best k-NN layer", int(best["layer"]), "layerwise",
                          DEFINITIONS["layerwise_best"]))
        for r in layerwise.sort_values("layer").to_dict("records"):
            out.append(_entry("layers", f"layer {int(r['layer'])}", r["value"], "layerwise", DEFINITIONS["layerwise"]))
    for probe in ("knn", "linear"):
        sel = _mean_miou(rows, experiment="ade20k", probe=probe)
        if len(sel):
            out.append(_entry("segmentation", f"ADE20K {probe}", sel["value"].iloc[-1], "ade20k", DEFINITIONS["ade20k"]))
    for kind in ("blur", "noise", "freqnoise"):
        sel = _mean_miou(rows, experiment=f"degradation_{kind}", probe="knn")
        if len(sel):
            levels = sel["level"].str.rsplit("-", n=1).str[-1].astype(float)
            clean, strongest = sel[levels == 0], sel[levels == levels.max()]
            if len(clean) and len(strongest) and levels.max() > 0 and clean["value"].iloc[0] > 0:
                ratio = strongest["value"].iloc[0] / clean["value"].iloc[0]
                out.append(_entry("robustness", f"{kind} ({strongest['level'].iloc[0]}) / clean", ratio,
                                  "degradation", DEFINITIONS["degradation"]))
    retrieval = rows[(rows["experiment"] == "fair1m_retrieval") & (rows["metric"] == "share")]
    for level in ("rotate-10", "scale-0.8"):
        for cls in ("same_patch", "same_fine"):
            sel = retrieval[(retrieval["level"] == level) & (retrieval["class"] == cls)]
            if len(sel):
                out.append(_entry("retrieval", f"{cls} at {level}", sel["value"].iloc[0], "fair1m_retrieval",
                                  DEFINITIONS["retrieval"]))
    tracking = rows[(rows["experiment"] == "tracking") & (rows["metric"] == "acc_same_instance")
                    & rows["level"].astype(str).str.fullmatch(r"delta=\d+")]
    if len(tracking):
        at1 = tracking[tracking["level"] == "delta=1"]
        if len(at1):
            out.append(_entry("tracking", "same instance, delta 1", at1["value"].iloc[0], "tracking",
                              DEFINITIONS["tracking"]))
        out.append(_entry("tracking", "same instance, mean over delta", tracking["value"].mean(), "tracking",
                          DEFINITIONS["tracking"]))
    return out


def card_entries(model: str, rows: pd.DataFrame, main_train_set: str = "set4") -> pd.DataFrame:
    """Every entry of ``model``'s card from the concatenated rows of its CSVs."""
    mine = rows[rows["model"] == model].copy()
    for column in ("lo", "hi"):  # text in CSVs read back by concat_results; absent from other studies' rows
        mine[column] = pd.to_numeric(mine[column], errors="coerce") if column in mine else np.nan
    if not (mine["experiment"] == "card").any():
        raise ValueError(f"no 'card' experiment rows for model {model!r}")
    table = pd.DataFrame(_own(mine) + _read(mine, main_train_set))
    return table.assign(model=model)[["model", "section", "name", "value", "lo", "hi", "n_units", "source",
                                      "definition"]]
