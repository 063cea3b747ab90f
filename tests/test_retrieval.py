"""FAIR1M object-patch retrieval (Figs 6, 7, 11, Table 3): geometry, search, categories, rows, outputs.

The same-patch mapping is checked against geometry computed without the
transform code (OpenCV's own inverse, a 90-degree rotation and whole-patch
shifts known by hand); categories on hand-built features whose answer is
known for every query and similarity; the search against ``probes.knn`` and
a brute-force masked argmax; and a Scale-MAE checkpoint in the official key
layout through the converter, the extraction and this study's rows.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import reference_models as ref
import torch

from vitlocal.datasets import fair1m
from vitlocal.errors import ConfigError
from vitlocal.studies.outputs import make_output, output_paths
from vitlocal.studies.base import concat_results
from vitlocal.features.degrade import (
    patch_correspondence,
    rotate,
    scale,
    shift_horizontal,
)
from vitlocal.features.pipeline import extract_feature_files
from vitlocal.features.store import read_features, write_features
from vitlocal.layout import Layout
from vitlocal.probes.knn import nearest_neighbors
from vitlocal.reproduction import compare, load_published, read_results, write_report
from vitlocal.studies import STUDIES
from vitlocal.studies.retrieval import fig11_models
from vitlocal.studies.retrieval.compute import (
    CATEGORIES,
    categorise,
    category_counts,
    nearest_patches,
    patch_index,
    ranked_dims,
    retrieval_rows,
    search_settings,
    upper_bound,
)
from vitlocal.synthetic import generate

METRICS = ("dot", "l2", "cosine")


def _image(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- geometry


def _independent(angle: float, zoom: float, size: int, grid: int) -> np.ndarray:
    """Same patch of each transformed patch via OpenCV's own matrix and inverse (no vitlocal code)."""
    m = cv2.getRotationMatrix2D(((size - 1) / 2, (size - 1) / 2), angle, zoom)
    inverse = cv2.invertAffineTransform(m)
    p = size / grid
    rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    centres = np.stack([(cols.ravel() + 0.5) * p - 0.5, (rows.ravel() + 0.5) * p - 0.5], axis=1)
    back = cv2.transform(centres[None].astype(np.float64), inverse)[0] + 0.5  # pixel centre -> edge coordinates
    inside = (back >= 0).all(axis=1) & (back < size).all(axis=1)
    patch = np.floor(back[:, 1] / p) * grid + np.floor(back[:, 0] / p)
    return np.where(inside, patch, -1).astype(np.int64)


@pytest.mark.parametrize("angle", [5, 10, 15, 20, -7.5])
def test_rotation_correspondence_matches_opencv_inverse(angle):
    _, affine = rotate(_image(224), angle)
    np.testing.assert_array_equal(patch_correspondence(affine, (224, 224), 14), _independent(angle, 1.0, 224, 14))


@pytest.mark.parametrize("zoom", [0.8, 0.9, 1.1, 1.2])
def test_scale_correspondence_matches_opencv_inverse(zoom):
    _, affine = scale(_image(224), zoom)
    np.testing.assert_array_equal(patch_correspondence(affine, (224, 224), 14), _independent(0.0, zoom, 224, 14))


def test_quarter_turn_is_known_by_hand():
    """Counter-clockwise as displayed: transformed patch (r, c) shows original patch (c, n-1-r)."""
    image = _image(64)
    turned, affine = rotate(image, 90)
    np.testing.assert_array_equal(turned, np.rot90(image))  # numpy's CCW quarter turn, pixel for pixel
    expected = [c * 4 + (3 - r) for r in range(4) for c in range(4)]
    np.testing.assert_array_equal(patch_correspondence(affine, (64, 64), 4), expected)
    assert upper_bound(patch_correspondence(affine, (64, 64), 4)) == 16


