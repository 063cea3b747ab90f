"""The published numbers of the study, and how their keys map onto ours.

The authors' numbers (``data/published_numbers.csv``, provenance in
``data/PUBLISHED_NUMBERS.md``) use their own vocabulary: ``sup_vit``,
``blur_2 (4px)``, the train set only inside the free-text ``setting``, ...
Our tidy results use the keys of this package. Matching the two is done here,
one small rule per experiment (``EXPERIMENTS``), so every convention is
written down once, tested, and visible to whoever writes a new experiment.

Our key of a number is ``KEY`` = (experiment, dataset, model, probe, layer,
level, class, metric). Conventions of our side:

- ``layer`` empty means the last block (``DEFAULT_LAYER``).
- ``probe`` is ``knn``, ``linear`` or ``none`` (retrieval, tracking, counts).
- ``metric`` never carries the ``_digitized`` suffix: how a published number
  was obtained is its ``kind``, not part of its name.
- ``class`` is ``""`` where a number has no class.
- ``model`` ``<key>-<m>`` is model ``<key>`` with its top-m variance dims
  removed (the paper's "MAE-200").
- ``level`` follows ``ExperimentRule.our_level`` of the experiment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

import pandas as pd

KEY = ("experiment", "dataset", "model", "probe", "layer", "level", "class", "metric")
PUBLISHED_COLUMNS = (
    "experiment", "dataset", "model", "probe", "setting", "level", "class", "metric", "value", "source",
)

#: Blocks of ViT-B: an empty layer on either side means this one.
DEFAULT_LAYER = 12

#: Frequency-noise bands in ``config.yaml`` (``degradations.frequency_bands``, high -> low).
N_FREQUENCY_BANDS = 4

#: The authors' model names that differ from our keys -> (our key, layer it implies).
MODEL_MAP: dict[str, tuple[str, int | None]] = {
    "sup_vit": ("supervised", None),
    "mae200": ("mae-200", None),
    "simmim_l7": ("simmim", 7),
}

#: Precision assumed for a raster-digitised number whose setting does not state one.
DEFAULT_RASTER_PRECISION = 0.005

_PRECISION = re.compile(r"APPROXIMATE \(\+-([0-9.]+)")
_LAYER = re.compile(r"\blayer=(\d+)")


def _match(pattern: str, text: str, what: str) -> re.Match[str]:
    found = re.search(pattern, text)
    if found is None:
        raise ValueError(f"published {what} {text!r} does not match {pattern!r}")
    return found


def _no_level(level: str, setting: str) -> str:
    return ""


def _same_level(level: str, setting: str) -> str:
    return level


def _train_set(level: str, setting: str) -> str:
    # '72' is ambiguous (set4 and set4_prime): the list file in `setting` is not.
    return _match(r"csv (set\w+)", setting, "train_size setting").group(1)


def _patch_accuracy_train_set(level: str, setting: str) -> str:
    # Both rows are the set4_prime run of computing_1NN.ipynb (cell10; cell32
    # reprints it in percent without naming the list), so no setting to parse.
    _match(r"^72$", level, "train_size_patch_accuracy level")
    return "set4_prime"


def _blur(level: str, setting: str) -> str:
    return "blur-" + _match(r"^blur_\d+ \((\d+)px\)$", level, "blur level").group(1)


def _noise(level: str, setting: str) -> str:
    return "noise-" + _match(r"^noise_\d+ \(sigma=(\d+)\)$", level, "noise level").group(1)


def _frequency(level: str, setting: str) -> str:
    # The authors number bands low -> high (4 = highest); our config lists them
    # high -> low and 'freqnoise-i' is its i-th band (1 = highest frequency).
    band = int(_match(r"^frequency_noise_(\d+)", level, "frequency-noise level").group(1))
    return f"freqnoise-{N_FREQUENCY_BANDS + 1 - band}"


def _removed_dims(level: str, setting: str) -> str:
    return _match(r"^(\d+)$", level, "variance-removal level").group(1)


def _rotation(level: str, setting: str) -> str:
    return "rotate-" + _match(r"^(\d+)deg$", level, "rotation level").group(1)


def _tracking(level: str, setting: str) -> str:
    # The paper's Fig 8 plots the authors' 720x1280 full-frame run; our default
    # protocol (3x5 tiles of 672x1120 frames) is their tiled run, so plain
    # 'delta=N' compares with the tiled curves and the full-frame ones get a prefix.
    if setting.startswith("frames 720x1280"):
        return f"full-720x1280:{level}"
    _match(r"^tiled inference", setting, "tracking setting")
    return level


def _full_vs_tile(level: str, setting: str) -> str:
    mode = _match(r"^(full|tiled) image", setting, "tracking_full_vs_tile setting").group(1)
    return f"{mode}:{level}"


@dataclass(frozen=True)
class ExperimentRule:
    """How one published experiment's levels map to ours, and what ours look like."""

    title: str  #: figure / table of the study, for report headings
    level: Callable[[str, str], str]  #: (published level, setting) -> our level
    our_level: str  #: regex (full match) every level of ours must satisfy
    doc: str  #: the convention in words


