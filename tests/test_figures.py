"""Figures and tables of sections 3-4 from small hand-made tidy frames.

Every check compares the written CSV / LaTeX / image data with numbers
computed here independently (hand-written means, numpy, degrade.band_mask).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vitlocal.datasets.cityscapes import CLASSES
from vitlocal.plotting import base as plotting, tables
from vitlocal.studies.probing import figures as probing_figures
from vitlocal.studies.probing.freqnoise_figure import draw_fig10, fig10, fig10_data
from vitlocal.studies.variance import figures as variance_figures
from vitlocal.features import degrade

PROVENANCE = {"preset": "demo", "weights": "random init", "knn_metric": "dot", "patch_labels": "centre",
              "data": "synthetic"}
OFFICIAL = {"preset": "paper", "weights": "pretrained checkpoints", "knn_metric": "dot", "patch_labels": "centre",
            "data": "official"}


def row(experiment, model, probe, level, value, *, metric="miou", cls="mean", layer="", dataset="cityscapes",
        provenance=PROVENANCE):
    return {"experiment": experiment, "dataset": dataset, "model": model, "probe": probe, "layer": layer,
            "level": level, "class": cls, "metric": metric, "value": value, **provenance}


def outputs(tmp_path, name):
    return tmp_path / f"{name}.pdf", tmp_path / f"{name}.png", tmp_path / f"{name}.csv"


def assert_written(*paths):
    for path in paths:
        assert path.is_file() and path.stat().st_size > 0, path
    pdf = [p for p in paths if p.suffix == ".pdf"]
    png = [p for p in paths if p.suffix == ".png"]
    assert all(p.read_bytes().startswith(b"%PDF") for p in pdf)
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in png)


# --- style and writers -------------------------------------------------------------


def test_model_style_is_fixed_and_deterministic():
    assert plotting.model_label("dinov2") == "DINOv2" and plotting.model_label("scalemae") == "Scale-MAE"
    assert plotting.model_label("mae-200") == "MAE-200" and plotting.model_label("mystery") == "mystery"
    assert plotting.model_colour("mae") == "#d62728"  # C3, as in the authors' notebooks
    assert plotting.model_colour("mystery") == plotting.model_colour("mystery")
    assert plotting.model_colour("mystery") not in plotting.MODEL_COLOURS.values()
    assert plotting.model_order(["zeta", "mae", "mae-200", "supervised"]) == ["supervised", "mae", "mae-200", "zeta"]


def test_demo_subject_comes_from_provenance():
    assert plotting.demo_subject_of(pd.DataFrame([PROVENANCE])) == "synthetic data and random weights"
    assert plotting.demo_subject_of(pd.DataFrame([OFFICIAL])) is None
    mixed = pd.DataFrame([PROVENANCE, {**PROVENANCE, "data": "official"}])
    assert plotting.demo_subject_of(mixed) == "synthetic data and random weights"


def test_write_table_booktabs_csv_and_demo(tmp_path):
    df = pd.DataFrame({"name": ["a_b", "c"], "x": [0.12345, np.nan]})
    tables.write_table(df, tmp_path / "t.csv", tmp_path / "t.tex", "Cap.", "tab:t", ".2f", demo=True)
    tex = (tmp_path / "t.tex").read_text()
    for token in (r"\toprule", r"\midrule", r"\bottomrule", r"a\_b & 0.12 \\", r"c & -- \\", "{lr}"):
        assert token in tex
    assert "% DEMO (synthetic data, random weights): Cap." in tex
    assert r"\multicolumn{2}{l}" in tex  # visible demo note inside the tabular
    back = pd.read_csv(tmp_path / "t.csv")
    assert back["x"].iloc[0] == 0.12345 and np.isnan(back["x"].iloc[1])
    tables.write_table(df, tmp_path / "u.csv", tmp_path / "u.tex", "Cap.", "tab:u", float_env=True)
    plain = (tmp_path / "u.tex").read_text()
    assert "DEMO" not in plain and r"\caption{Cap.}" in plain and r"\label{tab:u}" in plain


def test_save_figure_stamps_banner_and_is_byte_identical(tmp_path):
    rows = [row("variance_removal", "mae", p, f"m={m}", v)
            for p, values in (("knn", (0.058, 0.295, 0.027)), ("linear", (0.375, 0.364, 0.06)))
            for m, v in zip((0, 200, 750), values)]
    data = variance_figures.fig4b_data(pd.DataFrame(rows))
    fig = variance_figures.draw_fig4b(data, "preset demo")
    assert not plotting.has_demo_banner(fig)
    plotting.save_figure(fig, tmp_path / "a.pdf", tmp_path / "a.png", demo=True)
    banner = [t.get_text() for t in fig.texts if t.get_gid() == "demo-banner"]
    assert banner == ["DEMO — synthetic data, random weights:\nnot results of the study"]
    for run in ("b", "c"):
        variance_figures.fig4b(pd.DataFrame(rows), *outputs(tmp_path, run))
    assert (tmp_path / "b.png").read_bytes() == (tmp_path / "c.png").read_bytes()
    assert (tmp_path / "b.pdf").read_bytes() == (tmp_path / "c.pdf").read_bytes()
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "b.png").read_bytes()  # other banner and subtitle
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporaries


# --- Fig. 1 ---------------------------------------------------------------------------


def test_fig1_plots_input_values_in_train_set_order(tmp_path):
    sets = ["set8", "set2", "set4_prime", "set4"]  # shuffled on purpose
    rows = [row("train_size", m, p, s, round(0.1 * i + 0.01 * j + (0.3 if p == "linear" else 0), 4))
            for j, m in enumerate(["mae", "dino"]) for p in ("knn", "linear") for i, s in enumerate(sets)]
    rows.append(row("layerwise", "mae", "knn", "", 0.5, metric="iou", cls="road", layer=3))  # ignored
    data = probing_figures.fig1(pd.DataFrame(rows), *outputs(tmp_path, "fig1"))
    assert_written(*outputs(tmp_path, "fig1"))
    written = pd.read_csv(tmp_path / "fig1.csv", keep_default_na=False)
    expected = pd.DataFrame(rows[:-1])[["model", "probe", "level", "value"]]
    merged = written.merge(expected, on=["model", "probe", "level"], suffixes=("", "_in"))
    assert len(merged) == 16 and (merged["value"] == merged["value_in"]).all()
    assert list(written["model"].unique()) == ["dino", "mae"]  # the study's order
    order = written.drop_duplicates("level").set_index("level")
    assert order["x"].to_dict() == {"set2": 0, "set4": 1, "set4_prime": 2, "set8": 3}
    assert order["train_set"].to_dict() == {"set2": "2", "set4": "4", "set4_prime": "4'", "set8": "8"}
    assert set(data["preset"]) == {"demo"} and set(data["knn_metric"]) == {"dot"}


def test_fig1_demo_banner_only_for_demo_provenance(tmp_path):
    rows = [row("train_size", "dino", p, "set4", 0.3, provenance=OFFICIAL) for p in ("knn", "linear")]
    probing_figures.fig1(pd.DataFrame(rows), *outputs(tmp_path, "official"))
    probing_figures.fig1(pd.DataFrame(rows), *outputs(tmp_path, "forced"), demo=True)
    assert (tmp_path / "official.png").read_bytes() != (tmp_path / "forced.png").read_bytes()


# --- Fig. 2 ---------------------------------------------------------------------------


def layerwise_rows():
    rng = np.random.default_rng(0)
    values = {}
    rows = []
    for model in ("dino", "simmim"):
        for layer in (1, 2):
            for cls in CLASSES:
                if model == "simmim" and layer == 2 and cls == "bus":
                    continue  # missing row: left out of the mean
                value = float(rng.random())
                if model == "dino" and layer == 1 and cls in ("road", "train"):
                    value = np.nan  # absent class: left out of the mean
                values[model, layer, cls] = value
                rows.append(row("layerwise", model, "knn", "", value, metric="iou", cls=cls, layer=str(layer)))
            rows.append(row("layerwise", model, "knn", "", 0.99, metric="miou", layer=str(layer)))
            rows.append(row("layerwise", model, "linear", "", 0.5, metric="iou", cls="road", layer=str(layer)))
    return rows, values


def test_fig2_group_mious_match_hand_computed(tmp_path):
    rows, values = layerwise_rows()
    probing_figures.fig2(pd.DataFrame(rows), *outputs(tmp_path, "fig2"))
    assert_written(*outputs(tmp_path, "fig2"))
    written = pd.read_csv(tmp_path / "fig2.csv")
    assert len(written) == 2 * 2 * 3 and set(written["probe"]) == {"knn"}
    hard = [c for c in CLASSES if c not in ("road", "vegetation", "building", "car", "sky")]
    assert len(hard) == 14
    for group, classes in (("all", CLASSES), ("hard", hard)):
        for model in ("dino", "simmim"):
            for layer in (1, 2):
                present = [values[model, layer, c] for c in classes
                           if (model, layer, c) in values and not np.isnan(values[model, layer, c])]
                got = written[(written["group"] == group) & (written["model"] == model) & (written["layer"] == layer)]
                assert got["value"].iloc[0] == pytest.approx(sum(present) / len(present))
                assert got["n_classes"].iloc[0] == len(present)
    assert written.loc[(written["model"] == "simmim") & (written["layer"] == 2) & (written["group"] == "all"),
                       "n_classes"].iloc[0] == 18


def test_fig2_rejects_unknown_classes():
    rows = [row("layerwise", "dino", "knn", "", 0.5, metric="iou", cls="wall-other", layer="1")]
    with pytest.raises(ValueError, match="wall-other"):
        probing_figures.fig2_data(pd.DataFrame(rows))


# --- Fig. 3 ---------------------------------------------------------------------------


def test_fig3_clean_first_then_numeric_levels(tmp_path):
    rows = [row("train_size", m, p, "set4", v) for m, p, v in
            (("dino", "knn", 0.33), ("dino", "linear", 0.38), ("mae", "knn", 0.05), ("mae", "linear", 0.37))]
    rows.append(row("train_size", "dino", "knn", "set8", 0.9))  # another train set: not the clean reference
    for m in ("dino", "mae"):
        for p in ("knn", "linear"):
            rows += [row("degradation_blur", m, p, f"blur-{k}", 0.3 - k / 100) for k in (10, 2, 4)]
            rows.append(row("degradation_noise", m, p, "noise-0", 0.25))  # clean, as probing writes it
            rows += [row("degradation_noise", m, p, f"noise-{s}", 0.2 - s / 1000) for s in (20, 10)]
            rows += [row("degradation_freq", m, p, f"freqnoise-{b}", 0.1 + b / 100) for b in (2, 1)]
    probing_figures.fig3(pd.DataFrame(rows), *outputs(tmp_path, "fig3"))
    assert_written(*outputs(tmp_path, "fig3"))
    written = pd.read_csv(tmp_path / "fig3.csv", keep_default_na=False)
    blur = written[(written["panel"] == "blur") & (written["model"] == "dino") & (written["probe"] == "knn")]
    blur = blur.sort_values("x")
    assert list(blur["level"]) == ["clean", "blur-2", "blur-4", "blur-10"]
    assert list(blur["value"]) == pytest.approx([0.33, 0.28, 0.26, 0.2])
    assert list(blur["x_label"]) == ["clean", "2", "4", "10"]
    assert blur["source"].iloc[0] == "train_size set4"
    assert list(dict.fromkeys(written["panel"])) == ["blur", "noise", "freqnoise"]
    clean = written[(written["level"] == "clean") & (written["model"] == "mae") & (written["probe"] == "linear")]
    assert list(clean["value"]) == [0.37, 0.25, 0.37]  # noise has its own clean rows
    assert list(clean["source"]) == ["train_size set4", "degradation_noise", "train_size set4"]
    noise = written[(written["panel"] == "noise") & (written["model"] == "dino") & (written["probe"] == "knn")]
    assert list(noise.sort_values("x")["level"]) == ["clean", "noise-10", "noise-20"]


# --- Table 2 --------------------------------------------------------------------------


def test_table2_values_in_csv_and_latex(tmp_path):
    rows = [row("ade20k", m, p, "", v, dataset="ade20k") for m, p, v in
            (("mae", "knn", 0.0512), ("mae", "linear", 0.2), ("dinov2", "knn", 0.31), ("dinov2", "linear", 0.4))]
    probing_figures.table2(pd.DataFrame(rows), tmp_path / "t2.csv", tmp_path / "t2.tex")
    written = pd.read_csv(tmp_path / "t2.csv")
    assert list(written["model"]) == ["dinov2", "mae"]
    assert list(written["knn"]) == [0.31, 0.0512] and list(written["linear"]) == [0.4, 0.2]
    tex = (tmp_path / "t2.tex").read_text()
    assert r"\toprule" in tex and r"MAE & 0.051 & 0.200 \\" in tex and "DEMO (synthetic data" in tex


# --- Fig. 4a-c -----------------------------------------------------------------------


def test_fig4a_sorts_variance_descending(tmp_path):
    variances = {"mae": [0.5, 40.0, 2.0], "dino": [1.0, 3.0, 2.0]}
    rows = [row("feature_variance", m, "none", "", v, metric="variance", cls="")
            for m, values in variances.items() for v in values]
    variance_figures.fig4a(pd.DataFrame(rows), *outputs(tmp_path, "fig4a"))
    assert_written(*outputs(tmp_path, "fig4a"))
    written = pd.read_csv(tmp_path / "fig4a.csv")
    for model, values in variances.items():
        got = written[written["model"] == model]
        assert list(got["value"]) == sorted(values, reverse=True) and list(got["rank"]) == [0, 1, 2]


def test_fig4b_accepts_both_level_spellings_and_orders_m():
    rows = [row("variance_removal", "mae", "knn", level, v) for level, v in (("m=750", 0.03), ("200", 0.29),
                                                                              ("m=0", 0.06), ("m=10", 0.17))]
    rows.append(row("variance_removal", "dino", "knn", "m=0", 0.3))  # other model: not in Fig. 4b
    data = variance_figures.fig4b_data(pd.DataFrame(rows))
    assert list(data["m"]) == [0, 10, 200, 750] and list(data["x"]) == [0, 1, 2, 3]
    assert list(data["value"]) == [0.06, 0.17, 0.29, 0.03]
    with pytest.raises(ValueError, match="m=<int>"):
        variance_figures.fig4b_data(pd.DataFrame([row("variance_removal", "mae", "knn", "top200", 0.1)]))


def test_fig4c_trajectories_and_bn_points(tmp_path):
    rows = []
    for model, knn, linear in (("mae", (0.058, 0.17, 0.29), (0.375, 0.374, 0.364)),
                               ("simmim", (0.075, 0.1, 0.12), (0.156, 0.15, 0.14))):
        rows += [row("variance_removal", model, "knn", f"m={m}", v) for m, v in zip((0, 10, 200), knn)]
        rows += [row("variance_removal", model, "linear", f"m={m}", v) for m, v in zip((0, 10, 200), linear)]
    rows += [row("bn_standardized", "mae", "knn", "", 0.291), row("bn_standardized", "simmim", "knn", "", 0.139),
             row("bn_standardized", "simmim", "linear", "", 0.078)]
    variance_figures.fig4c(pd.DataFrame(rows), *outputs(tmp_path, "fig4c"))
    assert_written(*outputs(tmp_path, "fig4c"))
    written = pd.read_csv(tmp_path / "fig4c.csv")
    mae = written[(written["model"] == "mae") & (written["kind"] == "variance_removal")]
    assert list(mae["m"]) == [0, 10, 200] and list(mae["knn"]) == [0.058, 0.17, 0.29]
    assert list(mae["linear"]) == [0.375, 0.374, 0.364]
    bn = written[written["kind"] == "bn_standardized"].set_index("model")
    assert bn.loc["mae", "knn"] == 0.291 and bn.loc["mae", "linear"] == 0.375  # m = 0 linear
    assert bn.loc["mae", "linear_from"] == "variance_removal m=0"
    assert bn.loc["simmim", "linear"] == 0.078 and bn.loc["simmim", "linear_from"] == "bn_standardized"



def test_fig4c_when_every_bn_point_has_its_own_linear_row():
    # what variance_removal_rows writes: a linear row for every bn_standardized model
    rows = [row("variance_removal", "mae", probe, "0", v) for probe, v in (("knn", 0.06), ("linear", 0.37))]
    rows += [row("bn_standardized", "mae", "knn", "", 0.29), row("bn_standardized", "mae", "linear", "", 0.36)]
    data = variance_figures.fig4c_data(pd.DataFrame(rows))
    bn = data[data["kind"] == "bn_standardized"].set_index("model")
    assert bn.loc["mae", "knn"] == 0.29 and bn.loc["mae", "linear"] == 0.36
    assert bn.loc["mae", "linear_from"] == "bn_standardized"


# --- overlap, Table 6 ------------------------------------------------------------------


def test_top_dims_overlap_table_and_heatmap(tmp_path):
    counts = {("cityscapes", "ade20k"): 196, ("cityscapes", "fair1m"): 192, ("ade20k", "fair1m"): 190}
    rows = [row("feature_variance_overlap", "mae", "none", "m=200", v, metric="count_shared", cls="",
                dataset=f"{a} vs {b}") for (a, b), v in counts.items()]
    files = tmp_path / "o.csv", tmp_path / "o.tex", tmp_path / "o.pdf", tmp_path / "o.png"
    data = variance_figures.top_dims_overlap(pd.DataFrame(rows[::-1]), *files)
    assert_written(*files)
    written = pd.read_csv(files[0])
    assert list(zip(written["dataset_a"], written["dataset_b"], written["count_shared"])) == [
        ("cityscapes", "ade20k", 196), ("cityscapes", "fair1m", 192), ("ade20k", "fair1m", 190)]
    tex = files[1].read_text()
    assert r"\toprule" in tex and r"MAE & m=200 & cityscapes & ade20k & 196 \\" in tex
    matrix = variance_figures.draw_overlap(data).axes[0].images[0].get_array()
    assert matrix[0, 1] == matrix[1, 0] == 196 and matrix[1, 2] == matrix[2, 1] == 190
    assert np.ma.getmaskarray(matrix)[0, 0]  # no self-comparison drawn


def test_table6_columns_in_paper_order(tmp_path):
    r2 = {"random200": 0.666, "full": 0.672, "only_top200": 0.55, "without_top200": 0.672}
    rows = [row("r2", "mae", "ridge", lv, v, metric="r2", provenance=OFFICIAL) for lv, v in r2.items()]
    rows.append(row("r2", "mae", "ridge", "full", 0.9, metric="r2", cls="road", provenance=OFFICIAL))  # per class
    variance_figures.table6(pd.DataFrame(rows), tmp_path / "t6.csv", tmp_path / "t6.tex")
    written = pd.read_csv(tmp_path / "t6.csv")
    assert list(written.columns[:6]) == ["model", "label", "full", "without_top200", "only_top200", "random200"]
    assert written.iloc[0][list(r2)].tolist() == list(r2.values())
    tex = (tmp_path / "t6.tex").read_text()
    assert r"Model & full & without top-200 & only top-200 & random 200 \\" in tex
    assert r"MAE & 0.672 & 0.672 & 0.550 & 0.666 \\" in tex and "DEMO" not in tex
    small = [row("r2", "mae", "ridge", lv, 0.5, metric="r2") for lv in ("random12", "without_top12", "full")]
    assert list(variance_figures.table6_data(pd.DataFrame(small)).columns[2:5]) == ["full", "without_top12", "random12"]
    with pytest.raises(ValueError, match="without_top<m>"):
        variance_figures.table6_data(pd.DataFrame([row("r2", "mae", "ridge", "top12", 0.5, metric="r2")]))


def test_missing_and_duplicate_rows_are_named():
    with pytest.raises(ValueError, match="experiments present: train_size"):
        variance_figures.table6_data(pd.DataFrame([row("train_size", "mae", "knn", "set4", 0.1)]))  # no 'r2' rows
    twice = [row("train_size", "mae", "knn", "set4", 0.1), row("train_size", "mae", "knn", "set4", 0.2)]
    with pytest.raises(ValueError, match="share their key"):
        probing_figures.fig1_data(pd.DataFrame(twice))


# --- Fig. 13, Table 1 ------------------------------------------------------------------


def test_fig13_panels_and_pixel_accuracy(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {}
    for i in (0, 1):
        gt = rng.integers(0, 19, (8, 16)).astype(np.uint8)
        gt[0] = 255
        arrays[f"image_{i}"] = rng.integers(0, 256, (8, 16, 3)).astype(np.uint8)
        arrays[f"gt_{i}"] = gt
        for model in ("mae", "dino"):
            for probe in ("knn", "linear"):
                pred = gt.copy()
                pred[1, :4] = (pred[1, :4] + 1) % 19  # 4 wrong of 112 valid pixels
                pred[0] = 3  # ignore row: never counted
                arrays[f"{model}__{probe}__{i}"] = pred
    np.savez(tmp_path / "q.npz", **arrays)
    data = probing_figures.fig13(tmp_path / "q.npz", *outputs(tmp_path, "fig13"), preset="demo", knn_metric="dot", demo=True)
    assert_written(*outputs(tmp_path, "fig13"))
    assert len(data) == 8 and list(data["pixel_acc"]) == pytest.approx([108 / 112] * 8)
    assert set(data["n_pixels"]) == {112}
    assert list(data["model"].unique()) == ["dino", "mae"]
    fig = probing_figures.draw_fig13(tmp_path / "q.npz", data)
    shown = fig.axes[1].images[0].get_array()  # ground truth of image 0
    palette = probing_figures.cityscapes_palette()
    assert tuple(palette[0]) == (128, 64, 128) and tuple(palette[255]) == (0, 0, 0)
    assert np.array_equal(np.asarray(shown), palette[arrays["gt_0"]])


def test_table1_facts_latex_and_csv(tmp_path):
    facts = probing_figures.table1(tmp_path / "t1.csv", tmp_path / "t1.tex")
    assert list(facts["model"]) == ["supervised", "dino", "dinov2", "mae", "simmim", "ibot", "scalemae"]
    assert facts["source"].str.len().min() > 10
    assert facts.set_index("model").loc["mae", "masking"] == "random 75%"
    assert facts.set_index("model").loc["simmim", "masking"] == "random 32x32 blocks, 60%"
    tex = (tmp_path / "t1.tex").read_text()
    assert r"\toprule" in tex and "Scale-MAE" in tex and "iBOT" in tex and " ? " in tex
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "t1.csv", dtype=str, keep_default_na=False), facts)


# --- Fig. 10 ---------------------------------------------------------------------------


def test_fig10_masks_noise_and_csv_match_degrade(tmp_path):
    image = np.random.default_rng(2).integers(0, 256, (24, 40, 3)).astype(np.uint8)
    data = fig10(image, *outputs(tmp_path, "fig10"), seed=5, demo=True, preset="demo")
    assert_written(*outputs(tmp_path, "fig10"))
    written = pd.read_csv(tmp_path / "fig10.csv")
    assert list(written["level"]) == [f"freqnoise-{i}" for i in range(1, 5)]
    assert list(zip(written["r_inner"], written["r_outer"])) == list(degrade.FREQUENCY_BANDS)
    for band, std in zip(degrade.FREQUENCY_BANDS, written["noise_std"]):
        assert std == pytest.approx(degrade.band_noise(image.shape, band, 5, 40.0).std())
    frame, panels = fig10_data(image, degrade.FREQUENCY_BANDS, 40.0, 5)
    fig = draw_fig10(image, frame, panels)
    for i, band in enumerate(degrade.FREQUENCY_BANDS):
        assert np.array_equal(np.asarray(fig.axes[3 * i].images[0].get_array()), degrade.band_mask(24, 40, *band))
        assert np.array_equal(np.asarray(fig.axes[3 * i + 2].images[0].get_array()),
                              degrade.frequency_noise(image, band, 5))
    assert data["noise_std"].is_monotonic_decreasing  # narrower low-frequency rings carry less power


# --- drawn lines equal the CSV (a curve drawn reversed or shuffled while the CSV stays right fails) ---------


def _drawn_series(fig):
    """Every data line of every panel as (panel index, x tuple, y tuple); legend handles are not in ax.lines."""
    return sorted((i, tuple(map(float, line.get_xdata())), tuple(map(float, line.get_ydata())))
                  for i, ax in enumerate(fig.axes) for line in ax.lines)


def _csv_series(data, panel_column, keys, x):
    panels = list(dict.fromkeys(data[panel_column])) if panel_column else [None]
    out = []
    for i, panel in enumerate(panels):
        part = data if panel is None else data[data[panel_column] == panel]
        for _, series in part.groupby(keys, sort=False):
            series = series.sort_values(x)
            out.append((i, tuple(map(float, series[x])), tuple(map(float, series["value"]))))
    return sorted(out)


def _assert_lines_match(fig, data, panel_column, keys, x):
    drawn = _drawn_series(fig)
    assert drawn == _csv_series(data, panel_column, keys, x)
    assert all(np.all(np.diff(xs) > 0) for _, xs, _ in drawn)  # drawn left to right


def test_fig1_drawn_lines_are_the_csv_values():
    sets = ["set8", "set2", "set4"]
    rows = [row("train_size", m, p, s, 0.1 * i + 0.03 * j + (0.2 if p == "linear" else 0))
            for j, m in enumerate(["mae", "dino"]) for p in ("knn", "linear") for i, s in enumerate(sets)]
    data = probing_figures.fig1_data(pd.DataFrame(rows))
    _assert_lines_match(probing_figures.draw_fig1(data), data, None, ["model", "probe"], "x")


def test_fig2_drawn_lines_are_the_csv_values():
    rows, _ = layerwise_rows()
    data = probing_figures.fig2_data(pd.DataFrame(rows))
    _assert_lines_match(probing_figures.draw_fig2(data), data, "group", ["model"], "layer")


def test_fig3_drawn_lines_are_the_csv_values():
    rows = []
    for m in ("dino", "mae"):
        for p in ("knn", "linear"):
            rows.append(row("degradation_blur", m, p, "blur-0", 0.4))
            rows += [row("degradation_blur", m, p, f"blur-{k}", 0.3 - k / 100) for k in (8, 2, 4)]
            rows.append(row("degradation_noise", m, p, "noise-0", 0.4))
            rows += [row("degradation_noise", m, p, f"noise-{s}", 0.2 - s / 1000) for s in (40, 10)]
    data = probing_figures.fig3_data(pd.DataFrame(rows))
    _assert_lines_match(probing_figures.draw_fig3(data), data, "panel", ["model", "probe"], "x")