@pytest.mark.parametrize("patches", [1, 2])
def test_whole_patch_shift_is_known_by_hand(patches):
    image = _image(64)
    moved, affine = shift_horizontal(image, 16 * patches)
    np.testing.assert_array_equal(moved[:, 16 * patches:], image[:, : 64 - 16 * patches])
    expected = [r * 4 + c - patches if c >= patches else -1 for r in range(4) for c in range(4)]
    found = patch_correspondence(affine, (64, 64), 4)
    np.testing.assert_array_equal(found, expected)
    assert upper_bound(found) == 16 - 4 * patches


def test_upper_bound_of_a_45_degree_turn_by_hand():
    """4x4 grid of 16 px: corner centres lie 33.9 px from the centre; turned 45 deg they leave the 64 px crop."""
    _, affine = rotate(_image(64), 45)
    found = patch_correspondence(affine, (64, 64), 4)
    corners = [0, 3, 12, 15]
    assert (found[corners] == -1).all() and (np.delete(found, corners) >= 0).all()
    assert upper_bound(found) == 12


# --------------------------------------------------------------------------- search


@pytest.fixture(scope="module")
def random_sets():
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(300, 8)).astype(np.float32)
    queries = rng.normal(size=(90, 8)).astype(np.float32)
    return gallery, queries, rng.integers(0, 6, 300), rng.integers(0, 6, 90)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("block", [1, 7, 64, None])
def test_search_equals_knn_and_masked_brute_force(random_sets, metric, block):
    gallery, queries, g_group, q_group = random_sets
    nearest, outside = nearest_patches(gallery, queries, gallery_group=g_group, query_group=q_group,
                                       metric=metric, block_size=block, device="cpu")
    np.testing.assert_array_equal(nearest, nearest_neighbors(gallery, queries, metric=metric, device="cpu")[0][:, 0])
    g, q = torch.from_numpy(gallery).double(), torch.from_numpy(queries).double()
    if metric == "cosine":
        g, q = torch.nn.functional.normalize(g, dim=1), torch.nn.functional.normalize(q, dim=1)
    score = -torch.cdist(q, g) if metric == "l2" else q @ g.T
    score[torch.from_numpy(q_group[:, None] == g_group[None, :])] = -torch.inf
    np.testing.assert_array_equal(outside, score.argmax(dim=1).numpy())
    assert (g_group[outside] != q_group).all()  # never a patch of the query's own image


@pytest.mark.parametrize("block", [1, 2, 3, 5])
def test_ties_go_to_the_lowest_index_and_a_full_mask_gives_minus_one(block):
    gallery = np.array([[0, 1], [1, 0], [1, 0], [1, 0], [0, 1]], dtype=np.float32)
    queries = np.array([[1, 0], [0, 1]], dtype=np.float32)
    nearest, outside = nearest_patches(gallery, queries, gallery_group=np.array([0, 0, 1, 1, 1]),
                                       query_group=np.array([0, 1]), block_size=block, device="cpu")
    np.testing.assert_array_equal(nearest, [1, 0])
    np.testing.assert_array_equal(outside, [2, 0])
    _, none = nearest_patches(gallery, queries, gallery_group=np.zeros(5, int), query_group=np.zeros(2, int),
                              block_size=block, device="cpu")
    np.testing.assert_array_equal(none, [-1, -1])


# --------------------------------------------------------------------------- categories

B737, B747, CAR = (fair1m.CLASS_INDEX[n] for n in ("Boeing737", "Boeing747", "Small Car"))
BG = fair1m.BACKGROUND
#: Gallery: crop 0 (image 0) patches 0-3, crop 1 (image 1) patch 0; one unit vector each.
G_CROP, G_PATCH, G_LABEL = np.array([0, 0, 0, 0, 1]), np.array([0, 1, 2, 3, 0]), np.array([B737, B747, CAR, BG, B737])
#: Queries of crop 0, all Boeing737: (gallery row they copy, their same patch) and the known answer.
QUERIES = [(0, 0, "same_patch"), (4, 0, "same_fine"), (1, 0, "same_super"), (2, 0, "other_object"),
           (3, 0, "background"), (0, -1, "same_fine")]  # the last one left the crop: no same patch
# (The second finds patch 0 of crop 1, not of its own crop 0: the same index in another crop is no same patch.)