EXPERIMENTS: dict[str, ExperimentRule] = {
    "train_size": ExperimentRule(
        "Fig. 1 (train-set size)", _train_set, r"set\w+",
        "train-set name of config.yaml: set2 (36 imgs), set4 (72), set4_prime (72'), set8 (144)"),
    "train_size_patch_accuracy": ExperimentRule(
        "Fig. 1, patch accuracy", _patch_accuracy_train_set, r"set\w+", "as train_size"),
    "layerwise": ExperimentRule(
        "Fig. 2 (k-NN by layer)", _no_level, r"", "empty; the block is the layer column"),
    "layerwise_patch_accuracy": ExperimentRule(
        "Fig. 2, patch accuracy", _no_level, r"", "empty; the block is the layer column"),
    "degradation_blur": ExperimentRule(
        "Fig. 3 (blur)", _blur, r"blur-\d+", "blur-<box kernel px>: 'blur_2 (4px)' -> blur-4"),
    "degradation_noise": ExperimentRule(
        "Fig. 3 (Gaussian noise)", _noise, r"noise-\d+", "noise-<sigma>: 'noise_10 (sigma=10)' -> noise-10"),
    "degradation_freq": ExperimentRule(
        "Fig. 3 (frequency noise)", _frequency, r"freqnoise-\d+",
        "freqnoise-<i>, i-th band of degradations.frequency_bands (1 = highest frequency): "
        "'frequency_noise_4 (highest band)' -> freqnoise-1"),
    "feature_variance": ExperimentRule(
        "Fig. 4a (feature variance)", _no_level, r"", "empty"),
    "variance_removal": ExperimentRule(
        "Fig. 4b/4c (top-m dims removed)", _removed_dims, r"\d+", "<removed dims> as an integer: '200' -> 200"),
    "bn_standardized": ExperimentRule(
        "Fig. 4c (k-NN on BatchNorm-standardised features)", _no_level, r"", "empty"),
    "feature_variance_overlap": ExperimentRule(
        "Top-200 variance dims shared across datasets", _same_level, r"m=\d+",
        "m=<top dims compared>; dataset 'A vs B' counts |top(A) - top(B)|"),
    "fair1m_stats": ExperimentRule(
        "FAIR1M subset sizes (Fig. 6 denominators)", _no_level, r"", "empty"),
    "fair1m_rotation": ExperimentRule(
        "Fig. 6 (FAIR1M retrieval under rotation)", _rotation, r"rotate-\d+", "rotate-<degrees>: '5deg' -> rotate-5"),
    "fair1m_retrieval": ExperimentRule(
        "Fig. 6 (FAIR1M retrieval, every transform and degradation; nothing published)", _same_level,
        r"(shift|rotate|scale|blur|noise|freqnoise)-[0-9.]+",
        "the image variant: shift-<px>, rotate-<deg>, scale-<factor>, blur-<k>, noise-<sigma>, freqnoise-<band>"),
    "fair1m_retrieval_exclude_own": ExperimentRule(
        "Fig. 7 (FAIR1M retrieval, own source image excluded; nothing published)", _same_level,
        r"(shift|rotate|scale|blur|noise|freqnoise)-[0-9.]+", "as fair1m_retrieval"),
    "tracking": ExperimentRule(
        "Fig. 8 (BDD100K tracking)", _tracking, r"(full-720x1280:)?delta=\d+",
        "delta=<frame gap> for 3x5 tiles of 672x1120 frames (the authors' tiled run); "
        "full-720x1280:delta=<gap> for whole 720x1280 frames (the run plotted as the paper's Fig. 8)"),
    "tracking_full_vs_tile": ExperimentRule(
        "Table 5 / Fig. 12 (full image vs tiles)", _full_vs_tile, r"(full|tiled):delta=\d+",
        "full:delta=<gap> or tiled:delta=<gap>"),
    "tracking_mot17": ExperimentRule(
        "Fig. 9 (MOT17 tracking; no published numbers)", _same_level, r"delta=\d+",
        "delta=<frame gap> for 3x5 tiles of 672x1120 frames"),
    "cityscapes_full_vs_tile": ExperimentRule(
        "Table 5 / Fig. 12 (Cityscapes k-NN / linear, tiles vs full image; no published numbers)", _same_level,
        r"tiled|full", "tiled (4x8 tiles of 256 px) or full (the whole image, interpolated position embeddings)"),
    "scene_knn": ExperimentRule(
        "Fig. 5 (k-NN scene classification vs GSD; no published numbers)", _same_level,
        r"(cls|mean):px=\d+",
        "<representation>:px=<input size>, representation cls or mean (patch); model <key>-<m> "
        "without the top-m variance dims"),
    "reconstruction": ExperimentRule(
        "Table 4 (MAE reconstruction, top-m dims zeroed; no published numbers)", _same_level,
        r"mask=[0-9.]+:(intact|zeroed\d+)", "mask=<ratio>:intact or mask=<ratio>:zeroed<m>"),
}


