"""Published numbers, key matching per experiment, and the reproduction report.

Expected published values are typed in from paper.md ("Published numbers to
compare against"), not read back through the code under test.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from vitlocal.published import KEY, load_published, to_our_keys
from vitlocal.reproduction import (
    COMPARED,
    FIG6,
    NO_COUNTERPART,
    NOT_COMPUTED,
    PROVENANCE,
    SHOWN,
    TIDY_COLUMNS,
    compare,
    demo_banner,
    summarise,
    write_report,
)

OFFSET = 0.0123
BANNER = (
    "**DEMO OUTPUT — synthetic data and random weights. These numbers are not results of the study "
    "and are not comparable to the published ones.**"
)


@pytest.fixture(scope="module")
def published() -> pd.DataFrame:
    return load_published()


def tidy(rows: list[dict], **provenance: str) -> pd.DataFrame:
    """Tidy rows as an experiment writes them (layer may be None = last block)."""
    defaults = {"preset": "demo", "weights": "random", "knn_metric": "dot", "patch_labels": "nearest_exact",
                "data": "synthetic", **provenance}
    table = pd.DataFrame([{**defaults, **row} for row in rows])
    table["layer"] = pd.array(table["layer"], dtype="Int64")
    return table[list(TIDY_COLUMNS)]


def row(experiment, model, probe, level, metric, value, *, layer=None, cls="mean", dataset="cityscapes") -> dict:
    return {"experiment": experiment, "dataset": dataset, "model": model, "probe": probe, "layer": layer,
            "level": level, "class": cls, "metric": metric, "value": value}


def test_shipped_csv_is_complete(published):
    assert len(published) == 2144
    assert published["experiment"].nunique() == 15
    shared = Path(__file__).resolve().parents[2] / "shared" / "reference" / "published_numbers.csv"
    if shared.is_file():  # the shipped copy is byte-identical to the reference
        assert (Path(__file__).resolve().parents[1] / "src/vitlocal/data/published_numbers.csv").read_bytes() \
            == shared.read_bytes()


# (our row, published value from paper.md, published kind)
MATCHES = [
    (row("train_size", "dino", "knn", "set4_prime", "miou", None), 0.318, "exact"),
    (row("train_size", "supervised", "linear", "set2", "miou", None), 0.282, "exact"),
    (row("train_size", "dinov2", "linear", "set8", "miou", None), 0.607, "exact"),
    (row("train_size", "mae", "knn", "set4", "miou", None, layer=12), 0.058, "exact"),
    (row("layerwise", "supervised", "knn", "", "miou", None, layer=8), 0.329, "exact"),
    (row("layerwise", "dinov2", "knn", "", "miou", None, layer=11), 0.384, "exact"),
    (row("layerwise", "simmim", "knn", "", "miou", None, layer=1), 0.066, "exact"),
    (row("variance_removal", "mae", "knn", "200", "miou", None), 0.295, "exact"),
    (row("variance_removal", "mae", "linear", "750", "miou", None), 0.060, "exact"),
    (row("bn_standardized", "simmim", "knn", "", "miou", None), 0.139, "exact"),
    (row("bn_standardized", "mae", "linear", "", "miou", None), 0.375, "exact"),
    # Fig 6 compares shares of the authors' fixed query count (5,850; DINOv2's grid 7,623)
    (row("fair1m_rotation", "supervised", "none", "rotate-5", "share_same_patch", None,
         cls="all_nonbg", dataset="fair1m"), 1560 / 5850, "exact"),
    (row("fair1m_rotation", "mae-200", "none", "rotate-20", "share_same_supercategory", None,
         cls="all_nonbg", dataset="fair1m"), 2393 / 5850, "exact"),
    (row("fair1m_rotation", "dinov2", "none", "rotate-10", "share_same_finegrained_class", None,
         cls="all_nonbg", dataset="fair1m"), 4614 / 7623, "exact"),
    (row("fair1m_stats", "dinov2", "none", "", "count_nonbg_query_patches", None,
         cls="all_nonbg", dataset="fair1m"), 7623, "exact"),
    # 200 top dims, 196 shared between Cityscapes and ADE20K -> 4 only in Cityscapes
    (row("feature_variance_overlap", "mae", "none", "m=200", "count_set_difference", None,
         cls="", dataset="cityscapes vs ade20k"), 4, "exact"),
]


def _match_id(case) -> str | None:
    return f"{case['experiment']}-{case['model']}-{case['level'] or case['layer']}" if isinstance(case, dict) else None


@pytest.mark.parametrize("ours_row,expected,kind", MATCHES, ids=_match_id)
def test_each_mapping_matches_the_published_number(published, ours_row, expected, kind):
    ours = tidy([{**ours_row, "value": expected + OFFSET}])
    result = compare(ours, published)
    matched = result[result["status"] == COMPARED]
    assert len(matched) == 1
    published_value = matched["published"].iloc[0]
    assert published_value == pytest.approx(expected, abs=5.01e-4)  # paper.md rounds to 3 decimals
    assert matched["difference"].iloc[0] == pytest.approx(expected + OFFSET - published_value)
    assert matched["published_kind"].iloc[0] == kind


def test_simmim_layer7_variance_series_maps_to_layer_7(published):
    # published model 'simmim_l7' = our simmim at layer 7 (raster-digitised, ±0.002)
    ours = tidy([row("variance_removal", "simmim", "knn", "0", "miou", 0.124 + OFFSET, layer=7)])
    matched = compare(ours, published).query("status == @COMPARED")
    assert matched["published_model"].tolist() == ["simmim_l7"]
    assert matched["published_kind"].iloc[0] == "digitised (±0.002, raster)"
    assert matched["difference"].iloc[0] == pytest.approx(OFFSET)


@pytest.mark.parametrize("experiment,level,published_level,kind", [
    ("degradation_blur", "blur-4", "blur_2 (4px)", "digitised (±0.005, raster)"),
    ("degradation_noise", "noise-30", "noise_30 (sigma=30)", "digitised (±0.005, raster)"),
    ("degradation_freq", "freqnoise-1", "frequency_noise_4 (highest band)", "digitised (±0.005, raster)"),
    ("degradation_freq", "freqnoise-4", "frequency_noise_1 (lowest band)", "digitised (±0.005, raster)"),
    ("tracking", "delta=1", "delta=1", "digitised (vector)"),
    ("tracking", "full-720x1280:delta=57", "delta=57", "digitised (vector)"),
    ("tracking_full_vs_tile", "tiled:delta=5", "delta=5", "digitised (vector)"),
    ("tracking_full_vs_tile", "full:delta=5", "delta=5", "digitised (vector)"),
])
def test_level_conventions_and_digitised_kinds(published, experiment, level, published_level, kind):
    metric = "acc_same_instance" if experiment.startswith("tracking") else "miou"
    cls = "all" if experiment.startswith("tracking") else "mean"
    ours = tidy([row(experiment, "dino", "knn" if cls == "mean" else "none", level, metric, 0.5, cls=cls,
                     dataset="bdd100k" if cls == "all" else "cityscapes")])
    matched = compare(ours, published).query("status == @COMPARED")
    assert len(matched) == 1
    assert matched["published_level"].iloc[0] == published_level
    assert matched["published_kind"].iloc[0] == kind
    assert matched["published_metric"].iloc[0].startswith(metric + "_digitized")


def test_tracking_full_frame_run_is_the_plotted_one(published):
    # paper.md ("read off plots"): same-instance accuracy at delta=1 ~.94 (DINO, DINOv2), ~.81 (MAE);
    # at 57 ~.47 / .46. The tiled run (0.506 / 0.548 / 0.365 at 57) falls outside these bounds.
    ours = tidy([row("tracking", m, "none", f"full-720x1280:delta={d}", "acc_same_instance", 0.0,
                     cls="all", dataset="bdd100k")
                 for m in ("dino", "dinov2", "mae") for d in (1, 57)])
    matched = compare(ours, published).query("status == @COMPARED")
    value = matched.set_index(["model", "level"])["published"]
    for model, at1, at57 in (("dino", 0.94, 0.47), ("dinov2", 0.94, 0.47), ("mae", 0.81, 0.46)):
        assert value[(model, "full-720x1280:delta=1")] == pytest.approx(at1, abs=0.015)
        assert value[(model, "full-720x1280:delta=57")] == pytest.approx(at57, abs=0.015)


@pytest.mark.parametrize("experiment", sorted(set(load_published()["experiment"])))
def test_whole_experiment_round_trip(published, experiment):
    """Ours = every published number of one experiment + OFFSET: all compared, none left."""
    theirs = to_our_keys(published[published["experiment"] == experiment])
    ours = theirs[list(KEY)].assign(value=theirs["published"] + OFFSET).drop_duplicates(list(KEY))
    for column in PROVENANCE:
        ours[column] = "x"
    result = compare(ours, published)
    if experiment == FIG6:  # counts are listed beside their shares, which are compared (test_retrieval)
        counts = result["metric"].str.startswith("count_") & (result["metric"] != "count_queries")
        assert set(result.loc[counts, "status"]) == {SHOWN} and set(result.loc[~counts, "status"]) == {NOT_COMPUTED}
        assert counts.sum() == len(ours) and result.loc[counts, "difference"].isna().all()
        return
    assert set(result["status"]) == {COMPARED}
    assert len(result) == int((published["experiment"] == experiment).sum())
    # a key published twice (dinov2 layer 7 rerun) meets our one number twice: skip those rows
    unique = ~result.duplicated(list(KEY), keep=False)
    assert unique.sum() >= len(result) - 2
    assert result.loc[unique, "difference"].to_numpy() == pytest.approx(OFFSET)


def test_only_the_dinov2_layer7_rerun_shares_a_key(published):
    theirs = to_our_keys(published)
    duplicated = theirs[theirs.duplicated(list(KEY), keep=False)]
    assert duplicated["experiment"].unique().tolist() == ["layerwise_patch_accuracy"]
    assert duplicated["model"].unique().tolist() == ["dinov2"]
    assert duplicated["layer"].unique().tolist() == [7]


def test_not_computed_and_unmatched_rows(published):
    ours = tidy([
        row("layerwise", "dino", "knn", "", "miou", 0.3, layer=12),
        row("layerwise", "scalemae", "knn", "", "miou", 0.2, layer=12),
    ])
    result = compare(ours, published)
    n_layerwise = int((published["experiment"] == "layerwise").sum())
    assert set(result["experiment"]) == {"layerwise"}  # experiments we did not run are left out
    assert (result["status"] == COMPARED).sum() == 1
    assert (result["status"] == NOT_COMPUTED).sum() == n_layerwise - 1
    unmatched = result[result["status"] == NO_COUNTERPART]
    assert unmatched["model"].tolist() == ["scalemae"]
    assert unmatched["published"].isna().all()
    dino12 = result[result["status"] == COMPARED]
    assert dino12["published"].iloc[0] == pytest.approx(0.345)
    assert dino12["difference"].iloc[0] == pytest.approx(0.3 - 0.345)


def test_tolerance_adds_digitisation_precision(published):
    # +0.014 is outside max(0.01, 1 %) for an exact number, inside it +0.005 for a raster-digitised one
    ours = tidy([
        row("train_size", "dino", "knn", "set4", "miou", 0.335 + 0.014),
        row("degradation_blur", "dino", "knn", "blur-4", "miou", 0.203 + 0.014),
        row("degradation_blur", "dino", "knn", "blur-2", "miou", 0.284 - 0.016),
    ])
    result = compare(ours, published).query("status == @COMPARED").set_index(["experiment", "level"])
    assert not result.loc[("train_size", "set4"), "within_tolerance"]
    assert result.loc[("degradation_blur", "blur-4"), "within_tolerance"]
    assert not result.loc[("degradation_blur", "blur-2"), "within_tolerance"]
    summary = summarise(compare(ours, published)).set_index("experiment")
    assert summary.loc["degradation_blur", "compared"] == 2
    assert summary.loc["degradation_blur", "mean_abs_difference"] == pytest.approx((0.014 + 0.016) / 2)
    assert summary.loc["degradation_blur", "within_tolerance"] == pytest.approx(0.5)
    assert summary.loc["degradation_blur", "not_computed"] == 39 - 2


def test_known_inconsistencies_are_in_the_data(published):
    mae = published.query("experiment == 'layerwise' and model == 'mae' and probe == 'knn'")
    by_layer = {
        layer: group.set_index("class")["value"].sort_index()
        for layer, group in mae.assign(layer=mae["setting"].str.extract(r"layer=(\d+)")[0].astype(int)).groupby("layer")
    }
    for same in ((4, 5), (8, 9, 10), (11, 12)):
        for layer in same[1:]:
            pd.testing.assert_series_equal(by_layer[same[0]], by_layer[layer], check_names=False)
    assert not by_layer[3].equals(by_layer[4])
    dino = published.query("model == 'dino' and probe == 'knn' and metric == 'miou'")
    assert dino.query("experiment == 'layerwise' and setting.str.startswith('layer=12')")["value"].item() == 0.345
    assert dino.query("experiment == 'train_size' and setting.str.contains('set4 =')")["value"].item() == 0.335


def write_csv(path: Path, table: pd.DataFrame) -> Path:
    table.to_csv(path, index=False)
    return path


def test_report_demo_banner_sections_and_notes(tmp_path, published):
    fig1 = write_csv(tmp_path / "fig1.csv", tidy([row("train_size", "dino", "knn", "set4", "miou", 0.3)]))
    fig3 = write_csv(tmp_path / "fig3.csv", tidy([row("degradation_blur", "mae", "linear", "blur-2", "miou", 0.1)]))
    out = tmp_path / "report" / "reproduction.md"
    comparison = write_report([fig3, fig1], out, "demo", "synthetic", "random (seeded tiny ViTs)",
                              out_csv=tmp_path / "report" / "reproduction.csv")
    text = out.read_text(encoding="utf-8")
    assert text.splitlines()[0] == BANNER
    assert "## `train_size` — Fig. 1" in text and "## `degradation_blur` — Fig. 3 (blur)" in text
    assert text.index("## `train_size`") < text.index("## `degradation_blur`")  # the study's order
    assert "| cityscapes | dino | knn | 12 | set4 | mean | miou | 0.300 | 0.335 | -0.035 | exact |" in text
    assert "| cityscapes | mae | linear | 12 | blur-2 | mean | miou | 0.100 | 0.146 | -0.046 | digitised (±0.005, raster) |" in text
    assert "| cityscapes | supervised | knn | 12 | set2 | mean | miou | not computed | 0.291 | — | exact |" in text
    assert "layers 4 = 5, 8 = 9 = 10 and 11 = 12" in text and "0.345" in text and "0.335" in text
    assert "selected their linear-probe checkpoint on the very validation images" in text
    assert "- `layerwise`: 1300 published numbers" in text  # not run in this preset
    saved = pd.read_csv(tmp_path / "report" / "reproduction.csv")
    assert len(saved) == len(comparison) == 40 + 39


def test_report_banner_names_only_what_is_synthetic(tmp_path):
    fig1 = write_csv(tmp_path / "fig1.csv", tidy([row("train_size", "dino", "knn", "set4", "miou", 0.3)],
                                                 preset="paper", weights="official", data="official"))
    out = tmp_path / "r.md"
    write_report([fig1], out, "paper", "official", "official checkpoints (sha256 verified)")
    assert "DEMO" not in out.read_text(encoding="utf-8")
    write_report([fig1], out, "paper", "official", "random")
    assert out.read_text(encoding="utf-8").startswith(f"**{demo_banner('random weights')}**")


def test_report_rejects_bad_inputs(tmp_path):
    good = tidy([row("degradation_blur", "dino", "knn", "blur-2", "miou", 0.3)])
    bad_level = write_csv(tmp_path / "bad_level.csv", good.assign(level="blur_1 (2px)"))
    with pytest.raises(ValueError, match=r"bad_level\.csv.*'blur_1 \(2px\)'.*blur-<box kernel px>"):
        write_report([bad_level], tmp_path / "r.md", "demo", "synthetic", "random")
    no_column = write_csv(tmp_path / "no_column.csv", good.drop(columns="knn_metric"))
    with pytest.raises(ValueError, match=r"no_column\.csv: missing column\(s\) knn_metric"):
        write_report([no_column], tmp_path / "r.md", "demo", "synthetic", "random")
    other = write_csv(tmp_path / "other.csv", good)
    with pytest.raises(ValueError, match=r"preset\(s\) demo given to the report of preset 'paper'"):
        write_report([other], tmp_path / "r.md", "paper", "official", "official")
    with pytest.raises(ValueError, match=r"data_source 'fake'"):
        write_report([other], tmp_path / "r.md", "demo", "fake", "random")
    # a demo's rows (data=synthetic, weights=random) cannot be reported as real
    with pytest.raises(ValueError, match=r"data_source 'official' but 1 result row\(s\) have data=synthetic"):
        write_report([other], tmp_path / "r.md", "demo", "official", "random")
    with pytest.raises(ValueError, match=r"weights_summary 'official' but 1 result row\(s\) have weights=random"):
        write_report([other], tmp_path / "r.md", "demo", "synthetic", "official")


def test_levels_sort_numerically_within_an_experiment(published):
    ours = tidy([row("tracking", "dino", "none", f"delta={d}", "acc_same_instance", 0.5, cls="all", dataset="bdd100k")
                 for d in (11, 3, 1)])
    result = compare(ours, published)
    dino = result[(result["model"] == "dino") & (result["metric"] == "acc_same_instance")
                  & ~result["level"].str.startswith("full")]
    assert dino["level"].tolist()[:4] == ["delta=1", "delta=3", "delta=5", "delta=7"]


def test_new_experiments_are_reported_without_counterpart(tmp_path):
    new = write_csv(tmp_path / "fig5.csv", tidy([row("gsd_knn", "scalemae", "knn", "gsd=0.3", "acc", 0.7,
                                                     cls="all", dataset="ucmerced")]))
    comparison = write_report([new], tmp_path / "r.md", "demo", "synthetic", "random")
    assert comparison["status"].tolist() == [NO_COUNTERPART]
    assert "## `gsd_knn` — new experiment" in (tmp_path / "r.md").read_text(encoding="utf-8")
