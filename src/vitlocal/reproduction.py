"""Our numbers beside the published ones: the reproduction report.

Experiments write tidy CSVs (``TIDY_COLUMNS``, one row per number). This
module joins them with the authors' numbers (``vitlocal.published``) on
``KEY`` and writes ``results/<preset>/report/reproduction.md``: one table per
experiment with ours, published, the difference and how the published number
was obtained, plus per-experiment summaries. Demo output (synthetic data or
random weights) carries a banner saying its numbers are not results.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

import pandas as pd

from . import __version__
from .published import (
    EXPERIMENTS,
    DEFAULT_LAYER,
    KEY,
    KNOWN_INCONSISTENCIES,
    NOT_PUBLISHED,
    check_our_levels,
    load_published,
    to_our_keys,
)

PROVENANCE = ("preset", "weights", "knn_metric", "patch_labels", "data")
TIDY_COLUMNS = (*KEY, "value", *PROVENANCE)
DATA_SOURCES = ("synthetic", "official", "mixed")

#: Row status in the comparison.
COMPARED, NO_COUNTERPART, NOT_COMPUTED = "compared", "no published counterpart", "not computed"
#: Status of a Fig 6 count: listed beside its share, which is what is compared (``fig6_published_shares``).
SHOWN = "count shown beside its share"
FIG6 = "fair1m_rotation"

#: Default tolerance of "within tolerance": max(ATOL, RTOL * |published|) + digitisation precision.
ATOL, RTOL = 0.01, 0.01

#: Keeps a difference of exactly the tolerance inside it despite float rounding.
_FLOAT_SLACK = 1e-9

LINEAR_PROBE_NOTE = (
    "Linear probes here are trained with a fixed schedule (config `probes.linear_*`). The authors "
    "selected their linear-probe checkpoint on the very validation images they reported, which "
    "favours their numbers; linear-probe results are therefore expected to differ, mostly downwards."
)


#: Parts of the study whose experiments the report introduces together: heading -> (experiments, notes).
STUDY_PARTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "Scene classification across ground sample distances (Fig. 5)": (
        ("scene_knn",),
        (
            "Fig. 5 repeats Scale-MAE's own k-NN evaluation (`mae/eval/knn.py`): each image area-interpolated "
            "to `input_px` and fed at that size, Scale-MAE with `input_res = base x 224 / size`, MAE and DINO "
            "with their position embedding interpolated; L2-normalised features, 20 nearest by cosine, votes "
            "weighted exp(sim / 0.07). Known differences from the authors: 32 and 64 px stand for 12.5 % and "
            "25 % of 224 px (28, 56 px are not multiples of the 16-px patch); UC Merced's off-size images are "
            "area-interpolated directly (Scale-MAE first resizes them bilinearly to 256 x 256); the split is "
            "stratified and seeded (`scene.train_fraction`), Scale-MAE's a random 90/10; exact vote ties go to "
            "the lowest label (Scale-MAE leaves them to torch's sort).",
        ),
    ),
    "Section 5 — FAIR1M object-patch retrieval (Figs. 6, 7, 11, Table 3)": (
        ("fair1m_stats", "fair1m_rotation", "fair1m_retrieval", "fair1m_retrieval_exclude_own"),
        (
            "Queries are the object patches of each transformed crop, labelled from the transformed boxes, so "
            "their number changes with the transform. The authors' query count (5,850; 7,623 on DINOv2's "
            "16x16 grid) is the same at every rotation: it is the object patches of the clean crops, which is "
            "what `fair1m_stats` / `count_nonbg_query_patches` counts here. Fig. 6 is therefore compared as "
            "shares of the queries (`share_*`: ours of `count_queries` at that rotation, theirs of their fixed "
            "count); the counts and both query counts are listed beside them, without a difference.",
            "`count_same_finegrained_class` counts same patch or same fine class, `count_same_supercategory` "
            "adds the same super class (cumulative, as the authors counted); the figures show the exclusive "
            "categories same patch > same fine > same super > other object > background.",
            "Fig. 7 (`fair1m_retrieval_exclude_own`) masks the query's own 224-px crop (the paper's \"image\": "
            "295 images of 196 patches) out of the gallery, or with `retrieval.exclude_own: scene` every crop of "
            "its FAIR1M scene (rows' `settings`); no published numbers exist for it, nor for shifts, scales, blur "
            "or noise.",
        ),
    ),
    "Denoising ViT — raw vs DVT-denoised features on each study's task (table_dvt; not in the paper)": (
        ("dvt_ade20k", "dvt_cityscapes", "dvt_retrieval", "dvt_robustness", "dvt_tracking"),
        (
            "Each `dvt_*` experiment runs its study's own computation twice in one job, on the raw last-layer "
            "features and on the stage-2 denoiser's output for the same patches (level `raw` / `dvt`, or "
            "`raw:<level>` / `dvt:<level>`); the paper has no numbers for them, so they are listed, not "
            "compared. `table_dvt` sums them up with the difference.",
            "Known differences from the DVT authors' code: stage 1 fits this study's 224-px tiles of the "
            "configured training subsets (`dvt.stage1_subsets`, `dvt.stage1_tiles` per dataset), not their "
            "10,000 VOC images at 518/512 px; the field's grids are stored densely and end at the tile's pixel "
            "size (`dvt.stage1.max_resolution: auto`), not hashed up to 1024 cells; Adam's weight decay is "
            "their effective 1e-5 / 1024 (their GradScaler'd gradients are never unscaled) and the field MLP "
            "theirs (128 -> C/2 -> C). A released denoiser of theirs (`dvt.checkpoints`) was trained at "
            "518/512 px and is applied here at 224 px: its rows say `dvt_source: released@518` (or @512).",
        ),
    ),
    "Section 6 — object tracking on BDD100K and MOT17 (Figs. 8, 9, 12, Table 5)": (
        ("tracking", "tracking_mot17", "tracking_full_vs_tile", "cityscapes_full_vs_tile"),
        (
            "Each annotated box of frame t is pooled by ROIAlign 7x7 on the frame's patch grid (tiles stitched "
            "back), flattened, and matched to the most similar box of frame t + Δ (similarity: `knn_metric`). "
            "Crowd / distractor boxes (BDD100K) and non-pedestrian or `consider = 0` boxes (MOT17) are neither "
            "queries nor candidates; an object absent at t + Δ is no query. Accuracy is averaged over frame "
            "pairs, as the authors did; the per-query pooled accuracy is in each row's `settings`.",
            "All published tracking numbers are digitised from the authors' vector plots of BDD100K (first 4 "
            "val videos). Our default run (3x5 tiles of 672x1120 frames) compares with their tiled run "
            "(`delta=N`), published for all five models of the paper preset (supervised, DINO, DINOv2, MAE, "
            "SimMIM); the paper's Fig. 8 plots a whole-frame 720x1280 run (`full-720x1280:delta=N`, DINO, "
            "DINOv2 and MAE only), listed as not computed, as are Table 5's tracking rows of supervised and "
            "SimMIM, which have no published counterpart. MOT17 (Fig. 9) and the Cityscapes part of Table 5 "
            "have no published numbers.",
            "ROIAlign runs with torchvision's `aligned=False`, as the authors called it (`tracking.roi_aligned`, "
            "recorded in each row's `settings`). Whole frames of DINOv2 (48x80 patches) get the checkpoint's "
            "own 37x37 position embedding resampled once, not the 16x16 copy of the 224-px build.",
        ),
    ),
}

#: Titles of experiments the paper has no numbers for, by name.
EXTRA_TITLES = {
    "dvt_cityscapes": "DVT: Cityscapes k-NN and linear probe, raw vs denoised (last layer)",
    "dvt_ade20k": "DVT: ADE20K k-NN and linear probe (Table 2 protocol), raw vs denoised",
    "dvt_robustness": "DVT: Fig. 3 degradations, raw vs denoised (levels raw:<variant> / dvt:<variant>)",
    "dvt_retrieval": "DVT: Fig. 6 FAIR1M retrieval, raw vs denoised",
    "dvt_tracking": "DVT: Fig. 8 BDD100K tracking, raw vs denoised",
}


def read_results(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Concatenate tidy result CSVs, checking columns and level conventions per file."""
    tables = []
    for path in map(Path, paths):
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        missing = [c for c in TIDY_COLUMNS if c not in table.columns]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; tidy results need {', '.join(TIDY_COLUMNS)}")
        check_our_levels(table, str(path))
        table["value"] = pd.to_numeric(table["value"], errors="raise")
        table["layer"] = pd.to_numeric(table["layer"].replace("", None), errors="raise").astype("Int64")
        tables.append(table[list(TIDY_COLUMNS)])
    if not tables:
        return pd.DataFrame({c: pd.Series(dtype="Int64" if c == "layer" else object) for c in TIDY_COLUMNS})
    return pd.concat(tables, ignore_index=True)


