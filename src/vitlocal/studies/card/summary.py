"""The card's entries: its own diagnostics plus what the other studies' CSVs say about the model.

One entry per number: ``section``, ``name``, ``value``, ``lo``/``hi`` (the 95 %
percentile bootstrap interval over evaluation units), ``n_units``, ``source``
(the experiment) and ``definition`` (the one sentence printed on the card).

A number read from another study's CSV gets its interval from the per-unit
statistics that experiment writes beside its CSV (``evaluation.units``), by
the same statistic as the CSV's number (which it must reproduce): an mIoU of
the resampled images' summed tp / gt / pred per class (ADE20K: classes with
ground truth only); a degradation ratio with the images resampled in pairs
(each draw takes an image clean and degraded); a retrieval share over query
crops; a tracking accuracy over videos, the mean over deltas with the videos
resampled jointly for every delta. No probe is rerun. The best layer is a
description and has no interval.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np
import pandas as pd

from vitlocal.evaluation.units import PIXELS, miou_of_stats, pivot_units, segmentation_array

from ..probing import DEGRADATION_EXPERIMENTS
from .bootstrap import DEFAULT_RESAMPLES, bootstrap, ratio_of

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
    "layerwise_best": ("Layer of highest k-NN mIoU on the val images (a description: nothing is selected with it; "
                       "no interval, each layer's mIoU has one)."),
    "layerwise": "k-NN mIoU at this layer (Fig 2 protocol; interval over val images).",
    "train_size": "mIoU on Cityscapes val at the last layer, main train set (Fig 1 protocol; interval over val images).",
    "ade20k": "mIoU on ADE20K val at the last layer (Table 2 protocol; interval over val images).",
    "degradation": ("mIoU at the strongest configured level divided by the clean mIoU (Fig 3 protocol; interval "
                    "over val images, each drawn at both levels)."),
    "retrieval": ("Share of FAIR1M query patches whose nearest gallery patch is the same patch / same fine class "
                  "(Fig 6; interval over query crops)."),
    "tracking": "Same-instance accuracy of nearest-neighbour box matching (Fig 8 protocol; interval over videos).",
    "tracking_mean": ("Same-instance accuracy averaged over the configured deltas (Fig 8 protocol; interval over "
                      "videos, resampled jointly for every delta)."),
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


class _Units:
    """The model's per-unit statistics (``evaluation.units``) and the bootstrap settings of the read numbers."""

    def __init__(self, units: pd.DataFrame | None, resamples: int, seed: int):
        self.rows = units
        self.boot = {"resamples": int(resamples), "seed": int(seed)}

    def select(self, **match: Any) -> pd.DataFrame | None:
        """The sidecar rows of one CSV number (None: no sidecar rows for it)."""
        if self.rows is None:
            return None
        sel = self.rows
        for key, value in match.items():
            sel = sel[sel[key] == value]
        return sel if len(sel) else None

    def interval(self, value: float, per_unit: np.ndarray | None, statistic, what: str) -> dict[str, Any]:
        """``lo``, ``hi``, ``n_units`` of a read number; its per-unit statistics must give the CSV's ``value``."""
        if per_unit is None:
            return {}
        out = bootstrap(per_unit, statistic, **self.boot)
        if not np.isclose(out.value, value, rtol=1e-9, atol=1e-12, equal_nan=True):
            raise ValueError(f"{what}: the per-unit statistics give {out.value!r} but the CSV says {value!r}: the "
                             "sidecar and the CSV disagree (rerun the experiment that wrote them)")
        return {"lo": out.lo, "hi": out.hi, "n_units": out.n_units}

    def miou(self, row: Mapping[str, Any], present_only: bool = False) -> dict[str, Any]:
        """The interval of one mIoU row of a segmentation CSV (``present_only``: ADE20K's classes with ground truth)."""
        sel = self.select(experiment=row["experiment"], probe=row["probe"], layer=row["layer"], level=row["level"])
        stats = None if sel is None else segmentation_array(sel)[0]
        return self.interval(row["value"], stats, lambda s: miou_of_stats(s, present_only),
                             f"{row['experiment']} {row['probe']} layer {row['layer']} {row['level']!r} mIoU")


def _ratio_stat(sums: np.ndarray) -> float:
    """Strongest level's mIoU over the clean one's, of a paired (2, C, 3) sum: [clean, strongest]."""
    clean = miou_of_stats(sums[0])
    return miou_of_stats(sums[1]) / clean if clean > 0 else float("nan")


def _degradation(units: _Units, clean: Mapping[str, Any], strongest: Mapping[str, Any], ratio: float, what: str):
    """Interval of strongest / clean with the images resampled in pairs: each draw takes an image at both levels."""
    key = {"experiment": clean["experiment"], "probe": clean["probe"], "layer": clean["layer"]}
    a, b = units.select(**key, level=clean["level"]), units.select(**key, level=strongest["level"])
    if a is None or b is None:
        return {}
    ids = segmentation_array(a)[1]
    if set(ids) != set(segmentation_array(b)[1]):
        raise ValueError(f"{what}: the clean and the degraded sidecar rows cover different images")
    classes = [c for c in dict.fromkeys([*a["class"], *b["class"]]) if c != PIXELS[0]]
    paired = np.stack([segmentation_array(a, ids, classes)[0], segmentation_array(b, ids, classes)[0]], axis=1)
    return units.interval(ratio, paired, _ratio_stat, what)


