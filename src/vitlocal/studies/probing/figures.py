"""Figures and tables of the segmentation-probing study: Figs 1-3, Table 2, Fig 13, Table 1.

Writers follow ``vitlocal.plotting.figure_helpers``: ``<id>_data`` (the
numbers), ``draw_<id>`` (the Figure), ``<id>`` (writes both, returns the numbers).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ...datasets.cityscapes import CLASSES as CITYSCAPES_CLASSES
from ...plotting.figure_helpers import (
    PROBES,
    check_single_layer,
    check_unique,
    demo_flag,
    model_handles,
    probe_handles,
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
    style,
    write_csv,
)
from ...plotting.tables import write_latex, write_table

#: Train sets of Fig. 1 (config names) and their axis labels (images per city).
TRAIN_SET_LABELS: dict[str, str] = {"set2": "2", "set4": "4", "set4_prime": "4'", "set8": "8"}

#: Fig. 3 panels: experiment -> (variant kind of its levels, x-axis label, tick label format).
DEGRADATIONS: dict[str, tuple[str, str, str]] = {
    "degradation_blur": ("blur", "box blur kernel (px)", "{:g}"),
    "degradation_noise": ("noise", "Gaussian noise σ (0-255)", "{:g}"),
    "degradation_freq": ("freqnoise", "frequency-noise band (1 = highest)", "{:g}"),
}
CLEAN = "clean"

# --- Fig. 1: train-set size -------------------------------------------------------


def fig1_data(df: pd.DataFrame, dataset: str = "cityscapes") -> pd.DataFrame:
    """k-NN and linear mIoU per model and train set (``set2`` ... ``set8``, labelled 2, 4, 4', 8)."""
    rows = require_rows(tidy_rows(df, "fig1"), "fig1", experiment="train_size", dataset=dataset,
                        metric="miou", probe=PROBES)
    check_unique(rows, ("model", "probe", "level"), "fig1")
    check_single_layer(rows, "fig1")
    known = list(TRAIN_SET_LABELS)
    sets = sorted(set(rows["level"]), key=lambda s: (known.index(s) if s in known else len(known), s))
    data = rows[["model", "probe", "level", "value"]].copy()
    data["train_set"] = data["level"].map(lambda s: TRAIN_SET_LABELS.get(s, s))
    data["x"] = data["level"].map({s: i for i, s in enumerate(sets)})
    data = sort_models(data, "probe", "x")
    return with_provenance(data[["model", "probe", "level", "train_set", "x", "value"]], rows)


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
        ax.legend(handles=model_handles(models) + probe_handles(), loc="center left", bbox_to_anchor=(1.0, 0.5))
        set_title(fig, "Fig. 1 — k-NN vs linear probe by train-set size (Cityscapes val)", subtitle)
    return fig


def fig1(df: pd.DataFrame, out_pdf: str | Path, out_png: str | Path, out_csv: str | Path, *,
         demo: bool | None = None) -> pd.DataFrame:
    """Write Fig. 1 (PDF, PNG) and its CSV; return the plotted numbers."""
    data = fig1_data(df)
    return write_figure(draw_fig1(data, provenance_subtitle(data)), data, out_pdf, out_png, out_csv,
                         *demo_flag(data, demo))


# --- Fig. 2: layers ---------------------------------------------------------------------


def fig2_data(df: pd.DataFrame, dataset: str = "cityscapes") -> pd.DataFrame:
    """k-NN mIoU per model and layer over all / easy / hard classes, from per-class IoU rows.

    The group means are ``probing.class_group_miou`` (NaN IoUs and missing
    classes left out; ``n_classes`` says how many were averaged).
    """
    # Imported here: probing pulls in torch, which no other figure needs.
    from .compute import CLASS_GROUPS, class_group_miou, group_classes

    rows = require_rows(tidy_rows(df, "fig2"), "fig2", experiment="layerwise", dataset=dataset, metric="iou", probe="knn")
    unknown = sorted(set(rows["class"]) - set(CITYSCAPES_CLASSES))
    if unknown:
        raise ValueError(f"fig2: classes {unknown} are not Cityscapes trainId classes {list(CITYSCAPES_CLASSES)}")
    check_unique(rows, ("model", "layer", "class"), "fig2")
    try:
        rows = rows.assign(layer=rows["layer"].astype(int))
    except ValueError:
        raise ValueError(f"fig2: layerwise rows need an integer layer, got {sorted(set(rows['layer']))}") from None
    parts = [
        class_group_miou(rows, group).assign(group_size=len(group_classes(group, CITYSCAPES_CLASSES)))
        for group in CLASS_GROUPS
    ]
    data = pd.concat(parts, ignore_index=True).rename(columns={"class": "group"})
    data = sort_models(data, "layer")
    data["group"] = pd.Categorical(data["group"], categories=list(CLASS_GROUPS))
    data = data.sort_values("group", kind="stable").assign(group=lambda d: d["group"].astype(str))
    return with_provenance(data[["group", "model", "probe", "layer", "value", "n_classes", "group_size"]], rows)


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
        axes[-1].legend(handles=model_handles(model_order(data["model"])), loc="center left",
                        bbox_to_anchor=(1.0, 0.5))
        set_title(fig, "Fig. 2 — k-NN mIoU by layer (Cityscapes val)", subtitle)
    return fig


def fig2(df: pd.DataFrame, out_pdf: str | Path, out_png: str | Path, out_csv: str | Path, *,
         demo: bool | None = None) -> pd.DataFrame:
    """Write Fig. 2 (PDF, PNG) and its CSV; return the plotted numbers."""
    data = fig2_data(df)
    return write_figure(draw_fig2(data, provenance_subtitle(data)), data, out_pdf, out_png, out_csv,
                         *demo_flag(data, demo))


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
    tidy = tidy_rows(df, "fig3")
    rows = require_rows(tidy, "fig3", experiment=list(DEGRADATIONS), dataset=dataset, metric="miou", probe=PROBES)
    is_clean = rows["level"].str.fullmatch(r"clean|[a-z]+-0(\.0*)?")
    clean, degraded = rows[is_clean], rows[~is_clean]
    check_unique(rows, ("experiment", "model", "probe", "level"), "fig3")
    check_single_layer(degraded, "fig3")
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
                         & tidy["probe"].isin(PROBES) & tidy["model"].isin(set(panel["model"]))]
            check_unique(train, ("model", "probe"), "fig3 clean reference (train_size)")
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
    data = sort_models(data, "panel", "probe", "x")
    data["panel"] = pd.Categorical(data["panel"], categories=[k for k, _, _ in DEGRADATIONS.values()])
    data = data.sort_values("panel", kind="stable").assign(panel=lambda d: d["panel"].astype(str))
    columns = ["panel", "model", "probe", "level", "x", "x_label", "value", "source"]
    return with_provenance(data[columns], pd.concat(used, ignore_index=True))


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
        axes[-1].legend(handles=model_handles(model_order(data["model"])) + probe_handles(),
                        loc="center left", bbox_to_anchor=(1.0, 0.5))
        set_title(fig, "Fig. 3 — robustness to image degradations (Cityscapes val degraded, train clean)", subtitle)
    return fig