def _normalise_ours(ours: pd.DataFrame) -> pd.DataFrame:
    ours = ours.copy()
    for column in ("level", "class"):
        ours[column] = ours[column].fillna("").astype(str)
    ours["layer"] = pd.array(ours["layer"], dtype="Int64").fillna(DEFAULT_LAYER)
    return ours.rename(columns={"value": "ours"})


def compare(ours: pd.DataFrame, published: pd.DataFrame, *, atol: float = ATOL, rtol: float = RTOL) -> pd.DataFrame:
    """Join our tidy rows with the published ones on ``KEY``.

    Every row of ours is kept (``published`` empty when it has no counterpart);
    published rows of experiments we ran but without our number are listed as
    "not computed"; experiments we did not run are left out. ``difference`` is
    ours − published; ``within_tolerance`` uses
    ``|difference| <= max(atol, rtol·|published|) + published_precision``.
    An empty ``layer`` (ours) means the last block.
    """
    ours = _normalise_ours(ours)
    theirs = to_our_keys(published)
    theirs = pd.concat([theirs, fig6_published_shares(theirs)], ignore_index=True)
    theirs = theirs[theirs["experiment"].isin(set(ours["experiment"]))]
    joined = ours.merge(theirs, on=list(KEY), how="outer", indicator=True)
    joined["status"] = joined["_merge"].map(
        {"both": COMPARED, "left_only": NO_COUNTERPART, "right_only": NOT_COMPUTED}
    ).astype(str)
    joined = joined.drop(columns="_merge")
    counts = (joined["experiment"] == FIG6) & joined["metric"].str.startswith("count_") & (joined["status"] == COMPARED)
    joined.loc[counts, "status"] = SHOWN
    joined["difference"] = (joined["ours"] - joined["published"]).where(~counts)
    joined["tolerance"] = (rtol * joined["published"].abs()).clip(lower=atol) + joined["published_precision"]
    within = joined["difference"].abs() <= joined["tolerance"] + _FLOAT_SLACK
    joined["within_tolerance"] = within.astype("boolean").where(joined["status"] == COMPARED)
    order = _experiment_order(joined["experiment"])
    joined = joined.assign(_order=joined["experiment"].map(order), _level=joined["level"].map(_natural))
    columns = ["_order", *("_level" if c == "level" else c for c in KEY)]
    joined = joined.sort_values(columns, kind="stable").drop(columns=["_order", "_level"])
    return joined.reset_index(drop=True)