@pytest.mark.parametrize("metric", METRICS)
def test_every_category_on_hand_built_features(metric):
    gallery = 3 * np.eye(5, 6, dtype=np.float32)  # equal norms: dot, l2 and cosine agree
    rows = [row for row, _, _ in QUERIES]
    queries = gallery[rows] + 0.1 * np.eye(len(rows), 6, k=0, dtype=np.float32)[:, ::-1]
    source = np.array([s for _, s, _ in QUERIES])
    common = {"query_crop": np.zeros(len(rows), int), "query_label": np.full(len(rows), B737),
              "query_source": source, "gallery_crop": G_CROP, "gallery_patch": G_PATCH, "gallery_label": G_LABEL}
    nearest, outside = nearest_patches(gallery, queries, gallery_group=G_CROP, query_group=np.zeros(len(rows), int),
                                       metric=metric, device="cpu")
    np.testing.assert_array_equal(nearest, rows)
    found = [CATEGORIES[c] for c in categorise(nearest, **common)]
    assert found == [answer for _, _, answer in QUERIES]
    # Own image excluded: only crop 1's Boeing737 is left, the same fine class for every query.
    assert category_counts(categorise(outside, **common)) == {**dict.fromkeys(CATEGORIES, 0), "same_fine": 6}
    assert upper_bound(source) == 5


def test_categorise_refuses_background_queries_and_unknown_labels():
    common = {"query_crop": np.zeros(1, int), "query_source": np.zeros(1, int), "gallery_crop": G_CROP,
              "gallery_patch": G_PATCH, "gallery_label": G_LABEL}
    with pytest.raises(ValueError, match="object patches"):
        categorise(np.array([0]), query_label=np.array([BG]), **common)
    with pytest.raises(Exception, match="not FAIR1M classes"):
        categorise(np.array([0]), query_label=np.array([200]), **common)


# --------------------------------------------------------------------------- Scale-MAE, end to end

TINY_SCALEMAE = {"model_kwargs": {"img_size": 64, "embed_dim": 48, "depth": 2, "num_heads": 3}}
VARIANTS = ["rotate-90", "shift-56", "rotate-5", "blur-4"]


@pytest.fixture(scope="module")
def scalemae_rows(tmp_path_factory):
    """Random Scale-MAE weights in the official release's key layout -> converter -> features -> rows."""
    work = tmp_path_factory.mktemp("retrieval")
    root = generate("fair1m", work / "data", size="tiny", seed=0)
    with pytest.warns(fair1m.FewCropsWarning):  # the tiny synthetic set lacks a few classes
        manifest = fair1m.select_crops(root, per_class=1, crop_size=224, seed=0)
    checkpoint = work / "weights" / "scalemae" / "scalemae-vitlarge-800.pth"
    checkpoint.parent.mkdir(parents=True)
    official = ref.randomize_(ref.ScaleMAE(img=64, patch=16, dim=48, depth=2, heads=3, dec_dim=32, dec_depth=1,
                                           dec_heads=4), seed=3)
    torch.save({"model": official.state_dict()}, checkpoint)
    paths = {v: work / f"{v}.parquet" for v in ["clean", *VARIANTS]}
    extract_feature_files(
        dataset="fair1m", root=root, manifest=manifest, subset="train", model_key="scalemae",
        model_overrides=TINY_SCALEMAE, layers=[2], variants=list(paths), out_paths=list(paths.values()),
        preset="test", weights_dir=work / "weights", device="cpu", dtype="float32", autocast="none",
        data_source="synthetic", progress=False,
    )
    rows = retrieval_rows("scalemae", str(paths["clean"]), {v: str(paths[v]) for v in VARIANTS}, manifest,
                          metric="dot", removed=12, device="cpu")
    csv = work / "fair1m_retrieval.csv"
    rows.to_csv(csv, index=False)
    return rows, paths, manifest, csv