def fig3(df: pd.DataFrame, out_pdf: str | Path, out_png: str | Path, out_csv: str | Path, *,
         demo: bool | None = None, clean_train_set: str = "set4") -> pd.DataFrame:
    """Write Fig. 3 (PDF, PNG) and its CSV; return the plotted numbers."""
    data = fig3_data(df, clean_train_set=clean_train_set)
    return write_figure(draw_fig3(data, provenance_subtitle(data)), data, out_pdf, out_png, out_csv,
                         *demo_flag(data, demo))


# --- Table 2: ADE20K -----------------------------------------------------------------


def table2_data(df: pd.DataFrame, dataset: str = "ade20k") -> pd.DataFrame:
    """One row per model: k-NN and linear mIoU on ADE20K."""
    rows = require_rows(tidy_rows(df, "table2"), "table2", dataset=dataset, metric="miou", probe=PROBES)
    check_unique(rows, ("model", "probe"), "table2")
    check_single_layer(rows, "table2")
    wide = rows.pivot(index="model", columns="probe", values="value").reindex(columns=list(PROBES))
    wide = wide.reindex(model_order(wide.index)).reset_index()
    wide.insert(1, "label", wide["model"].map(model_label))
    wide.columns.name = None
    return with_provenance(wide, rows)


def table2(df: pd.DataFrame, out_csv: str | Path, out_tex: str | Path, *, demo: bool | None = None) -> pd.DataFrame:
    """Write Table 2 (CSV + LaTeX); return it."""
    data = table2_data(df)
    is_demo, subject = demo_flag(data, demo)
    caption = f"ADE20K k-NN and linear-probe mIoU per model ({provenance_subtitle(data.assign(probe='knn'))})."
    write_table(data, out_csv, out_tex, caption, "tab:table2",
                columns={"label": "Model", "knn": "k-NN mIoU", "linear": "linear mIoU"},
                demo=is_demo, demo_subject=subject)
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
            for probe in PROBES:
                if (model, probe) not in entry:
                    raise ValueError(f"{npz_path}: missing key '{model}__{probe}__{index}'")
                accuracy, n = _pixel_accuracy(entry[(model, probe)], entry["gt"])
                rows.append({"image": index, "model": model, "probe": probe, "pixel_acc": accuracy, "n_pixels": n})
    return pd.DataFrame(rows)


def draw_fig13(npz_path: str | Path, data: pd.DataFrame, subtitle: str = "") -> Figure:
    images, models = _load_qualitative(npz_path)
    palette = cityscapes_palette()
    columns = [("image", None), ("gt", None)] + [(m, p) for m in models for p in PROBES]
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
        set_title(fig, "Fig. 13 — k-NN and linear-probe predictions (Cityscapes val)", subtitle)
    return fig


def fig13(
    npz_path: str | Path, out_pdf: str | Path, out_png: str | Path, out_csv: str | Path, *,
    preset: str, knn_metric: str, demo: bool, demo_subject: str | None = None,
) -> pd.DataFrame:
    """Write Fig. 13 from an .npz of label maps (trainIds) and its CSV of panel accuracies."""
    data = fig13_data(npz_path).assign(preset=preset, knn_metric=knn_metric)
    fig = draw_fig13(npz_path, data, provenance_subtitle(data.assign(probe="knn")))
    return write_figure(fig, data, out_pdf, out_png, out_csv, demo, demo_subject)


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