def fig6_published_shares(theirs: pd.DataFrame) -> pd.DataFrame:
    """Published Fig 6 counts as ``share_*`` of the authors' queries, and those queries as ``count_queries``.

    The authors divided by one query count per model (``fair1m_stats`` /
    ``count_nonbg_query_patches``: 5,850; 7,623 on DINOv2's 16x16 grid), the
    same at every rotation; ours is the object patches of each rotated crop.
    Counts with different denominators do not compare; shares do.
    """
    counts = theirs[(theirs["experiment"] == FIG6) & theirs["metric"].str.startswith("count_")]
    totals = theirs[(theirs["experiment"] == "fair1m_stats") & (theirs["metric"] == "count_nonbg_query_patches")]
    totals = totals.drop_duplicates(["model", "published"])
    if totals["model"].duplicated().any():
        twice = sorted(totals["model"][totals["model"].duplicated()])
        raise ValueError(f"published count_nonbg_query_patches disagree for {twice}")
    missing = sorted(set(counts["model"]) - set(totals["model"]))
    if missing:
        raise ValueError(f"published {FIG6} counts of {missing} have no count_nonbg_query_patches to divide by")
    denominator = counts["model"].map(totals.set_index("model")["published"])
    shares = counts.assign(metric="share" + counts["metric"].str[len("count"):],
                           published=counts["published"] / denominator,
                           published_metric=counts["published_metric"] + " / count_nonbg_query_patches")
    queries = counts.assign(metric="count_queries", published=denominator,
                            published_metric="count_nonbg_query_patches (fair1m_stats)")
    return pd.concat([shares, queries.drop_duplicates(list(KEY))], ignore_index=True)


def _natural(level: str) -> str:
    """Sort key putting delta=5 before delta=11 and m=50 before m=100."""
    return re.sub(r"\d+", lambda number: number.group().zfill(10), level)


def _experiment_order(experiments: pd.Series) -> dict[str, int]:
    """The study's order (``EXPERIMENTS``), then new experiments alphabetically."""
    known = [e for e in EXPERIMENTS if e in set(experiments)]
    new = sorted(set(experiments) - set(EXPERIMENTS))
    return {e: i for i, e in enumerate(known + new)}


