"""Segmentation evaluation core: loading, probes on feature files, full-resolution scoring, tidy rows."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vitlocal.datasets import ade20k, cityscapes
from vitlocal.errors import ConfigError, LabelError
from vitlocal.evaluation import segmentation as seg
from vitlocal.features.store import write_features
from vitlocal.io import write_png
from vitlocal.probes.metrics import confusion_matrix, iou_per_class, mean_iou, pixel_accuracy
from vitlocal.reproduction import TIDY_COLUMNS
from vitlocal.subsets import select_subset
from vitlocal.synthetic import generate
from vitlocal.tiling import TilingSpec, patch_labels, resize_for_tiling, stitch, tile_image

# --------------------------------------------------------------------------- helpers (also used by test_probing)

CITYSCAPES_LISTS = {
    "lists_dir": str(Path(__file__).resolve().parents[1] / "config/subsets/cityscapes"),
    "train_sets": {"set2": "training_set2.csv", "set4": "training_set4.csv"},
    "val_set": "validation_set.csv",
}


def tiny_cityscapes(root: Path) -> dict[str, pd.DataFrame]:
    """Synthetic tiny Cityscapes (64x128 images) and its set2 / set4 / val manifests."""
    generate("cityscapes", root, size="tiny")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seeded fallback for the absent authors' images
        return {name: select_subset("cityscapes", name, root=root, settings=CITYSCAPES_LISTS, seed=0)
                for name in ("set2", "set4", "val")}


def feature_attrs(model: str = "dino", split: str = "val", *, tiling: TilingSpec, grid: tuple[int, int],
                  dataset: str = "cityscapes", variant: str = "clean", weights: str = "random") -> dict:
    return {
        "model": model, "arch": "vit_test", "weights": weights, "variant": variant, "dataset": dataset,
        "split": split, "preset": "test", "patch_labels": "nearest_exact", "seed": 0, "data_source": "synthetic",
        "tiling": {"resize_to": list(tiling.resize_to) if tiling.resize_to else None, "rows": tiling.rows,
                   "cols": tiling.cols, "out_size": list(tiling.out_hw)},
        "grid": list(grid),
    }


def write_dataset_features(
    path: Path, dataset: str, root: Path, manifest: pd.DataFrame, *, tiling: TilingSpec, grid: tuple[int, int],
    layers: dict[int, float], num_classes: int, seed: int, model: str = "dino", split: str = "val",
    variant: str = "clean",
) -> pd.DataFrame:
    """A feature file whose patches carry the true patch labels and features ``onehot(label) * scale + noise``.

    ``layers`` maps layer -> noise sigma, so deeper layers can be made cleaner.
    Returns the patch metadata (with ``label``).
    """
    rng = np.random.default_rng(seed)
    metas = []
    for row in manifest.to_dict("records"):
        _, labels = seg.READERS[dataset](root, row)
        tiles = patch_labels(tile_image(labels, tiling), grid)
        t, r, c = np.indices(tiles.shape)
        metas.append(pd.DataFrame({
            "sample_id": row["sample_id"], "tile_id": t.ravel(), "patch_row": r.ravel(), "patch_col": c.ravel(),
            "label": tiles.ravel(), "image_h": labels.shape[0], "image_w": labels.shape[1],
        }))
    meta = pd.concat(metas, ignore_index=True)
    onehot = np.zeros((len(meta), num_classes + 1), np.float32)
    onehot[np.arange(len(meta)), np.minimum(meta["label"].to_numpy(), num_classes)] = 4.0
    embeddings = {layer: onehot + rng.normal(0, sigma, onehot.shape) for layer, sigma in layers.items()}
    attrs = feature_attrs(model, split, tiling=tiling, grid=grid, dataset=dataset, variant=variant)
    write_features(path, meta, embeddings, None, attrs)
    return meta


def manual_scores(val: seg.SplitFeatures, preds: np.ndarray, dataset: str, root: Path, manifest: pd.DataFrame,
                  tiling: TilingSpec, num_classes: int) -> np.ndarray:
    """Reference: explicit ``tiling.stitch`` per image and ``probes.metrics`` confusion matrix."""
    gh, gw = seg.patch_grid(val)
    cm = np.zeros((num_classes, num_classes), np.int64)
    for row in manifest.to_dict("records"):
        rows = (val.meta["sample_id"] == row["sample_id"]).to_numpy()
        grid = np.zeros((tiling.n_tiles, gh, gw), np.int64)
        m = val.meta[rows]
        grid[m["tile_id"], m["patch_row"], m["patch_col"]] = preds[rows]
        _, target = seg.READERS[dataset](root, row)
        target = resize_for_tiling(target, tiling)
        full = stitch(grid, tiling, tiling.tile_hw(target.shape))
        cm += confusion_matrix(full, target, num_classes)
    return cm


# --------------------------------------------------------------------------- hand-made dataset


def _write_cityscapes_image(root: Path, sample_id: str, label_ids: np.ndarray) -> dict:
    city = sample_id.split("_")[0]
    image_path = f"leftImg8bit/val/{city}/{sample_id}_leftImg8bit.png"
    label_path = f"gtFine/val/{city}/{sample_id}_gtFine_labelIds.png"
    write_png(root / image_path, np.zeros((*label_ids.shape, 3), np.uint8))
    write_png(root / label_path, label_ids.astype(np.uint8))
    return {"sample_id": sample_id, "image_path": image_path, "label_path": label_path}


ROAD, SIDEWALK, BUILDING = 0, 1, 2  # trainIds
LABEL_ID = {ROAD: 7, SIDEWALK: 8, BUILDING: 11, 255: 0}  # trainId -> Cityscapes labelId (0 = unlabeled)
TILING = TilingSpec(None, 2, 2, 32)  # 8x8 images -> four 4x4 tiles
GRID = (2, 2)  # each patch shows 2x2 pixels


@pytest.fixture
def handmade(tmp_path):
    """Two 8x8 images, predictions known per patch, and the confusion matrix counted by hand.

    Image A: top half road except pixel (0,0) unlabeled and (1,1) sidewalk;
    bottom half building (left) | sidewalk (right). Patch predictions: road on
    top except sidewalk for tile 0 patch (0,0); building on the bottom.
    Image B: all road, predicted road.
    """
    a = np.full((8, 8), ROAD)
    a[0, 0], a[1, 1] = 255, SIDEWALK
    a[4:, :4], a[4:, 4:] = BUILDING, SIDEWALK
    b = np.full((8, 8), ROAD)
    lut = np.vectorize(LABEL_ID.get)
    manifest = pd.DataFrame([
        _write_cityscapes_image(tmp_path, "frankfurt_000000_000000", lut(a)),
        _write_cityscapes_image(tmp_path, "lindau_000000_000000", lut(b)),
    ])
    pred_a = np.full((4, 2, 2), ROAD)
    pred_a[0, 0, 0] = SIDEWALK
    pred_a[2:] = BUILDING
    pred_b = np.full((4, 2, 2), ROAD)
    # Rows of the val file are stored in a shuffled order: scoring must not rely on it.
    t, r, c = (x.ravel() for x in np.indices((4, 2, 2)))
    meta = pd.concat([
        pd.DataFrame({"sample_id": sid, "tile_id": t, "patch_row": r, "patch_col": c, "image_h": 8, "image_w": 8})
        for sid in manifest["sample_id"]
    ], ignore_index=True)
    preds = np.concatenate([pred_a.ravel(), pred_b.ravel()])
    order = np.random.default_rng(0).permutation(len(meta))
    expected = np.array([[28 + 64, 2, 0], [0, 1, 16], [0, 0, 16]])
    return tmp_path, manifest, meta.iloc[order].reset_index(drop=True), preds[order], expected


def _val_file(path: Path, meta: pd.DataFrame, preds: np.ndarray, num_classes: int = 3) -> seg.SplitFeatures:
    """Val features one-hot on the class each patch should be predicted as."""
    x = np.eye(num_classes, dtype=np.float32)[preds]
    write_features(path, meta.assign(label=255), {12: x}, None, feature_attrs(tiling=TILING, grid=GRID))
    return seg.load_split(path, 12)


def _train_file(path: Path) -> seg.SplitFeatures:
    """Five patches per class with one-hot features, plus one void patch that would win every dot product."""
    labels = np.array([*np.repeat([ROAD, SIDEWALK, BUILDING], 5), 255])
    x = np.eye(3, dtype=np.float32)[np.minimum(labels, 2)]
    x[-1] = 10.0
    meta = pd.DataFrame({"sample_id": "aachen_000000_000000", "tile_id": np.arange(len(labels)) // 4,
                         "patch_row": np.arange(len(labels)) % 4 // 2, "patch_col": np.arange(len(labels)) % 2,
                         "label": labels, "image_h": 8, "image_w": 8})
    write_features(path, meta, {12: x}, None, feature_attrs(split="set4", tiling=TILING, grid=GRID))
    return seg.load_split(path, 12)


def test_handmade_knn_scores_match_hand_count(handmade):
    root, manifest, meta, preds, expected = handmade
    val = _val_file(root / "val.parquet", meta, preds)
    train = _train_file(root / "train.parquet")
    knn = seg.knn_predictions(train, val, k=1, metric="dot", device="cpu")
    np.testing.assert_array_equal(knn, preds)  # the void patch (dot 10) is not in the gallery
    result = seg.score_segmentation(val, knn, dataset="cityscapes", root=root, manifest=manifest,
                                    tiling=TILING, num_classes=3)
    np.testing.assert_array_equal(result.confusion, expected)
    iou = np.array([92 / 94, 1 / 19, 16 / 32])
    np.testing.assert_allclose(result.iou, iou)
    assert result.miou == pytest.approx(iou.mean())
    assert result.n_classes_averaged == 3
    assert result.pixel_accuracy == pytest.approx(109 / 127)
    assert result.n_pixels == 127


def test_handmade_linear_probe_predicts_the_separable_classes(handmade):
    root, manifest, meta, preds, expected = handmade
    val = _val_file(root / "val.parquet", meta, preds)
    train = _train_file(root / "train.parquet")
    probe, settings = seg.train_linear(train, num_classes=3, batchnorm=False, seed=0, device="cpu",
                                       settings={"epochs": 30, "lr": 0.5, "batch_size": 16})
    assert settings["n_ignored"] == 1 and settings["epochs"] == 30
    linear = seg.linear_predictions(probe, val)
    np.testing.assert_array_equal(linear, preds)
    result = seg.score_segmentation(val, linear, dataset="cityscapes", root=root, manifest=manifest,
                                    tiling=None, num_classes=3)  # tiling as recorded in the file
    np.testing.assert_array_equal(result.confusion, expected)


def test_score_rows_follow_the_tidy_contract(handmade):
    root, manifest, meta, preds, _ = handmade
    val = _val_file(root / "val.parquet", meta, preds)
    result = seg.score_segmentation(val, preds, dataset="cityscapes", root=root, manifest=manifest,
                                    tiling=TILING, num_classes=3)
    prov = seg.provenance(val.attrs, probe="knn", knn_metric="dot", settings={"k": 1})
    rows = seg.score_rows(result, experiment="train_size", dataset="cityscapes", model="dino", probe="knn",
                          layer=12, level="set4", class_names=["road", "sidewalk", "building"], provenance=prov)
    assert list(rows.columns) == [*TIDY_COLUMNS, "settings"]
    assert rows["class"].tolist() == ["road", "sidewalk", "building", "mean", "all"]
    assert rows["metric"].tolist() == ["iou"] * 3 + ["miou", "pixel_acc"]
    np.testing.assert_allclose(rows["value"], [*result.iou, result.miou, result.pixel_accuracy])
    assert set(rows["data"]) == {"synthetic"} and set(rows["weights"]) == {"random"}
    assert set(rows["settings"]) == {'{"k":1}'}
    linear = seg.provenance(val.attrs, probe="linear", knn_metric="dot")
    assert linear["knn_metric"] == ""


def test_scoring_refuses_incomplete_or_foreign_predictions(handmade):
    root, manifest, meta, preds, _ = handmade
    val = _val_file(root / "val.parquet", meta, preds)
    kwargs = dict(dataset="cityscapes", root=root, tiling=TILING, num_classes=3)
    with pytest.raises(ConfigError, match="has no prediction"):
        seg.score_segmentation(val, preds, manifest=pd.concat([manifest, manifest.iloc[:1].assign(
            sample_id="munster_000000_000000")]), **kwargs)
    with pytest.raises(ConfigError, match="twice"):
        seg.score_segmentation(val, preds, manifest=pd.concat([manifest, manifest]), **kwargs)
    with pytest.raises(ConfigError, match="not in the val manifest"):
        seg.score_segmentation(val, preds, manifest=manifest.iloc[:1], **kwargs)
    with pytest.raises(LabelError, match="expected classes 0..2"):
        seg.score_segmentation(val, np.full_like(preds, 3), manifest=manifest, **kwargs)
    with pytest.raises(ConfigError, match="was cut with"):
        seg.score_segmentation(val, preds, manifest=manifest, dataset="cityscapes", root=root,
                               tiling=TilingSpec(None, 1, 1), num_classes=3)


# --------------------------------------------------------------------------- against explicit stitching


@pytest.mark.parametrize("grid", [(4, 4), (3, 5)])  # 16-px tiles: exact blocks, and uneven nearest-exact
def test_cityscapes_scores_equal_explicit_stitching(tmp_path, grid):
    root = tmp_path / "cs"
    manifest = tiny_cityscapes(root)["val"]
    tiling = TilingSpec(None, 4, 8)
    write_dataset_features(tmp_path / "val.parquet", "cityscapes", root, manifest, tiling=tiling, grid=grid,
                           layers={12: 1.0}, num_classes=19, seed=0)
    val = seg.load_split(tmp_path / "val.parquet", 12)
    assert val.x.dtype == np.float32 and val.labels.dtype == np.uint8
    assert list(val.meta.columns) == list(seg.META_COLUMNS)
    preds = np.random.default_rng(1).integers(0, 19, len(val.labels))
    target = seg.EvalTarget.load("cityscapes", root, manifest)
    result = target.score(val, preds)
    cm = manual_scores(val, preds, "cityscapes", root, manifest, tiling, 19)
    np.testing.assert_array_equal(result.confusion, cm)
    np.testing.assert_allclose(result.iou, iou_per_class(cm), equal_nan=True)
    assert (result.miou, result.n_classes_averaged) == pytest.approx(mean_iou(cm))
    assert result.pixel_accuracy == pytest.approx(pixel_accuracy(cm))


def test_ade20k_label_maps_are_resized_to_the_tiling(tmp_path):
    root = tmp_path / "ade"
    generate("ade20k", root, size="tiny")
    manifest = ade20k.list_images(root, "validation")
    tiling = TilingSpec((40, 66), 2, 3)  # 96x128 images resized (nearest-exact) to 40x66, six 20x22 tiles
    write_dataset_features(tmp_path / "val.parquet", "ade20k", root, manifest, tiling=tiling, grid=(3, 3),
                           layers={12: 1.0}, num_classes=150, seed=0)
    val = seg.load_split(tmp_path / "val.parquet")
    assert val.layer == 12
    preds = np.random.default_rng(2).integers(0, 150, len(val.labels))
    target = seg.EvalTarget.load("ade20k", root, manifest)
    assert target.num_classes == 150 and target.class_names == ade20k.read_classes(root)
    result = target.score(val, preds)
    cm = manual_scores(val, preds, "ade20k", root, manifest, tiling, 150)
    np.testing.assert_array_equal(result.confusion, cm)
    assert result.n_pixels == 6 * 40 * 66 - sum(
        (resize_for_tiling(ade20k.read_sample(root, r)[1], tiling) == 255).sum() for r in manifest.to_dict("records"))


def test_with_features_and_stitch_predictions(tmp_path):
    root = tmp_path / "cs"
    manifest = tiny_cityscapes(root)["val"]
    tiling = TilingSpec(None, 4, 8)
    write_dataset_features(tmp_path / "val.parquet", "cityscapes", root, manifest, tiling=tiling, grid=(4, 4),
                           layers={12: 0.0}, num_classes=19, seed=0)
    val = seg.load_split(tmp_path / "val.parquet", 12)
    reduced = seg.with_features(val, val.x[:, :5])
    assert reduced.x.shape == (len(val.labels), 5) and reduced.meta is val.meta
    sample = manifest["sample_id"].iloc[1]
    full = seg.stitch_predictions(val, val.labels, sample)
    _, labels = cityscapes.read_sample(root, manifest.iloc[1])
    # Stitching the true patch labels = nearest-exact sampling of the label map and back.
    np.testing.assert_array_equal(full, stitch(patch_labels(tile_image(labels, tiling), (4, 4)), tiling, (16, 16)))
    assert full.shape == labels.shape and full.dtype == np.uint8


def test_probe_settings_from_config(demo_config):
    probes = seg.ProbeSettings.from_config(demo_config)
    assert probes.linear["epochs"] == demo_config["probes"]["linear_epochs"]
    assert probes.batchnorm("mae") and not probes.batchnorm("dino")
    assert probes.device == "cpu"
    with pytest.raises(ConfigError, match="unknown"):
        seg.train_linear(None, num_classes=3, batchnorm=False, settings={"epoch": 3}, seed=0)


def test_check_compatible_refuses_mixed_settings(handmade):
    root, _, meta, preds, _ = handmade
    val = _val_file(root / "val.parquet", meta, preds)
    train = _train_file(root / "train.parquet")
    seg.check_compatible(train, val)
    other = seg.SplitFeatures(val.x, val.labels, val.meta, {**val.attrs, "weights": "official"}, 12)
    with pytest.raises(ConfigError, match="weights='random'"):
        seg.check_compatible(train, other)
    with pytest.raises(ConfigError, match="layer 12 with 3 dims"):
        seg.check_compatible(train, seg.with_features(val, val.x[:, :2]))
