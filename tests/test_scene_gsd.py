"""Fig 5: GSD resampling, [CLS] vs mean-patch tokens, Scale-MAE's GSD ratio, the split and the k-NN rows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from vitlocal.errors import ConfigError, CorruptFileError
from vitlocal.studies.base import concat_results
from vitlocal.models.extractor import build_extractor
from vitlocal.models.registry import resolve
from vitlocal.studies.scene import figures
from vitlocal.studies.scene.gsd import (
    SceneFeatures,
    check_eval_sizes,
    extract_scene_feature_files,
    extract_scene_features,
    model_input,
    read_scene_features,
    representation_variance,
    scene_knn_rows,
    scene_split,
    token_summaries,
    write_scene_features,
)
from vitlocal.subsets import select_subset
from vitlocal.synthetic import ucmerced as synth_ucmerced

TINY = {"img_size": 32, "embed_dim": 12, "depth": 2, "num_heads": 3}
MEAN, STD = (0.2, 0.4, 0.6), (0.5, 0.25, 0.2)


def test_resampling_area_averages_a_non_square_image_to_its_own_size():
    """A 64 x 128 (h x w) image to 32 x 32: each output pixel is the mean of a 2-row x 4-column block."""
    spec = resolve("dino", {"weights": "random", "model_kwargs": TINY, "mean": MEAN, "std": STD})
    image = np.zeros((64, 128, 3), np.uint8)
    image[0:32, 94:128] = 255  # top right; column 94 cuts the 4-px block 92..95 in half
    image[:, :, 1] //= 5  # green 51: the channels differ
    x = model_input(image, 32, spec)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    white = np.zeros((32, 32))
    white[0:16, 24:32] = 1.0
    white[0:16, 23] = 0.5
    want = np.stack([(white * v - m) / s for v, m, s in zip((1.0, 51 / 255, 1.0), MEAN, STD)])
    np.testing.assert_allclose(x, want, atol=1e-6)


def test_resampling_at_the_native_size_only_normalises():
    spec = resolve("dino", {"weights": "random", "model_kwargs": TINY, "mean": MEAN, "std": STD})
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    want = ((image / 255.0 - MEAN) / STD).transpose(2, 0, 1)
    np.testing.assert_allclose(model_input(image, 32, spec), want, atol=1e-6)


def test_eval_sizes_must_fit_the_patch_grid():
    spec = resolve("dino", {"weights": "random", "model_kwargs": TINY})
    assert check_eval_sizes([16, 32, 224], spec) == [16, 32, 224]
    for bad in ([28, 32], [0], [8], []):
        with pytest.raises(ConfigError, match="scene.eval_sizes"):
            check_eval_sizes(bad, spec)


def test_cls_and_mean_patch_are_the_right_tokens(tmp_path):
    """Identity blocks, zero patch embedding: [CLS] = LN(cls_token), patch i = LN(pos_embed[i]) -- all distinct."""
    spec = resolve("dino", {"weights": "random", "model_kwargs": TINY})
    extractor = build_extractor(spec, tmp_path)
    model = extractor.model
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.patch_embed.proj.weight.zero_()
        model.patch_embed.proj.bias.zero_()
        for block in model.blocks:  # pre-norm residual blocks whose branches output 0: identity
            for linear in (block.attn.proj, block.mlp.fc2):
                linear.weight.zero_()
                linear.bias.zero_()
        model.cls_token.copy_(torch.randn(model.cls_token.shape, generator=gen) * 5 + 3)
        model.pos_embed.copy_(torch.randn(model.pos_embed.shape, generator=gen))
        model.pos_embed[:, 0] = 0
    x = torch.randn(2, 3, 32, 32, generator=gen)
    cls, mean, sq_mean = token_summaries(extractor, x, 2)
    norm = lambda t: torch.nn.functional.layer_norm(t, (12,), model.norm.weight, model.norm.bias, model.norm.eps)  # noqa: E731
    patches = norm(model.pos_embed[0, 1:]).detach()
    want_cls = norm(model.cls_token[0, 0]).detach().numpy()
    np.testing.assert_allclose(cls, np.stack([want_cls] * 2), atol=1e-5)
    np.testing.assert_allclose(mean, np.stack([patches.mean(0).numpy()] * 2), atol=1e-5)
    np.testing.assert_allclose(sq_mean, np.stack([(patches**2).mean(0).numpy()] * 2), atol=1e-5)
    assert np.abs(cls - mean).max() > 0.5  # [CLS] and mean patch differ: a swap would be seen


@pytest.fixture(scope="module")
def ucm(tmp_path_factory):
    root = tmp_path_factory.mktemp("ucm")
    synth_ucmerced.write(root, n_per_class=2, seed=0)
    manifest = select_subset("ucmerced", "all", root=root, settings={}, seed=0)
    return root, manifest.iloc[:6].reset_index(drop=True)


@pytest.fixture
def pos_embed_calls(monkeypatch):
    """Every (grid, input_res) Scale-MAE's GSD-aware position embedding is built with."""
    from vitlocal.models import archs

    calls = []
    real = archs.gsd_sincos_pos_embed

    def spy(dim, grid_hw, gsd_ratio=1.0, device=None):
        calls.append((tuple(grid_hw), float(gsd_ratio)))
        return real(dim, grid_hw, gsd_ratio, device=device)

    monkeypatch.setattr(archs, "gsd_sincos_pos_embed", spy)
    return calls


