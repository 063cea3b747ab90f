"""Intervals of the numbers a card reads from other studies' CSVs (issue 22): per-unit statistics beside the CSVs.

Hand-computed cases (two units: a resample is AA, AB or BB with chances 1/4,
1/2, 1/4, so with 1,000 resamples the 2.5 / 97.5 % percentiles are the
smallest and largest of the three statistics), the per-image addends against
the total confusion matrix, and a planted card whose every read number must
carry a finite interval around the CSV's value.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import write_planted_cityscapes
from vitlocal.datasets import cityscapes
from vitlocal.evaluation.segmentation import EvalTarget, ProbeSettings, load_split
from vitlocal.evaluation.units import (
    miou_of_stats,
    read_units,
    segmentation_array,
    segmentation_units,
    write_units,
)
from vitlocal.plotting.base import write_csv
from vitlocal.probes.metrics import mean_iou
from vitlocal.studies.base import concat_results
from vitlocal.studies.card.compute import per_image_confusions
from vitlocal.studies.card.summary import card_entries
from vitlocal.studies.probing.compute import (
    degradation_rows,
    layerwise_rows,
    present_classes_only,
    train_size_rows,
)
from vitlocal.studies.retrieval.compute import crop_units
from vitlocal.studies.tracking.compute import video_units
from vitlocal.studies.tracking.matching import GapCounts
from vitlocal.synthetic import generate
from vitlocal.tiling import TilingSpec

TILING, GRID = TilingSpec(None, 4, 8), (4, 4)
PROBES = ProbeSettings(knn_k=1, knn_metric="l2", linear={"epochs": 1}, seed=0, device="cpu")
BOOT = {"resamples": 1000, "seed": 0}
#: Two images, two classes (rows: truth, columns: prediction). A: IoU 2/3, 1/2; B: 1/2, 3/4; A+B: 3/5, 4/6.
A, B = np.array([[2, 0], [1, 1]]), np.array([[1, 1], [0, 3]])


def _stats(confusion: np.ndarray) -> np.ndarray:
    """(C, 3) tp, gt (row sums), pred (column sums) of one image's confusion matrix."""
    return np.stack([np.diag(confusion), confusion.sum(axis=1), confusion.sum(axis=0)], axis=1)


def _card_row(model="m"):
    return {"experiment": "card", "model": model, "probe": "knn", "level": "raw", "class": "mean", "metric": "miou",
            "value": 0.5, "layer": 12, "lo": 0.4, "hi": 0.6, "n_units": 30}


def _row(experiment, probe, level, value, layer=12, cls="mean", metric="miou"):
    return {"experiment": experiment, "model": "m", "probe": probe, "level": level, "class": cls, "metric": metric,
            "value": value, "layer": layer, "lo": "", "hi": "", "n_units": ""}


def _entries(rows, units):
    table = pd.DataFrame([_card_row(), *rows])
    table["layer"] = table["layer"].astype("Int64")
    return card_entries("m", table, "set4", pd.concat(units, ignore_index=True), **BOOT).set_index("name")


def _seg(per_image, level="", experiment="layerwise", probe="knn"):
    return segmentation_units(np.stack(per_image), ["a", "b"], ["road", "sidewalk"], experiment=experiment,
                              model="m", probe=probe, layer=12, level=level)


# --------------------------------------------------------------------------- hand-computed intervals


def test_layer_miou_interval_of_two_images_by_hand():
    """AA 7/12, AB 19/30, BB 5/8: value 19/30 (pooled), interval [7/12, 19/30]."""
    entries = _entries([_row("layerwise", "knn", "", 19 / 30)], [_seg([_stats(A), _stats(B)])])
    layer = entries.loc["layer 12"]
    assert layer["value"] == pytest.approx(19 / 30)
    assert (layer["lo"], layer["hi"], layer["n_units"]) == (pytest.approx(7 / 12), pytest.approx(19 / 30), 2)
    assert np.isnan(entries.loc["best k-NN layer", "lo"])  # a description: no interval