def _mean_ratio(sums: np.ndarray) -> float:
    """Mean over levels of ``sums[g, 0] / sums[g, 1]`` (levels with a zero denominator left out)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        ratios = np.where(sums[:, 1] > 0, sums[:, 0] / sums[:, 1], np.nan)
    return float(np.mean(ratios[np.isfinite(ratios)])) if np.isfinite(ratios).any() else float("nan")


def _read(rows: pd.DataFrame, main_train_set: str, units: _Units) -> list[dict[str, Any]]:
    out = []
    for probe in ("knn", "linear"):
        sel = _mean_miou(rows, experiment="train_size", probe=probe, level=main_train_set)
        if len(sel):
            row = sel.iloc[-1]
            out.append(_entry("segmentation", f"Cityscapes {probe}", row["value"], "train_size",
                              DEFINITIONS["train_size"], **units.miou(row)))
    layerwise = _mean_miou(rows, experiment="layerwise", probe="knn").dropna(subset=["layer"])
    if len(layerwise):
        best = layerwise.loc[layerwise["value"].idxmax()]
        out.append(_entry("segmentation", "best k-NN layer", int(best["layer"]), "layerwise",
                          DEFINITIONS["layerwise_best"]))
        for _, r in layerwise.sort_values("layer").iterrows():
            out.append(_entry("layers", f"layer {int(r['layer'])}", r["value"], "layerwise", DEFINITIONS["layerwise"],
                              **units.miou(r)))
    for probe in ("knn", "linear"):
        sel = _mean_miou(rows, experiment="ade20k", probe=probe)
        if len(sel):
            row = sel.iloc[-1]
            out.append(_entry("segmentation", f"ADE20K {probe}", row["value"], "ade20k", DEFINITIONS["ade20k"],
                              **units.miou(row, present_only=True)))
    for kind, experiment in DEGRADATION_EXPERIMENTS.items():
        sel = _mean_miou(rows, experiment=experiment, probe="knn")
        if len(sel):
            levels = sel["level"].str.rsplit("-", n=1).str[-1].astype(float)
            clean, strongest = sel[levels == 0], sel[levels == levels.max()]
            if len(clean) and len(strongest) and levels.max() > 0 and clean["value"].iloc[0] > 0:
                ratio = strongest["value"].iloc[0] / clean["value"].iloc[0]
                name = f"{kind} ({strongest['level'].iloc[0]}) / clean"
                out.append(_entry("robustness", name, ratio, "degradation", DEFINITIONS["degradation"],
                                  **_degradation(units, clean.iloc[0], strongest.iloc[0], ratio, name)))
    retrieval = rows[(rows["experiment"] == "fair1m_retrieval") & (rows["metric"] == "share")]
    for level in ("rotate-10", "scale-0.8"):
        for cls in ("same_patch", "same_fine"):
            sel = retrieval[(retrieval["level"] == level) & (retrieval["class"] == cls)]
            if len(sel):
                found = units.select(experiment="fair1m_retrieval", level=level)
                counts = None if found is None else pivot_units(found, [(cls, "count"), ("queries", "count")])[0]
                out.append(_entry("retrieval", f"{cls} at {level}", sel["value"].iloc[0], "fair1m_retrieval",
                                  DEFINITIONS["retrieval"], **units.interval(sel["value"].iloc[0], counts, ratio_of,
                                                                             f"retrieval {cls} at {level}")))
    tracking = rows[(rows["experiment"] == "tracking") & (rows["metric"] == "acc_same_instance")
                    & rows["level"].astype(str).str.fullmatch(r"delta=\d+")]
    if len(tracking):
        columns = [("all", "pair_acc_instance"), ("all", "pairs")]
        videos = units.select(experiment="tracking")
        per_level = None
        if videos is not None:
            ids = pivot_units(videos, columns)[1]
            per_level = [pivot_units(videos[videos["level"] == level], columns, ids)[0] for level in tracking["level"]]
        at1 = tracking[tracking["level"] == "delta=1"]
        if len(at1):
            stats = None if per_level is None else per_level[list(tracking["level"]).index("delta=1")]
            out.append(_entry("tracking", "same instance, delta 1", at1["value"].iloc[0], "tracking",
                              DEFINITIONS["tracking"], **units.interval(at1["value"].iloc[0], stats, ratio_of,
                                                                        "tracking at delta 1")))
        mean = tracking["value"].mean()
        stats = None if per_level is None else np.stack(per_level, axis=1)  # (videos, deltas, 2): resampled jointly
        out.append(_entry("tracking", "same instance, mean over delta", mean, "tracking", DEFINITIONS["tracking_mean"],
                          **units.interval(mean, stats, _mean_ratio, "tracking, mean over delta")))
    return out


def card_entries(model: str, rows: pd.DataFrame, main_train_set: str = "set4", units: pd.DataFrame | None = None,
                 resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> pd.DataFrame:
    """Every entry of ``model``'s card from the concatenated rows of its CSVs; ``units``: the per-unit statistics
    beside the CSVs it reads (``evaluation.units.read_units``), which give the read numbers their intervals
    (``resamples`` seeded with ``seed``; without them a read number has none)."""
    mine = rows[rows["model"] == model].copy()
    for column in ("lo", "hi"):  # text in CSVs read back by concat_results; absent from other studies' rows
        mine[column] = pd.to_numeric(mine[column], errors="coerce") if column in mine else np.nan
    if not (mine["experiment"] == "card").any():
        raise ValueError(f"no 'card' experiment rows for model {model!r}")
    own_units = None if units is None else units[units["model"] == model]
    table = pd.DataFrame(_own(mine) + _read(mine, main_train_set, _Units(own_units, resamples, seed)))
    return table.assign(model=model)[["model", "section", "name", "value", "lo", "hi", "n_units", "source",
                                      "definition"]]