def test_features_carry_the_hand_known_same_patch(scalemae_rows):
    _, paths, manifest, _ = scalemae_rows
    for variant, expected in (("rotate-90", [c * 4 + (3 - r) for r in range(4) for c in range(4)]),
                              ("shift-56", [r * 4 + c - 1 if c else -1 for r in range(4) for c in range(4)])):
        meta, _ = read_features(paths[variant], [2], columns=["sample_id", "source_patch"])
        per_crop = meta["source_patch"].to_numpy().reshape(len(manifest), 16)
        assert (per_crop == expected).all(), variant


def test_rows_count_every_query_once(scalemae_rows):
    rows, _, manifest, _ = scalemae_rows
    assert set(rows["model"]) == {"scalemae", "scalemae-12"}
    assert set(rows["weights"]) == {"url:scalemae-vitlarge-800.pth"} and set(rows["knn_metric"]) == {"dot"}
    for (experiment, model, variant), group in rows[rows["experiment"].str.startswith("fair1m_retrieval")].groupby(
            ["experiment", "model", "level"]):
        counts = group[group["metric"] == "count"].set_index("class")["value"]
        assert counts[list(CATEGORIES)].sum() == counts["queries"] > 0
        shares = group[group["metric"] == "share"].set_index("class")["value"]
        assert shares[list(CATEGORIES)].sum() == pytest.approx(1.0)
        if experiment == "fair1m_retrieval_exclude_own":
            assert counts["same_patch"] == 0
        else:
            assert counts["same_patch"] <= counts["upper_bound"]
            if variant == "shift-56":  # one of 4 columns leaves the crop
                assert counts["upper_bound"] < counts["queries"]
    rotation = rows[rows["experiment"] == "fair1m_rotation"]
    assert set(rotation["level"]) == {"rotate-90", "rotate-5"}
    for (model, level), group in rotation.groupby(["model", "level"]):
        cumulative = group.set_index("metric")["value"]
        assert cumulative["count_same_patch"] <= cumulative["count_same_finegrained_class"] \
            <= cumulative["count_same_supercategory"]
        mine = rows[(rows["experiment"] == "fair1m_retrieval") & (rows["model"] == model) & (rows["level"] == level)
                    & (rows["metric"] == "count")].set_index("class")["value"]
        assert cumulative["count_same_finegrained_class"] == mine["same_patch"] + mine["same_fine"]
        assert cumulative["count_queries"] == mine["queries"]
        for metric in ("same_patch", "same_finegrained_class", "same_supercategory"):
            assert cumulative[f"share_{metric}"] == pytest.approx(cumulative[f"count_{metric}"] / mine["queries"])
    stats = rows[(rows["experiment"] == "fair1m_stats") & (rows["model"] == "scalemae")].set_index(["class", "metric"])
    assert stats.loc[("all", "count_patches"), "value"] == 16 * len(manifest)
    per_class = stats.xs("count_object_patches", level="metric")["value"]
    assert per_class.sum() == stats.loc[("all_nonbg", "count_nonbg_query_patches"), "value"]
    assert json.loads(stats["settings"].iloc[0])["grid"] == [4, 4]


def test_per_crop_counts_sum_to_every_count_row(scalemae_rows):
    """The sidecar (``crop_units``): each crop's counts per search add up to the CSV's counts; every crop is a unit."""
    rows, paths, manifest, _ = scalemae_rows
    units: list[pd.DataFrame] = []
    again = retrieval_rows("scalemae", str(paths["clean"]), {v: str(paths[v]) for v in VARIANTS}, manifest,
                           metric="dot", removed=12, device="cpu", units=units)
    pd.testing.assert_frame_equal(again, rows)  # collecting units changes no row
    table = pd.concat(units, ignore_index=True)
    sums = table.groupby(["experiment", "model", "level", "class"])["value"].sum()
    counts = rows[rows["experiment"].str.startswith("fair1m_retrieval") & (rows["metric"] == "count")]
    assert len(counts) and len(sums) <= len(counts)
    for r in counts.to_dict("records"):
        assert sums.get((r["experiment"], r["model"], r["level"], r["class"]), 0.0) == r["value"], r
    for _, group in table.groupby(["experiment", "model", "level"]):
        assert sorted(group.loc[group["class"] == "queries", "unit"]) == sorted(manifest["sample_id"].astype(str))