def data_path() -> Path:
    """The shipped CSV, wherever the package is installed."""
    return Path(str(resources.files("vitlocal") / "data" / "published_numbers.csv"))


def load_published(path: str | Path | None = None) -> pd.DataFrame:
    """Read the published numbers (the shipped copy unless ``path`` is given)."""
    path = Path(path) if path is not None else data_path()
    table = pd.read_csv(path, dtype={"level": str, "class": str, "setting": str})
    missing = [c for c in PUBLISHED_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(PUBLISHED_COLUMNS)}")
    return table


def published_kind(metric: str, setting: str) -> tuple[str, float]:
    """How a published number was obtained, and its precision (0 when exact or vector)."""
    if metric.endswith("_digitized_png"):
        found = _PRECISION.search(setting)
        precision = float(found.group(1)) if found else DEFAULT_RASTER_PRECISION
        return f"digitised (±{precision:g}, raster)", precision
    if metric.endswith("_digitized"):
        return "digitised (vector)", 0.0
    return "exact", 0.0


def our_metric(metric: str) -> str:
    """Published metric name without its digitisation suffix."""
    return re.sub(r"_digitized(_png)?$", "", metric)


def our_probe(probe: str) -> str:
    """'none (nearest box)', 'none (1-NN retrieval)' -> 'none'; others unchanged."""
    return "none" if probe.startswith("none") else probe


def _our_model_and_layer(model: str, setting: str) -> tuple[str, int]:
    key, layer = MODEL_MAP.get(model, (model, None))
    if layer is None:
        found = _LAYER.search(setting)
        layer = int(found.group(1)) if found else DEFAULT_LAYER
    return key, layer


