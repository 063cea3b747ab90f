"""Manifest -> feature file: row counts, labels against independent references, variants, provenance, errors."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from vitlocal.datasets import cityscapes, fair1m, ucmerced
from vitlocal.errors import ConfigError
from vitlocal.features import pipeline
from vitlocal.features.pipeline import extract_features
from vitlocal.features.degrade import CropContext, apply_variant, derive_seed
from vitlocal.features.sources import make_source, transform_objects
from vitlocal.features.store import read_attrs, read_features
from vitlocal.models.registry import resolve
from vitlocal.subsets import select_subset
from vitlocal.synthetic import generate
from vitlocal.io import read_rgb
from vitlocal.tiling import PRESETS, nearest_exact_indices, stitch, tile_image

PROJECT = Path(__file__).resolve().parents[1]
TINY = {"arch": "vit_tiny_patch16_224", "weights": "random", "seed": 1,
        "model_kwargs": {"embed_dim": 48, "depth": 4, "num_heads": 3}}
GRID = (14, 14)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    for dataset in ("cityscapes", "fair1m", "bdd100k", "ucmerced"):
        generate(dataset, root / dataset, size="tiny", seed=0)
    return root


@pytest.fixture(scope="module")
def city(data) -> pd.DataFrame:
    return cityscapes.list_images(data / "cityscapes", "val").head(2)


@pytest.fixture(scope="module")
def crops(data) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fair1m.FewCropsWarning)
        return fair1m.select_crops(data / "fair1m", "train", per_class=1, crop_size=224).head(2)


def run(data: Path, dataset: str, manifest: pd.DataFrame, out: Path, **kwargs) -> tuple[pd.DataFrame, dict]:
    """extract_features with the tiny model on CPU; returns the file's metadata and embeddings."""
    settings = dict(model_key="dino", model_overrides=TINY, layers=[2, 4], variant="clean")
    settings.update(kwargs)
    extract_features(
        dataset=dataset, root=data / dataset, manifest=manifest, subset="test", out_path=out,
        preset="test", weights_dir=data / "weights", device="cpu", batch_size=24, dtype="float16",
        autocast="none", seed=0, data_source="synthetic", progress=False, **settings,
    )
    return read_features(out)


def reference_tiles(labels: np.ndarray, rows: int, cols: int) -> list[np.ndarray]:
    th, tw = labels.shape[0] // rows, labels.shape[1] // cols
    return [labels[r * th:(r + 1) * th, c * tw:(c + 1) * tw] for r in range(rows) for c in range(cols)]