def test_rows_feed_the_report_and_every_output(scalemae_rows, tmp_path):
    _, _, _, csv = scalemae_rows
    tidy = read_results([csv])  # tidy contract and level conventions
    comparison = compare(tidy, load_published())
    # Nothing published for Scale-MAE: the published FAIR1M counts are listed beside ours as not computed.
    assert set(comparison.loc[comparison["status"] == "not computed", "experiment"]) == {"fair1m_stats",
                                                                                      "fair1m_rotation"}
    report = write_report([csv], tmp_path / "reproduction.md", "test", "synthetic", "pretrained checkpoints")
    text = (tmp_path / "reproduction.md").read_text()
    assert text.count("## Section 5 — FAIR1M object-patch retrieval") == 1
    assert text.index("## Section 5") < text.index("## `fair1m_stats`") < text.index("## `fair1m_retrieval`")
    assert (report["experiment"] == "fair1m_rotation").any()
    config = {"retrieval": {"fig11_models": ["dino", "ibot", "dinov2"]}, "retrieval_models": ["scalemae"]}
    for name in ("fig6", "fig7", "fig11", "table3"):
        out = output_paths(name, tmp_path)
        make_output(name, [str(csv)], out, config)
        assert all(Path(p).stat().st_size > 0 for p in out.values())
    fig6 = pd.read_csv(output_paths("fig6", tmp_path)["csv"])
    assert set(fig6["model"]) == {"scalemae", "scalemae-12"} and set(fig6["data"]) == {"synthetic"}
    assert set(pd.read_csv(output_paths("fig11", tmp_path)["csv"])["missing_models"]) == {"dino;ibot;dinov2"}
    assert set(pd.read_csv(output_paths("fig7", tmp_path)["csv"])["exclude_own"]) == {"crop"}  # the default
    table3 = pd.read_csv(output_paths("table3", tmp_path)["csv"]).set_index("class")
    shown = concat_results([str(csv)])
    boeing = shown[(shown["class"] == "Boeing737") & (shown["metric"] == "count_object_patches")]["value"].iloc[0]
    assert table3.loc["Boeing737", "patches 4x4"] == boeing
    assert table3.loc["all object patches", "published 14x14"] == 5850
    assert table3.loc["all object patches", "published 16x16"] == 7623
    assert table3.loc["all patches", "published 14x14"] == 57820


# --------------------------------------------------------------------------- wiring


def test_experiment_reads_every_variant_and_fig11_falls_back(paper_config, demo_config):
    study = STUDIES["retrieval"]
    inputs = study.experiments["fair1m_retrieval"].inputs(Layout(paper_config, "results/paper"), "mae")
    assert inputs["gallery"] == "results/paper/features/fair1m/train/mae/clean.parquet"
    assert len(inputs["queries"]) == 24 and "rotate-20" in inputs["queries"] and "freqnoise-4" in inputs["queries"]
    assert fig11_models(paper_config) == ["dino", "ibot", "dinov2"]
    demo = copy.deepcopy(demo_config)
    wanted = {"fig11_models": ["dino", "ibot", "dinov2"]}
    assert fig11_models({**demo, "retrieval": wanted}) == ["dino", "ibot", "dinov2"]  # the demo has all three
    mae_only = {**demo, "retrieval_models": ["mae"], "retrieval": wanted}
    assert fig11_models(mae_only) == ["mae"]  # none configured: every retrieval model, the missing ones named


# --------------------------------------------------------------------------- hand-built feature files

#: A non-square patch grid (rows, cols): row-major index = row * cols + col.
GRID23 = (2, 3)
B777 = fair1m.CLASS_INDEX["Boeing777"]


def _meta(crop: str, labels, source=None) -> pd.DataFrame:
    rows, cols = np.divmod(np.arange(GRID23[0] * GRID23[1]), GRID23[1])
    meta = pd.DataFrame({"sample_id": crop, "tile_id": 0, "patch_row": rows, "patch_col": cols,
                         "label": np.asarray(labels, dtype=np.uint8), "image_h": 224, "image_w": 224})
    if source is not None:
        meta["source_patch"] = np.asarray(source, dtype=np.int64)
    return meta