def rule(experiment: str) -> ExperimentRule:
    """The mapping rule of ``experiment``, or an error listing the known ones."""
    try:
        return EXPERIMENTS[experiment]
    except KeyError:
        raise ValueError(
            f"published experiment {experiment!r} has no key-mapping rule; "
            f"known: {', '.join(EXPERIMENTS)} (add one to vitlocal.published.EXPERIMENTS)"
        ) from None


def to_our_keys(published: pd.DataFrame) -> pd.DataFrame:
    """Published rows re-keyed in our vocabulary (``KEY``), with value, kind and provenance.

    The authors' original model / level / metric are kept as ``published_*``
    columns so every match can be traced back to the CSV row.
    """
    rows = []
    for row in published.to_dict("records"):
        setting = "" if pd.isna(row["setting"]) else str(row["setting"])
        level = "" if pd.isna(row["level"]) else str(row["level"])
        model, layer = _our_model_and_layer(row["model"], setting)
        kind, precision = published_kind(row["metric"], setting)
        rows.append({
            "experiment": row["experiment"],
            "dataset": row["dataset"],
            "model": model,
            "probe": our_probe(row["probe"]),
            "layer": layer,
            "level": rule(row["experiment"]).level(level, setting),
            "class": "" if pd.isna(row["class"]) else str(row["class"]),
            "metric": our_metric(row["metric"]),
            "published": float(row["value"]),
            "published_kind": kind,
            "published_precision": precision,
            "setting": setting,
            "source": row["source"],
            "published_model": row["model"],
            "published_level": level,
            "published_metric": row["metric"],
        })
    table = pd.DataFrame(rows)
    table["layer"] = table["layer"].astype("Int64")
    return table


def check_our_levels(ours: pd.DataFrame, origin: str) -> None:
    """Fail on levels that break an experiment's convention (they would never match)."""
    for experiment, group in ours.groupby("experiment", sort=True):
        if experiment not in EXPERIMENTS:
            continue  # a new experiment: nothing published to match
        pattern = EXPERIMENTS[experiment].our_level
        bad = sorted({lv for lv in group["level"] if not re.fullmatch(pattern, lv)})
        if bad:
            raise ValueError(
                f"{origin}: experiment {experiment!r} has level(s) {', '.join(map(repr, bad[:5]))}; "
                f"expected {EXPERIMENTS[experiment].doc} (regex {pattern!r})"
            )


KNOWN_INCONSISTENCIES = (
    "MAE's layerwise k-NN numbers repeat columns: layers 4 = 5, 8 = 9 = 10 and 11 = 12 are identical "
    "for every class, so parts of MAE's layer curve are flat steps rather than measurements.",
    "DINO's layer-12 k-NN mIoU is 0.345 in the layerwise data (Fig. 2) but 0.335 in the train-size data "
    "(Fig. 1, same set4 train set): two runs of the same setting disagree by 0.010.",
    "The paper's tracking figure plots a full-frame run at 720x1280 (`tracking`, levels "
    "`full-720x1280:delta=N`), which differs by up to 0.027 from the full-image curves at 672x1120 of "
    "`tracking_full_vs_tile`; the tiled protocol of our config compares with the authors' tiled run "
    "(`tracking`, levels `delta=N`).",
    "`training_set8.csv` has 144 rows but 142 distinct images; the authors trained on it as is.",
)

NOT_PUBLISHED = (
    "No ADE20K mIoU (Table 2), FAIR1M shift / blur / noise / scale, or 'exclude own image' (Fig. 7) "
    "numbers exist in the authors' material (never run or lost): those results have no published counterpart. "
    "Fig. 5 (scene k-NN vs GSD) and Table 4 (MAE reconstruction) have no published numbers either: they are "
    "listed here without a comparison."
)