def test_a_sidecar_that_disagrees_with_the_csv_is_refused():
    with pytest.raises(ValueError, match="disagree"):
        _entries([_row("layerwise", "knn", "", 0.5)], [_seg([_stats(A), _stats(B)])])


def test_degradation_ratio_resamples_each_image_at_both_levels():
    """Clean A, B; degraded A' = [[1,1],[1,1]] (mIoU 1/3), B' = B. Paired draws: AA (1/3)/(7/12) = 4/7,
    BB 1, AB (17/35)/(19/30) = 102/133 -> [4/7, 1]. Drawing the levels independently would give e.g.
    A'A' over BB = (1/3)/(5/8) = 8/15 < 4/7 with chance 1/16, pulling the 2.5 % point below 4/7."""
    degraded = np.array([[1, 1], [1, 1]])
    rows = [_row("degradation_blur", "knn", "blur-0", 19 / 30), _row("degradation_blur", "knn", "blur-8", 17 / 35)]
    units = [_seg([_stats(A), _stats(B)], "blur-0", "degradation_blur"),
             _seg([_stats(degraded), _stats(B)], "blur-8", "degradation_blur")]
    ratio = _entries(rows, units).loc["blur (blur-8) / clean"]
    assert ratio["value"] == pytest.approx(102 / 133)
    assert (ratio["lo"], ratio["hi"]) == (pytest.approx(4 / 7), pytest.approx(1.0))


def test_ade20k_interval_leaves_out_classes_without_ground_truth():
    """ADE20K's rows average only classes with ground truth (``present_classes_only``). A: 3 wall pixels, 2 called
    wall and 1 sky (no sky in the truth); B: 1 wall, 2 floor, all right. Pooled: wall 3/4, floor 1, sky left
    out -> 7/8 (counting sky's IoU 0: 7/12). Resamples: AA wall 4/6 -> 2/3, AB 7/8, BB 1 -> [2/3, 1]."""
    a = {"wall": (2, 3, 2), "sky": (0, 0, 1)}
    b = {"wall": (1, 1, 1), "floor": (2, 2, 2)}
    classes = ["wall", "floor", "sky"]
    per_image = np.array([[image.get(c, (0, 0, 0)) for c in classes] for image in (a, b)])
    units = segmentation_units(per_image, ["a", "b"], classes, experiment="ade20k", model="m", probe="knn",
                               layer=12, level="")
    knn = _entries([_row("ade20k", "knn", "", 7 / 8)], [units]).loc["ADE20K knn"]
    assert (knn["value"], knn["lo"], knn["hi"]) == (7 / 8, pytest.approx(2 / 3), pytest.approx(1.0))


def test_every_degradation_kind_is_read_by_its_experiment_name():
    """Frequency noise's rows are ``degradation_freq`` (not ``degradation_freqnoise``); each kind gets its ratio."""
    rows = [_row(experiment, "knn", f"{kind}-{level}", value)
            for kind, experiment in (("blur", "degradation_blur"), ("noise", "degradation_noise"),
                                     ("freqnoise", "degradation_freq"))
            for level, value in ((0, 0.5), (1, 0.4), (2, 0.25))]
    entries = card_entries("m", pd.DataFrame([_card_row(), *rows]), "set4").set_index("name")
    for kind in ("blur", "noise", "freqnoise"):
        assert entries.loc[f"{kind} ({kind}-2) / clean", "value"] == pytest.approx(0.5)