def _write_toy(path: Path, crops: list[tuple[str, np.ndarray, list, list | None]], variant: str = "clean") -> str:
    """One feature file of 2x3-patch crops: (crop id, features (6, C), labels, source patches or None)."""
    meta = pd.concat([_meta(c, labels, source) for c, _, labels, source in crops], ignore_index=True)
    x = np.concatenate([f for _, f, _, _ in crops]).astype(np.float32)
    attrs = {"model": "toy", "arch": "vit_test", "weights": "random", "variant": variant, "dataset": "fair1m",
             "split": "train", "preset": "test", "patch_labels": "nearest_exact", "seed": 0,
             "data_source": "synthetic"}
    write_features(path, meta, {12: x}, None, attrs, dtype="float32")
    return str(path)


def _toy_manifest(crops: dict[str, str]) -> pd.DataFrame:
    """Crop id -> the FAIR1M scene (image) it was cut from."""
    return pd.DataFrame({"sample_id": list(crops), "image_path": list(crops.values()), "x0": 0, "y0": 0,
                         "crop_size": 224, "classes": str(B737), "dropped_boxes": [0, 1, 2][: len(crops)],
                         "selected_for": B737})


def _counts(rows: pd.DataFrame, experiment: str, model: str = "toy") -> dict[str, int]:
    mine = rows[(rows["experiment"] == experiment) & (rows["model"] == model) & (rows["metric"] == "count")]
    return {c: int(v) for c, v in zip(mine["class"], mine["value"]) if c in CATEGORIES}


@pytest.fixture(scope="module")
def two_crops_of_one_scene(tmp_path_factory):
    """Crops A1, A2 cut from scene a.tif, B1 from scene b.tif; one-hot gallery features on a 2x3 grid.

    Two Boeing737 queries of A1 ("shift-1") point mostly at their same patch
    (A1 patch (1, 0) = index 3, and A1 patch (0, 1) = index 1), less at A2's
    patch 0 (a Boeing747: same super class) and least at B1's patch 0 (a
    Small Car: another object). So, by the protocol: Fig 6 finds the same
    patch for both; Fig 7 excluding the crop finds A2's Boeing747, excluding
    the scene B1's car.
    """
    work = tmp_path_factory.mktemp("toy")
    eye = 3 * np.eye(18, dtype=np.float32)
    bg = [BG] * 6
    gallery = _write_toy(work / "clean.parquet", [
        ("A1", eye[0:6], [B737] * 6, None),
        ("A2", eye[6:12], [B747, *bg[1:]], None),
        ("B1", eye[12:18], [CAR, *bg[1:]], None),
    ])
    queries = np.zeros((6, 18), dtype=np.float32)
    for q, same in ((0, 3), (1, 1)):  # query patch -> its same patch in A1
        queries[q, same], queries[q, 6], queries[q, 12] = 1.0, 0.5, 0.25
    variant = _write_toy(work / "shift-1.parquet", [("A1", queries, [B737, B737, *bg[2:]], [3, 1, -1, -1, -1, -1])],
                         variant="shift-1")
    return gallery, {"shift-1": variant}, _toy_manifest({"A1": "a.tif", "A2": "a.tif", "B1": "b.tif"})


def test_same_patch_on_a_non_square_grid(two_crops_of_one_scene):
    """``source_patch`` is row-major (row * cols + col); the gallery's index must be the same on a 2x3 grid."""
    gallery, queries, manifest = two_crops_of_one_scene
    rows = retrieval_rows("toy", gallery, queries, manifest, device="cpu")
    assert _counts(rows, "fair1m_retrieval") == {**dict.fromkeys(CATEGORIES, 0), "same_patch": 2}
    np.testing.assert_array_equal(patch_index(np.array([0, 1, 1]), np.array([2, 0, 2]), (2, 3)), [2, 3, 5])
    settings = json.loads(rows["settings"].iloc[-1])
    assert settings["grid"] == [2, 3] and settings["dropped_boxes"] == 3  # the manifest's 0 + 1 + 2