def summarise(comparison: pd.DataFrame) -> pd.DataFrame:
    """Per experiment and metric: counts, mean / max |difference|, within-tolerance share."""
    rows = []
    for (experiment, metric), group in comparison.groupby(["experiment", "metric"], sort=False):
        compared = group[group["status"] == COMPARED]
        abs_diff = compared["difference"].abs()
        rows.append({
            "experiment": experiment,
            "metric": metric,
            "compared": len(compared),
            "mean_abs_difference": abs_diff.mean(),  # NaN when nothing was compared
            "max_abs_difference": abs_diff.max(),
            "within_tolerance": compared["within_tolerance"].astype(float).mean(),
            "no_published_counterpart": int((group["status"] == NO_COUNTERPART).sum()),
            "not_computed": int((group["status"] == NOT_COMPUTED).sum()),
        })
    return pd.DataFrame(rows)


def demo_subject(data_source: str, weights_summary: str) -> str | None:
    """What makes an output a demo ("synthetic data", "random weights", both), or None."""
    if data_source not in DATA_SOURCES:
        raise ValueError(f"data_source {data_source!r}: expected one of {', '.join(DATA_SOURCES)}")
    parts = []
    if data_source != "official":
        parts.append("synthetic data")
    if "random" in weights_summary.lower():
        parts.append("random weights")
    return " and ".join(parts) or None


def demo_banner(subject: str) -> str:
    """The sentence every demo report and paper starts with."""
    return (
        f"DEMO OUTPUT — {subject}. These numbers are not results of the study "
        "and are not comparable to the published ones."
    )


def _fmt(value: float, signed: bool = False) -> str:
    if pd.isna(value):
        return "—"
    sign = "+" if signed else ""
    if float(value).is_integer() and abs(value) >= 1:
        return f"{value:{sign}.0f}"
    if abs(value) >= 100:
        return f"{value:{sign}.1f}"
    return f"{value:{sign}.3f}"


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def _comparison_table(group: pd.DataFrame) -> list[str]:
    header = ["dataset", "model", "probe", "layer", "level", "class", "metric", "ours", "published", "diff", "kind"]
    rows = []
    for row in group.to_dict("records"):
        if row["status"] == NOT_COMPUTED:
            ours = "not computed"
        else:
            ours = _fmt(row["ours"])
        kind = row["published_kind"] if isinstance(row["published_kind"], str) else "—"
        rows.append([
            row["dataset"], row["model"], row["probe"], str(row["layer"]), row["level"] or "—",
            row["class"] or "—", row["metric"], ours, _fmt(row["published"]),
            _fmt(row["difference"], signed=True), kind,
        ])
    return _markdown_table(header, rows)


def _summary_lines(summary: pd.DataFrame, with_experiment: bool = True) -> list[str]:
    header = ["experiment", "metric", "compared", "mean abs diff", "max abs diff", "within tolerance",
              "no published counterpart", "not computed"]
    rows = [[
        s["experiment"], s["metric"], str(s["compared"]), _fmt(s["mean_abs_difference"]),
        _fmt(s["max_abs_difference"]),
        "—" if pd.isna(s["within_tolerance"]) else f"{100 * s['within_tolerance']:.0f} %",
        str(s["no_published_counterpart"]), str(s["not_computed"]),
    ] for s in summary.to_dict("records")]
    if not with_experiment:
        header, rows = header[1:], [r[1:] for r in rows]
    return _markdown_table(header, rows)


def _provenance_line(group: pd.DataFrame) -> str:
    ours = group[group["status"] != NOT_COMPUTED]
    parts = []
    for column in ("weights", "knn_metric", "patch_labels", "data"):
        values = sorted({str(v) for v in ours[column].dropna() if str(v)})
        parts.append(f"{column}: {', '.join(values) or '—'}")
    return "Ours — " + "; ".join(parts) + "."


def _published_provenance(group: pd.DataFrame) -> list[str]:
    settings = sorted(group["setting"].dropna().unique())
    files = sorted({str(s).split(" ")[0] for s in group["source"].dropna()})
    if not settings:
        return ["No published counterpart."]
    lines = ["Published settings:", ""] + [f"- {s}" for s in settings]
    return lines + ["", "Published sources: " + ", ".join(f"`{f}`" for f in files) + "."]