def reference_majority(tile: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Per patch, the most common non-255 label of the pixels whose centres fall inside (ties: smallest)."""
    h, w = tile.shape
    row_of = (2 * np.arange(h) + 1) * grid[0] // (2 * h)
    col_of = (2 * np.arange(w) + 1) * grid[1] // (2 * w)
    out = np.full(grid, 255, dtype=np.uint8)
    for r in range(grid[0]):
        for c in range(grid[1]):
            values = tile[np.ix_(row_of == r, col_of == c)].ravel()
            values = values[values != 255]
            if values.size:
                out[r, c] = np.bincount(values).argmax()
    return out


def test_cityscapes_rows_labels_stitching_and_determinism(data, city, tmp_path):
    meta, emb = run(data, "cityscapes", city, tmp_path / "a.parquet")
    n_patches = 32 * GRID[0] * GRID[1]
    assert len(meta) == len(city) * n_patches
    assert {layer: e.shape for layer, e in emb.items()} == {2: (len(meta), 48), 4: (len(meta), 48)}
    for i, row in city.reset_index(drop=True).iterrows():
        image, labels = cityscapes.read_sample(data / "cityscapes", row)
        part = meta.iloc[i * n_patches:(i + 1) * n_patches]
        assert (part["sample_id"] == row["sample_id"]).all()
        assert (part[["image_h", "image_w"]].to_numpy() == image.shape[:2]).all()
        tiles = reference_tiles(labels, 4, 8)
        th, tw = tiles[0].shape
        ri, ci = nearest_exact_indices(th, GRID[0]), nearest_exact_indices(tw, GRID[1])
        expected = np.stack([t[np.ix_(ri, ci)] for t in tiles])
        stored = part["label"].to_numpy().reshape(32, *GRID)
        np.testing.assert_array_equal(stored, expected)
        majority = np.stack([reference_majority(t, GRID) for t in tiles])
        np.testing.assert_array_equal(part["label_majority"].to_numpy().reshape(32, *GRID), majority)
        # Stitching the stored labels = per tile nearest-exact down to the grid, then back up.
        up_r, up_c = nearest_exact_indices(GRID[0], th), nearest_exact_indices(GRID[1], tw)
        round_trip = np.block([[t[np.ix_(ri[up_r], ci[up_c])] for t in tiles[r * 8:(r + 1) * 8]] for r in range(4)])
        np.testing.assert_array_equal(stitch(stored, PRESETS["cityscapes"], (th, tw)), round_trip)
    attrs = read_attrs(tmp_path / "a.parquet")
    assert attrs["weights"] == "random(seed=1)"
    assert (attrs["model"], attrs["arch"], attrs["variant"], attrs["split"]) == ("dino", TINY["arch"], "clean", "test")
    assert (attrs["layers"], attrs["grid"], attrs["data_source"]) == ([2, 4], [14, 14], "synthetic")
    assert attrs["model_spec"]["depth"] == 4 and attrs["tiling"]["rows"] == 4
    _, again = run(data, "cityscapes", city, tmp_path / "b.parquet")
    assert all(again[layer].tobytes() == emb[layer].tobytes() for layer in emb)


def test_blur_changes_features_not_labels(data, city, tmp_path):
    one = city.head(1)
    clean_meta, clean = run(data, "cityscapes", one, tmp_path / "clean.parquet", layers=[4])
    blur_meta, blur = run(data, "cityscapes", one, tmp_path / "blur.parquet", layers=[4], variant="blur-4")
    pd.testing.assert_frame_equal(clean_meta, blur_meta)
    assert np.abs(clean[4].astype(np.float32) - blur[4].astype(np.float32)).mean() > 1e-2
    # The variant is applied to the whole image before tiling.
    spec = resolve("dino", TINY)
    item = make_source("cityscapes", data / "cityscapes", one, spec, "blur-4")[0]
    image, _ = cityscapes.read_sample(data / "cityscapes", one.iloc[0])
    blurred = cv2.blur(image, (4, 4))
    np.testing.assert_array_equal(item.tiles, np.stack(reference_tiles(blurred, 4, 8)))


def test_fair1m_shift_moves_labels_and_records_source_patch(data, crops, tmp_path):
    row = crops.iloc[0]
    meta, _ = run(data, "fair1m", crops, tmp_path / "clean.parquet", layers=[1])
    assert len(meta) == len(crops) * 196
    np.testing.assert_array_equal(meta["source_patch"].to_numpy(), np.tile(np.arange(196), len(crops)))
    _, clean_map = fair1m.read_sample(data / "fair1m", row)
    idx = nearest_exact_indices(224, 14)
    np.testing.assert_array_equal(meta["label"].to_numpy()[:196].reshape(GRID), clean_map[np.ix_(idx, idx)])

    meta, _ = run(data, "fair1m", crops, tmp_path / "shift.parquet", layers=[1], variant="shift-10")
    # Content moves 10 px right: patch column c holds the centre of original column c - 1 (none for c = 0).
    r, c = np.divmod(np.arange(196), 14)
    np.testing.assert_array_equal(meta["source_patch"].to_numpy()[:196], np.where(c == 0, -1, r * 14 + c - 1))
    # Labels: the boxes seen through a window 10 px to the left (real surroundings, no border fill).
    objects = fair1m.read_objects(data / "fair1m" / row["xml_path"])
    shifted = fair1m.rasterize(objects, int(row["x0"]) - 10, int(row["y0"]), 224)
    assert not np.array_equal(shifted[np.ix_(idx, idx)], clean_map[np.ix_(idx, idx)])  # the check can fail
    np.testing.assert_array_equal(meta["label"].to_numpy()[:196].reshape(GRID), shifted[np.ix_(idx, idx)])


def test_fair1m_rotation_is_exact(data, crops):
    spec = resolve("dino", TINY)
    item = make_source("fair1m", data / "fair1m", crops.head(1), spec, "rotate-90")[0]
    # 90 deg counter-clockwise about the centre: transformed patch (r, c) came from original (c, 13 - r).
    r, c = np.divmod(np.arange(196), 14)
    np.testing.assert_array_equal(item.extra["source_patch"].ravel(), c * 14 + 13 - r)
    _, clean_map = fair1m.read_sample(data / "fair1m", crops.iloc[0])
    idx = nearest_exact_indices(224, 14)
    assert not np.array_equal(np.rot90(clean_map), clean_map)  # the check can fail
    np.testing.assert_array_equal(item.labels[0], np.rot90(clean_map)[np.ix_(idx, idx)])


def test_fair1m_variants_of_one_job_equal_fresh_reads(data, crops, tmp_path):
    """A job decodes each source image and rasterises each (crop, affine) once: every variant, in any order,
    still sees the untouched source and its own labels, and a rewritten image file is decoded again."""
    spec = resolve("dino", TINY)
    order = ["rotate-10", "clean", "blur-4", "rotate-10", "shift-3", "clean"]
    items = [make_source("fair1m", data / "fair1m", crops, spec, v)[0] for v in order]
    for variant, item in zip(order, items):
        # From scratch: the source decoded and the boxes moved and rasterised here, not through the caches.
        row = crops.iloc[0]
        source = read_rgb(data / "fair1m" / row["image_path"])
        x0, y0, size = int(row["x0"]), int(row["y0"]), int(row["crop_size"])
        crop = source[y0:y0 + size, x0:x0 + size]
        image, affine = apply_variant(crop, variant, derive_seed(0, str(row["sample_id"])),
                                      context=CropContext(source, x0, y0))
        objects = transform_objects(fair1m.read_objects(data / "fair1m" / row["xml_path"]), affine, x0, y0)
        labels = fair1m.rasterize(objects, x0, y0, size)
        idx = nearest_exact_indices(224, 14)
        np.testing.assert_array_equal(item.labels[0], labels[np.ix_(idx, idx)], err_msg=variant)
        expected = make_source("fair1m", data / "fair1m", crops, spec, variant)
        np.testing.assert_array_equal(item.tiles, tile_image(image, expected.tiling), err_msg=variant)
    np.testing.assert_array_equal(items[0].tiles, items[3].tiles)
    assert not np.array_equal(items[0].tiles, items[1].tiles)  # the check can fail

    # The same path rewritten (a user's corrected image): decoded again, not served from the cache.
    copy = tmp_path / "fair1m"
    shutil.copytree(data / "fair1m", copy)
    before = make_source("fair1m", copy, crops, spec, "clean")[0]
    image_path = copy / crops.iloc[0]["image_path"]
    inverted = 255 - read_rgb(image_path)
    Image.fromarray(inverted).save(image_path, format="TIFF")
    after = make_source("fair1m", copy, crops, spec, "clean")[0]
    assert not np.array_equal(before.tiles, after.tiles)


def test_whole_frame_mode(data, tmp_path):
    frames = select_subset("bdd100k", "val", root=data / "bdd100k", settings={"n_videos": 1}, seed=0).head(1)
    tiny = {**TINY, "model_kwargs": {**TINY["model_kwargs"], "depth": 1}}
    meta, emb = run(data, "bdd100k", frames, tmp_path / "full.parquet", variant="full", layers=[1],
                    model_overrides=tiny)
    assert len(meta) == 42 * 70 and emb[1].shape == (42 * 70, 48)
    assert (meta["patch_row"].max(), meta["patch_col"].max(), meta["tile_id"].max()) == (41, 69, 0)
    assert (meta["label"] == 255).all()
    attrs = read_attrs(tmp_path / "full.parquet")
    assert (attrs["mode"], attrs["grid"], attrs["tiling"]["out_size"]) == ("full", [42, 70], [672, 1120])
    source = make_source("bdd100k", data / "bdd100k", frames, resolve("dino", TINY), "full")
    assert source.tiling == PRESETS["bdd100k-full"]
    tiled = make_source("bdd100k", data / "bdd100k", frames, resolve("dino", TINY), "clean")[0]
    assert tiled.tiles.shape == (15, 224, 224, 3) and tiled.labels.shape == (15, 14, 14)
    # Cityscapes whole image (Table 5): one 64x128 tile, labels nearest-exact from the full map.
    one = cityscapes.list_images(data / "cityscapes", "val").head(1)
    item = make_source("cityscapes", data / "cityscapes", one, resolve("dino", TINY), "full")[0]
    _, labels = cityscapes.read_sample(data / "cityscapes", one.iloc[0])
    rows, cols = nearest_exact_indices(64, 4), nearest_exact_indices(128, 8)
    np.testing.assert_array_equal(item.labels[0], labels[np.ix_(rows, cols)])


def test_scene_labels_and_demo_models(data, tmp_path):
    images = ucmerced.list_images(data / "ucmerced").iloc[[0, -1]]
    models = yaml.safe_load((PROJECT / "config" / "demo.yaml").read_text())["models"]
    for key, overrides in models.items():
        meta, emb = run(data, "ucmerced", images, tmp_path / f"{key}.parquet", model_key=key,
                        model_overrides=overrides, layers=[12])
        spec = resolve(key, overrides)
        assert len(meta) == 2 * spec.grid[0] * spec.grid[1] and emb[12].shape[1] == 48
        assert read_attrs(tmp_path / f"{key}.parquet")["grid"] == list(spec.grid)
        weights = read_attrs(tmp_path / f"{key}.parquet")["weights"]
        if "factory" in overrides:  # a user's module builds (and seeds) itself
            assert weights == f"factory:{overrides['factory']}(seed={overrides['seed']})"
        else:
            assert weights == f"random(seed={overrides['seed']})"
    per_image = meta.groupby("sample_id", sort=False)["label"].agg(["min", "max"])
    expected = images.set_index("sample_id")["label"]
    assert (per_image["min"] == expected).all() and (per_image["max"] == expected).all()


def test_errors_are_clear_and_leave_no_file(data, city, tmp_path):
    out = tmp_path / "x.parquet"
    with pytest.raises(ConfigError, match=r"unknown image variant 'blurry-4'.*'full'"):
        run(data, "cityscapes", city, out, variant="blurry-4")
    with pytest.raises(ConfigError, match=r"layer\(s\) \[5\] do not exist in model 'dino' .*depth 4"):
        run(data, "cityscapes", city, out, layers=[4, 5])
    with pytest.raises(ConfigError, match="geometric transforms are supported for fair1m only"):
        run(data, "cityscapes", city, out, variant="shift-2")
    assert not out.exists()


def test_several_variants_share_one_model_build(data, city, tmp_path, monkeypatch):
    import vitlocal.features.pipeline as pipeline

    builds = []
    real_build = pipeline.build_extractor
    monkeypatch.setattr(pipeline, "build_extractor", lambda *a, **k: builds.append(k) or real_build(*a, **k))
    outs = [tmp_path / "clean.parquet", tmp_path / "blur-4.parquet"]
    pipeline.extract_feature_files(
        dataset="cityscapes", root=data / "cityscapes", manifest=city, subset="test", model_key="dino",
        model_overrides=TINY, layers=[4], variants=["clean", "blur-4"], out_paths=outs, preset="test",
        weights_dir=data / "weights", device="cpu", autocast="none", data_source="synthetic", progress=False,
    )
    assert len(builds) == 1
    (_, clean), (_, blurred) = read_features(outs[0]), read_features(outs[1])
    assert read_attrs(outs[1])["variant"] == "blur-4" and not np.array_equal(clean[4], blurred[4])


@pytest.mark.parametrize("cores, threads, requested, expected", [
    (2, 2, 4, 0),    # this machine: the forward takes both cores
    (16, 4, 4, 4),   # a workstation: the workers get their own cores
    (8, 6, 4, 2),
    (8, 1, 0, 0),
])
def test_loader_workers_on_the_cpu_only_take_free_cores(monkeypatch, cores, threads, requested, expected):
    monkeypatch.setattr(pipeline.os, "sched_getaffinity", lambda _: set(range(cores)), raising=False)
    monkeypatch.setattr(pipeline.torch, "get_num_threads", lambda: threads)
    assert pipeline.loader_workers(requested, torch.device("cpu")) == expected
    assert pipeline.loader_workers(requested, torch.device("cuda")) == requested  # the GPU leaves the CPU free