@pytest.mark.parametrize("unit,found", [("crop", "same_super"), ("scene", "other_object")])
def test_fig7_excludes_the_crop_or_the_scene(two_crops_of_one_scene, unit, found):
    gallery, queries, manifest = two_crops_of_one_scene
    rows = retrieval_rows("toy", gallery, queries, manifest, exclude_own=unit, device="cpu")
    assert _counts(rows, "fair1m_retrieval_exclude_own") == {**dict.fromkeys(CATEGORIES, 0), found: 2}
    assert {json.loads(s)["exclude_own"] for s in rows.loc[rows["experiment"] != "fair1m_stats", "settings"]} \
        == {unit}


def test_exclude_own_defaults_to_the_crop_and_refuses_other_units(two_crops_of_one_scene, paper_config):
    gallery, queries, manifest = two_crops_of_one_scene
    assert search_settings(paper_config)["exclude_own"] == "crop"
    assert search_settings({})["exclude_own"] == "crop"
    with pytest.raises(ConfigError, match="exclude_own"):
        retrieval_rows("toy", gallery, queries, manifest, exclude_own="image", device="cpu")
    with pytest.raises(ConfigError, match="two scenes"):  # one scene only: nothing left outside it
        retrieval_rows("toy", gallery, queries, manifest.assign(image_path="a.tif"), exclude_own="scene",
                       device="cpu")


def test_ranked_dims_are_the_largest_variances():
    x = np.array([[0, 0, 0], [1, 3, -2], [-1, -3, 2]], dtype=np.float32)  # variances 2/3, 6, 8/3
    np.testing.assert_array_equal(ranked_dims(x, 2), [1, 2])