def _experiment_section(experiment: str, group: pd.DataFrame, summary: pd.DataFrame) -> list[str]:
    title = EXPERIMENTS[experiment].title if experiment in EXPERIMENTS else EXTRA_TITLES.get(experiment,
                                                                                             "new experiment")
    lines = [f"## `{experiment}` — {title}", "", _provenance_line(group), ""]
    lines += _summary_lines(summary[summary["experiment"] == experiment], with_experiment=False) + [""]
    lines += _comparison_table(group) + [""]
    return lines + _published_provenance(group) + [""]


def render_report(
    comparison: pd.DataFrame,
    *,
    preset: str,
    data_source: str,
    weights_summary: str,
    sources: list[str],
    published: pd.DataFrame,
) -> str:
    """The Markdown text of the report (pure: same inputs, same text)."""
    subject = demo_subject(data_source, weights_summary)
    lines = []
    if subject:
        lines += [f"**{demo_banner(subject)}**", ""]
    lines += [
        f"# Reproduction report — preset `{preset}`", "",
        f"- Data: {data_source}", f"- Weights: {weights_summary}",
        f"- Generated by vitlocal {__version__} from: " + (", ".join(f"`{s}`" for s in sources) or "no result files"),
        "",
        "`diff` = ours − published. `kind` says how the published number was obtained: `exact` "
        "(printed or hard-coded in the authors' notebooks), `digitised (vector)` (read from a PDF "
        "plot's path coordinates; the authors never wrote it down), `digitised (±p, raster)` (read "
        "off a PNG plot with precision p). Within tolerance: "
        f"|diff| ≤ max({ATOL:g}, {RTOL:g}·|published|) + p. An empty layer is layer {DEFAULT_LAYER}.",
        "",
        "## Summary", "",
    ]
    summary = summarise(comparison)
    lines += _summary_lines(summary) + [""]
    lines += ["## Known inconsistencies in the published numbers", ""]
    lines += [f"- {item}" for item in KNOWN_INCONSISTENCIES] + [f"- {NOT_PUBLISHED}", ""]
    lines += ["## Method differences", "", f"- {LINEAR_PROBE_NOTE}", ""]
    parts_shown = set()
    for experiment, group in comparison.groupby("experiment", sort=False):
        part = next((name for name, (members, _) in STUDY_PARTS.items() if experiment in members), None)
        if part is not None and part not in parts_shown:
            parts_shown.add(part)
            lines += [f"## {part}", ""] + [f"- {note}" for note in STUDY_PARTS[part][1]] + [""]
        lines += _experiment_section(experiment, group, summary)
    not_run = published[~published["experiment"].isin(set(comparison["experiment"]))]
    if len(not_run):
        lines += ["## Published experiments not run in this preset", ""]
        counts = not_run["experiment"].value_counts().sort_index()
        lines += [f"- `{e}`: {n} published numbers" for e, n in counts.items()] + [""]
    return "\n".join(lines)


def _check_demo_labels(ours: pd.DataFrame, data_source: str, weights_summary: str) -> None:
    """Refuse to label as real a report whose rows say synthetic data or random weights."""
    synthetic = int((ours["data"] == "synthetic").sum())
    if synthetic and data_source == "official":
        raise ValueError(f"data_source 'official' but {synthetic} result row(s) have data=synthetic")
    random = int((ours["weights"] == "random").sum())
    if random and "random" not in weights_summary.lower():
        raise ValueError(f"weights_summary {weights_summary!r} but {random} result row(s) have weights=random")


def write_report(
    results_csvs: Iterable[str | Path],
    out_md: str | Path,
    preset: str,
    data_source: str,
    weights_summary: str,
    *,
    out_csv: str | Path | None = None,
    published_csv: str | Path | None = None,
) -> pd.DataFrame:
    """Write the Markdown report (and the full comparison as CSV if asked); return the comparison."""
    paths = sorted(map(Path, results_csvs))
    ours = read_results(paths)
    wrong = sorted(set(ours["preset"]) - {preset})
    if wrong:
        raise ValueError(f"results of preset(s) {', '.join(wrong)} given to the report of preset {preset!r}")
    _check_demo_labels(ours, data_source, weights_summary)
    published = load_published(published_csv)
    comparison = compare(ours, published)
    text = render_report(
        comparison, preset=preset, data_source=data_source, weights_summary=weights_summary,
        sources=[p.as_posix() for p in paths], published=published,
    )
    out_md = Path(out_md)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(text + "\n", encoding="utf-8")
    if out_csv is not None:
        Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
        comparison.to_csv(out_csv, index=False)
    return comparison