@pytest.mark.parametrize("base", [1.0, 2.0])
def test_scalemae_gets_the_official_position_span_at_each_size(ucm, tmp_path, pos_embed_calls, base):
    """Scale-MAE's knn.py: the image fed at size px (grid size/16) with input_res = base * 224 / size.

    The position span (grid x input_res) is then 14 * base grid units at every size.
    """
    root, manifest = ucm
    spec = resolve("scalemae", {"weights": "random", "seed": 6, "model_kwargs": TINY})
    extractor = build_extractor(spec, tmp_path)
    sizes = [32, 64, 112, 224]
    feats = extract_scene_features(dataset="ucmerced", root=root, manifest=manifest, spec=spec, extractor=extractor,
                                   sizes=sizes, base_resolution=base, batch_size=6, preset="t",
                                   data_source="synthetic")
    assert pos_embed_calls == [((s // 16, s // 16), base * 224 / s) for s in sizes]
    for (grid, res), size in zip(pos_embed_calls, sizes):
        assert grid[0] * res == pytest.approx(14 * base)
    np.testing.assert_allclose(feats.input_res, [base * 224 / s for s in sizes])
    assert feats.cls.shape == (4, 6, 12) and feats.attrs["gsd_aware"] is True


def test_every_model_is_fed_the_small_image_at_its_own_size(ucm, tmp_path, monkeypatch):
    """MAE / DINO see the same size x size image as Scale-MAE (their position embedding interpolated), not a resize."""
    from vitlocal.models.extractor import FeatureExtractor
    from vitlocal.subsets import write_manifest

    root, manifest = ucm
    shapes = []
    real = FeatureExtractor.forward_layers
    monkeypatch.setattr(FeatureExtractor, "forward_layers",
                        lambda self, x, layers: shapes.append(tuple(x.shape)) or real(self, x, layers))
    write_manifest(manifest, tmp_path / "m.csv")
    out = tmp_path / "out" / "gsd.npz"
    out.parent.mkdir()
    leftover = out.with_name(f".{out.name}.tmp-99999")
    leftover.write_bytes(b"half a file")
    extract_scene_feature_files(
        model_key="dino", model_overrides={"weights": "random", "model_kwargs": TINY}, datasets=["ucmerced"],
        roots={"ucmerced": root}, manifests={"ucmerced": tmp_path / "m.csv"}, data_sources={"ucmerced": "synthetic"},
        out_paths=[out], sizes=[16, 48, 32], base_resolution=1.0, weights_dir=tmp_path, device="cpu", batch_size=6,
        preset="t")
    assert shapes == [(6, 3, 16, 16), (6, 3, 48, 48), (6, 3, 32, 32)]
    assert not leftover.exists()  # the interrupted save's temporary file is gone
    feats = read_scene_features(out)
    assert feats.sizes.tolist() == [16, 48, 32] and np.isnan(feats.input_res).all()
    # at the model's own 32 px nothing is interpolated: the same tokens as a fixed-size extractor
    spec = resolve("dino", {"weights": "random", "model_kwargs": TINY})
    plain = build_extractor(spec, tmp_path)
    from vitlocal.io import read_rgb

    x = torch.from_numpy(np.stack([model_input(read_rgb(root / p), 32, spec) for p in manifest["image_path"]]))
    np.testing.assert_allclose(feats.cls[2], token_summaries(plain, x, spec.depth)[0], atol=1e-5)
    assert np.abs(feats.cls[1] - feats.cls[2]).max() > 1e-3


def test_scene_features_round_trip_and_broken_files_name_the_file(ucm, tmp_path):
    root, manifest = ucm
    spec = resolve("dino", {"weights": "random", "model_kwargs": TINY})
    feats = extract_scene_features(dataset="ucmerced", root=root, manifest=manifest, spec=spec,
                                   extractor=build_extractor(spec, tmp_path, dynamic_img_size=True), sizes=[16],
                                   base_resolution=2.0, batch_size=4, preset="t", data_source="synthetic")
    path = tmp_path / "f.npz"
    write_scene_features(feats, path)
    back = read_scene_features(path)
    np.testing.assert_array_equal(back.mean, feats.mean)
    assert back.sample_ids.tolist() == manifest["sample_id"].tolist() and back.attrs == feats.attrs
    data = path.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match=r"cut\.npz.*BadZipFile"):
        read_scene_features(cut)
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(CorruptFileError, match=r"empty\.npz.*(EOFError|BadZipFile|ValueError)"):
        read_scene_features(empty)
    old = tmp_path / "old.npz"
    np.savez(old, cls=feats.cls, scales=np.ones(1), attrs=np.array("{}"))
    with pytest.raises(CorruptFileError, match=r"old\.npz lack arrays"):
        read_scene_features(old)


def test_split_is_stratified_seeded_and_two_sided():
    labels = np.repeat([0, 1, 2], [5, 2, 10])
    train = scene_split(labels, 0.8, seed=3)
    assert [int(train[labels == c].sum()) for c in range(3)] == [4, 1, 8]
    np.testing.assert_array_equal(train, scene_split(labels, 0.8, seed=3))
    assert not np.array_equal(train, scene_split(labels, 0.8, seed=4))
    with pytest.raises(ConfigError, match="class 1 has 1 image"):
        scene_split(np.array([0, 0, 1]), 0.5, seed=0)


def _features(cls, mean, sq_mean, labels, model="m", dataset="ucmerced", sizes=(64,)):
    n = len(labels)
    return SceneFeatures(cls=np.asarray(cls, np.float32), mean=np.asarray(mean, np.float32),
                         sq_mean=np.asarray(sq_mean, np.float32), labels=np.asarray(labels),
                         sample_ids=np.array([f"s{i}" for i in range(n)]), sizes=np.asarray(sizes),
                         input_res=np.full(len(sizes), np.nan),
                         attrs={"model": model, "dataset": dataset, "layer": 12, "preset": "demo",
                                "weights": "random(seed=0)", "data_source": "synthetic"})


def test_patch_variance_pools_all_patches():
    rng = np.random.default_rng(0)
    patches = rng.normal(size=(6, 9, 4)) * [1, 10, 0.1, 3]  # 6 images x 9 patches x 4 dims
    feats = _features(rng.normal(size=(1, 6, 4)), patches.mean(1)[None], (patches**2).mean(1)[None], np.zeros(6))
    train = np.array([1, 1, 0, 1, 0, 1], bool)
    var = representation_variance(feats, 0, train)
    np.testing.assert_allclose(var["mean"], patches[train].reshape(-1, 4).var(axis=0), rtol=1e-5)
    np.testing.assert_allclose(var["cls"], feats.cls[0, train].astype(np.float64).var(axis=0), rtol=1e-6)


def test_dims_are_ranked_on_the_training_images_only(tmp_path):
    """Dim 0 varies only over the test images, dim 1 ([CLS]) and dim 3 (patches) over the training images.

    Ranked on the training images (the protocol), [CLS] loses dim 1 and the mean patch dim 3;
    ranked on all images both would lose dim 0.
    """
    labels = np.repeat([0, 1], 6)
    train = scene_split(labels, 0.5, seed=0)
    rng = np.random.default_rng(5)
    x = np.zeros((len(labels), 4))
    x[~train, 0] = rng.choice([-50.0, 50.0], (~train).sum())
    x[train, 1] = rng.choice([-2.0, 2.0], train.sum())
    x[:, 2] = np.where(labels == 1, 1.0, -1.0)
    spread = np.zeros_like(x)
    spread[train, 3] = 9.0  # within-image patch variance of dim 3, training images only
    path = tmp_path / "f.npz"
    write_scene_features(_features(x[None], x[None], (x**2 + spread)[None], labels), path)
    rows = scene_knn_rows("m", {"ucmerced": path}, removed_dims=1, train_fraction=0.5, knn="study", k=1,
                          temperature=0.07, seed=0, device="cpu")
    removed = {rep: json.loads(r["settings"])["removed"] for rep, r in
               rows[rows["removed_dims"] == 1].set_index("representation").iterrows()}
    assert removed == {"cls": [1], "mean": [3]}
    assert json.loads(rows["settings"].iloc[0])["removed"] == []


def _planted(tmp_path, model="m", dataset="ucmerced"):
    """Dim 0: huge noise; dim 1: the class. The k-NN fails with dim 0 and is perfect without it."""
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 10)
    n = len(labels)
    x = np.zeros((n, 4))
    x[:, 0] = rng.normal(0, 100, n)
    x[:, 1] = np.where(labels == 1, 1.0, -1.0)
    x[:, 2:] = rng.normal(0, 0.01, (n, 2))
    path = tmp_path / f"{dataset}.npz"
    write_scene_features(_features(x[None], x[None] * 0.5, x[None] ** 2 * 0.25, labels, model, dataset), path)
    return path, labels


@pytest.mark.parametrize("knn, k, metric", [("scalemae", 5, "cosine"), ("study", 1, "dot")])
def test_knn_rows_remove_the_top_variance_dim(tmp_path, knn, k, metric):
    path, labels = _planted(tmp_path)
    rows = scene_knn_rows("m", {"ucmerced": path}, removed_dims=1, train_fraction=0.5, knn=knn, k=k,
                          temperature=0.07, seed=0, device="cpu")
    assert len(rows) == 4 and set(rows["model"]) == {"m", "m-1"}
    assert set(rows["level"]) == {"cls:px=64", "mean:px=64"}
    value = rows.set_index(["model", "representation"])["value"]
    assert value[("m-1", "cls")] == 1.0 and value[("m-1", "mean")] == 1.0
    assert value[("m", "cls")] < 0.8  # dim 0 dominates
    # every row records the k-NN and the size / GSD it was made with
    assert set(rows["k"]) == {k} and set(rows["knn_metric"]) == {metric} and set(rows["knn"]) == {knn}
    assert set(rows["input_px"]) == {64} and set(rows["gsd_ratio"]) == {3.5}
    settings = json.loads(rows["settings"].iloc[0])
    assert settings["n_train"] == 10 and settings["n_test"] == 10 and settings["k"] == k
    assert settings["metric"] == metric and settings["input_px"] == 64 and settings["gsd_ratio"] == 3.5
    assert settings["gsd_m"] == pytest.approx(0.3 * 256 / 64)
    with pytest.raises(ConfigError, match="removed_dims = 4"):
        scene_knn_rows("m", {"ucmerced": path}, removed_dims=4, train_fraction=0.5, knn=knn, k=k, temperature=0.07,
                       seed=0)
    with pytest.raises(ConfigError, match="not resisc45/m"):
        scene_knn_rows("m", {"resisc45": path}, removed_dims=1, train_fraction=0.5, knn=knn, k=k, temperature=0.07,
                       seed=0)


def test_fig5_writes_the_numbers_with_a_demo_banner(tmp_path, monkeypatch):
    path, _ = _planted(tmp_path, model="mae")
    stamped = []
    monkeypatch.setattr("vitlocal.plotting.base.stamp_demo", lambda fig, subject=None: stamped.append(subject))
    rows = scene_knn_rows("mae", {"ucmerced": path}, removed_dims=1, train_fraction=0.5, knn="scalemae", k=5,
                          temperature=0.07, seed=0, device="cpu")
    csv = tmp_path / "rows.csv"
    rows.to_csv(csv, index=False)
    out = {s: tmp_path / f"fig5.{s}" for s in ("pdf", "png", "csv")}
    data = figures.fig5(concat_results([csv]), out["pdf"], out["png"], out["csv"])
    assert all(p.stat().st_size > 0 for p in out.values())
    assert stamped == ["synthetic data and random weights"]
    assert len(data) == 4 and set(data["base_model"]) == {"mae"} and data["weights"].iloc[0] == "random(seed=0)"
    shown = pd.read_csv(out["csv"])
    assert shown["value"].tolist() == data["value"].tolist()
    assert {"k", "knn_metric", "input_px", "gsd_ratio"} <= set(shown.columns)
    assert set(shown["k"]) == {5} and set(shown["knn_metric"]) == {"cosine"} and set(shown["input_px"]) == {64}