@pytest.fixture(scope="module")
def variance_case(tmp_path_factory):
    """Dim 0 varies most over the gallery, dim 1 over the queries (hand-computed below)."""
    work = tmp_path_factory.mktemp("variance")
    g = np.array([[10, 0, 0, 0], [-10, 0, 0, 0], [0, 1, 1, 0], [0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], np.float32)
    bg = [BG] * 6
    gallery = _write_toy(work / "clean.parquet", [("A1", g, [BG, BG, B737, BG, BG, BG], None),
                                                  ("B1", np.zeros((6, 4), np.float32), bg, None)])
    q = np.zeros((6, 4), np.float32)
    q[0], q[1] = [0, 10, 1, 0], [0, -10, 0, 1]
    queries = _write_toy(work / "shift-1.parquet", [("A1", q, [B737, B737, *bg[2:]], [-1] * 6)], variant="shift-1")
    return gallery, {"shift-1": queries}, _toy_manifest({"A1": "a.tif", "B1": "b.tif"})


def test_removed_dims_are_ranked_on_the_gallery(variance_case):
    """Gallery's top dim is 0: without it, query 0 ([_, 10, 1, 0]) is nearest the background patch [_, 2, 0, 0]
    (score 20 > 11) and query 1 ([_, -10, 0, 1]) scores 0 first at gallery patch 0 (background). Removing the
    queries' top dim (1) instead would send query 0 to the Boeing737 patch [0, _, 1, 0]."""
    gallery, queries, manifest = variance_case
    rows = retrieval_rows("toy", gallery, queries, manifest, removed=1, device="cpu")
    assert set(rows["model"]) == {"toy", "toy-1"}
    assert _counts(rows, "fair1m_retrieval", "toy-1") == {**dict.fromkeys(CATEGORIES, 0), "background": 2}
    settings = json.loads(rows.loc[rows["model"] == "toy-1", "settings"].iloc[-1])
    assert (settings["removed_dims"], settings["dims"]) == (1, 3)


@pytest.mark.parametrize("m", [4, 5])
def test_removed_dims_that_leave_nothing_are_refused(variance_case, m):
    gallery, queries, manifest = variance_case
    with pytest.raises(ConfigError, match=rf"retrieval.removed_dims = {m}: model 'toy' has 4 dimensions"):
        retrieval_rows("toy", gallery, queries, manifest, removed=m, device="cpu")


# --------------------------------------------------------------------------- report


def _rotation_row(model: str, metric: str, value: float) -> dict:
    return {"experiment": "fair1m_rotation", "dataset": "fair1m", "model": model, "probe": "none", "layer": None,
            "level": "rotate-5", "class": "all_nonbg", "metric": metric, "value": value, "preset": "test",
            "weights": "url:x.pth", "knn_metric": "dot", "patch_labels": "nearest_exact", "data": "official"}


def test_report_compares_fig6_as_shares_of_each_sides_queries():
    """Published (paper, rotate 5 deg): supervised 1,560 same patches of 5,850 queries; DINOv2 1,527 of 7,623.

    Ours: 1,500 of 6,000 queries and 1,527 of 7,000. The counts are shown,
    but only the shares are compared: 0.25 - 1560/5850 and 1527/7000 - 1527/7623.
    """
    ours = pd.DataFrame([_rotation_row("supervised", "count_same_patch", 1500),
                         _rotation_row("supervised", "count_queries", 6000),
                         _rotation_row("supervised", "share_same_patch", 0.25),
                         _rotation_row("dinov2", "count_same_patch", 1527),
                         _rotation_row("dinov2", "count_queries", 7000),
                         _rotation_row("dinov2", "share_same_patch", 1527 / 7000)])
    ours["layer"] = pd.array(ours["layer"], dtype="Int64")
    everything = compare(ours, load_published())
    result = everything[everything["level"] == "rotate-5"].set_index(["model", "metric"])
    share = result.loc[("supervised", "share_same_patch")]
    assert share["status"] == "compared" and share["published"] == pytest.approx(1560 / 5850)
    assert share["difference"] == pytest.approx(0.25 - 1560 / 5850)
    assert result.loc[("dinov2", "share_same_patch"), "difference"] == pytest.approx(1527 / 7000 - 1527 / 7623)
    for model, count, published, queries, their_queries in (("supervised", 1500, 1560, 6000, 5850),
                                                            ("dinov2", 1527, 1527, 7000, 7623)):
        shown = result.loc[(model, "count_same_patch")]
        assert (shown["ours"], shown["published"]) == (count, published) and pd.isna(shown["difference"])
        assert shown["status"] != "compared" and pd.isna(shown["within_tolerance"])
        assert tuple(result.loc[(model, "count_queries"), ["ours", "published"]]) == (queries, their_queries)
    # The other published counts of rotate-5 are listed as not computed, their shares too.
    missing = everything[everything["status"] == "not computed"]
    assert {"share_same_finegrained_class", "count_same_finegrained_class"} <= set(missing["metric"])


def test_published_vocabulary_on_the_hand_built_case(two_crops_of_one_scene):
    """As a whole-degree rotation, the two queries give the authors' cumulative counts and subset sizes.

    Both find their same patch: same patch 2, "same fine-grained class" 2 and
    "same super category" 2 (cumulative), of 2 queries. The clean gallery has
    18 patches, 8 of them object patches (A1: 6, A2: 1, B1: 1).
    """
    gallery, queries, manifest = two_crops_of_one_scene
    rows = retrieval_rows("toy", gallery, {"rotate-5": queries["shift-1"]}, manifest, device="cpu")
    rotation = rows[rows["experiment"] == "fair1m_rotation"].set_index("metric")["value"].to_dict()
    assert rotation == {"count_queries": 2, "count_same_patch": 2, "share_same_patch": 1.0,
                        "count_same_finegrained_class": 2, "share_same_finegrained_class": 1.0,
                        "count_same_supercategory": 2, "share_same_supercategory": 1.0}
    stats = rows[rows["experiment"] == "fair1m_stats"].set_index(["class", "metric"])["value"]
    assert stats[("all", "count_patches")] == 18 and stats[("all_nonbg", "count_nonbg_query_patches")] == 8
    assert stats[("Boeing737", "count_object_patches")] == 6 and stats[("Boeing747", "count_object_patches")] == 1