def test_retrieval_share_over_crops_by_hand():
    """Crop a: categories [same_patch, same_fine]; crop b: 3 same_patch, 1 background; crop c: no query.
    same_patch: a 1/2, b 3/4 -> 4/6; same_fine: 1/6. Resamples of three crops, c adding nothing."""
    found = crop_units(np.array([0, 1, 0, 0, 0, 4]), np.array([0, 0, 1, 1, 1, 1]), np.array([3, 3, 3, 3, 3, -1]),
                       ["a", "b", "c"], experiment="fair1m_retrieval", model="m", probe="none", layer=12,
                       level="rotate-10")
    assert set(found["unit"]) == {"a", "b", "c"}  # c is a unit though it has no query
    assert not (found.loc[found["class"] != "queries", "value"] == 0).any()  # sparse
    rows = [_row("fair1m_retrieval", "none", "rotate-10", 4 / 6, cls="same_patch", metric="share"),
            _row("fair1m_retrieval", "none", "rotate-10", 1 / 6, cls="same_fine", metric="share")]
    entries = _entries(rows, [found])
    patch, fine = entries.loc["same_patch at rotate-10"], entries.loc["same_fine at rotate-10"]
    assert patch["value"] == pytest.approx(4 / 6) and patch["n_units"] == 3
    assert (patch["lo"], patch["hi"]) == (pytest.approx(0.5), pytest.approx(0.75))  # never from c alone: undefined
    assert (fine["lo"], fine["hi"]) == (pytest.approx(0.0), pytest.approx(0.5))


def test_tracking_mean_over_deltas_resamples_videos_jointly():
    """Video A: delta 1 two pairs of accuracy 1/2 each, delta 3 one pair right; B: delta 1 both right, delta 3
    wrong. delta 1: AA 1/2, AB 3/4, BB 1. Mean over deltas: AA (1/2 + 1)/2 = 3/4, AB (3/4 + 1/2)/2 = 5/8,
    BB (1 + 0)/2 = 1/2. Deltas drawn independently would reach (1/2 + 0)/2 = 1/4."""
    def counts(pairs, acc):
        c = GapCounts.zeros([1, 3])
        c.pairs, c.pair_acc_instance = np.array(pairs), np.array(acc, dtype=float)
        return c

    per_video = {"A": counts([2, 1], [1.0, 1.0]), "B": counts([2, 1], [2.0, 0.0])}
    units = video_units(per_video, [1, 3], experiment="tracking", model="m", probe="none", layer=12)
    rows = [_row("tracking", "none", "delta=1", 0.75, cls="all", metric="acc_same_instance"),
            _row("tracking", "none", "delta=3", 0.5, cls="all", metric="acc_same_instance")]
    entries = _entries(rows, units)
    at1, mean = entries.loc["same instance, delta 1"], entries.loc["same instance, mean over delta"]
    assert (at1["value"], at1["lo"], at1["hi"]) == (0.75, pytest.approx(0.5), pytest.approx(1.0))
    assert mean["value"] == pytest.approx(0.625)
    assert (mean["lo"], mean["hi"]) == (pytest.approx(0.5), pytest.approx(0.75))


# --------------------------------------------------------------------------- per-image addends, planted features


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Tiny synthetic Cityscapes; features: a class code plus noise (val: noisier, its blur-8 variant more so)."""
    tmp = tmp_path_factory.mktemp("card_units")
    root = generate("cityscapes", tmp / "cityscapes", size="tiny")
    train_m, val_m = cityscapes.list_images(root, "train").head(8), cityscapes.list_images(root, "val")
    code = np.random.default_rng(7).normal(0, 1, (19, 8))

    def write(name, manifest, split, seed, noise):
        rng = np.random.default_rng(seed)
        attrs = {"model": "m", "arch": "planted", "weights": "random", "variant": name, "dataset": "cityscapes",
                 "split": split, "preset": "test", "patch_labels": "nearest_exact", "seed": 0,
                 "data_source": "synthetic", "grid": list(GRID),
                 "tiling": {"resize_to": None, "rows": 4, "cols": 8, "out_size": [64, 64]}}
        features = lambda label: code[np.where(label == 255, 0, label)] + rng.normal(0, noise, (len(label), 8))  # noqa: E731
        return write_planted_cityscapes(tmp / f"{split}-{name}.parquet", root, manifest, attrs, features,
                                        tiling=TILING, grid=GRID)

    files = {"train": write("clean", train_m, "set4", 1, 0.3), "val": write("clean", val_m, "val", 2, 0.8),
             "blur-8": write("blur-8", val_m, "val", 3, 1.6)}
    return {"files": files, "target": EvalTarget.load("cityscapes", root, val_m), "tmp": tmp}


def test_per_image_addends_sum_to_the_total_confusion(planted):
    target = planted["target"]
    val = load_split(planted["files"]["val"])
    preds = np.random.default_rng(0).integers(0, 19, len(val.labels))
    result = target.score(val, preds)
    per_image, total = result.per_image, result.confusion
    assert per_image.shape == (len(target.manifest), 19, 3)
    assert result.image_ids == tuple(target.manifest["sample_id"].astype(str))
    np.testing.assert_array_equal(per_image[:, :, 0].sum(axis=0), np.diag(total))
    np.testing.assert_array_equal(per_image[:, :, 1].sum(axis=0), total.sum(axis=1))
    np.testing.assert_array_equal(per_image[:, :, 2].sum(axis=0), total.sum(axis=0))
    for i, confusion in enumerate(per_image_confusions(val, preds, target)):  # each image scored on its own
        np.testing.assert_array_equal(per_image[i], _stats(confusion))


def test_sidecar_round_trip_gives_the_scores_of_the_rows(planted, tmp_path):
    target = planted["target"]
    val = load_split(planted["files"]["val"])
    result = target.score(val, np.random.default_rng(1).integers(0, 19, len(val.labels)))
    keys = {"experiment": "x", "model": "m", "probe": "knn", "layer": 12, "level": ""}
    write_units([segmentation_units(result.per_image, result.image_ids, target.class_names, **keys)],
                tmp_path / "x.units.parquet")
    back = read_units([tmp_path / "x.units.parquet"])
    assert not (back.loc[back["stat"] != "pixels", "value"] == 0).any()  # zeros are left out
    stats, ids = segmentation_array(back)
    assert ids == list(result.image_ids)
    assert miou_of_stats(stats.sum(axis=0)) == pytest.approx(result.miou, rel=1e-12)
    assert miou_of_stats(stats.sum(axis=0), present_only=True) == pytest.approx(
        present_classes_only(result).miou, rel=1e-12)
    assert result.miou == mean_iou(result.confusion)[0]


def test_every_read_number_of_a_planted_card_has_an_interval_around_the_csv_value(planted):
    files, target, tmp = planted["files"], planted["target"], planted["tmp"]
    units: list[pd.DataFrame] = []
    frames = [train_size_rows("m", {"set4": files["train"]}, files["val"], target=target, probes=PROBES, units=units),
              layerwise_rows("m", files["train"], files["val"], [12], target=target, probes=PROBES, units=units),
              degradation_rows("m", files["train"], {"clean": files["val"], "blur-8": files["blur-8"]},
                               target=target, probes=PROBES, units=units)]
    write_csv(pd.concat(frames), tmp / "rows.csv")
    write_units(units, tmp / "rows.units.parquet")
    rows = pd.concat([concat_results([str(tmp / "rows.csv")]), pd.DataFrame([_card_row()])], ignore_index=True)
    entries = card_entries("m", rows, "set4", read_units([tmp / "rows.units.parquet"]), **BOOT)
    read = entries[(entries["source"] != "card") & (entries["name"] != "best k-NN layer")]
    assert set(read["source"]) == {"train_size", "layerwise", "degradation"} and len(read) == 4
    assert np.isfinite(read[["lo", "hi"]].to_numpy(float)).all()
    assert ((read["lo"] <= read["value"]) & (read["value"] <= read["hi"])).all()
    assert (read["lo"] < read["hi"]).all() and (read["n_units"] == len(target.manifest)).all()
    csv = rows[(rows["metric"] == "miou") & (rows["class"] == "mean")]
    knn = csv[(csv["experiment"] == "train_size") & (csv["probe"] == "knn")]["value"].iloc[0]
    assert entries.set_index("name").loc["Cityscapes knn", "value"] == knn  # the CSV's number itself
