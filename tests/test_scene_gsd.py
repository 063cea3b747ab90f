"""Fig 5: GSD resampling, [CLS] vs mean-patch tokens, Scale-MAE's GSD ratio, the split and the k-NN rows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from vitlocal.errors import ConfigError
from vitlocal.studies.runner import concat_results
from vitlocal.models.extractor import build_extractor
from vitlocal.models.registry import resolve
from vitlocal.studies.scene import figures
from vitlocal.studies.scene.gsd import (
    SceneFeatures,
    extract_scene_features,
    model_input,
    read_scene_features,
    representation_variance,
    resample_gsd,
    scene_knn_rows,
    scene_split,
    token_summaries,
    write_scene_features,
)
from vitlocal.subsets import select_subset
from vitlocal.synthetic import ucmerced as synth_ucmerced

TINY = {"img_size": 32, "embed_dim": 12, "depth": 2, "num_heads": 3}


def square_image(size=256, top=64, side=64):
    image = np.zeros((size, size, 3), np.uint8)
    image[top:top + side, top:top + side] = 255
    return image


@pytest.mark.parametrize("scale, side", [(1.0, 64), (0.5, 32), (0.25, 16), (0.125, 8)])
def test_resampling_scales_a_drawn_square(scale, side):
    out = resample_gsd(square_image(), scale)
    assert out.shape == (int(256 * scale), int(256 * scale), 3)
    white = np.argwhere(out[..., 0] == 255)
    assert len(white) == side * side  # area averaging of an aligned square stays exactly white inside
    assert white.min(axis=0).tolist() == [int(64 * scale)] * 2 and white.max(axis=0).tolist() == [int(128 * scale) - 1] * 2
    assert set(np.unique(out)) == {0, 255}


def test_resampling_rejects_bad_scales():
    for bad in (0, -0.5, 1.5):
        with pytest.raises(ConfigError, match="scene.scales"):
            resample_gsd(square_image(), bad)


def test_model_input_is_the_resized_normalised_image():
    spec = resolve("dino", {"weights": "random", "model_kwargs": TINY})
    x = model_input(square_image(), 0.5, spec)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    # the square fills rows/cols 8..15 of the 32 px input: white there, black in the corners
    white = (1 - np.asarray(spec.mean)) / np.asarray(spec.std)
    np.testing.assert_allclose(x[:, 11, 11], white, atol=1e-5)
    np.testing.assert_allclose(x[:, 0, 0], -np.asarray(spec.mean) / np.asarray(spec.std), atol=1e-5)


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


def test_scalemae_receives_base_over_scale(ucm, tmp_path):
    root, manifest = ucm
    spec = resolve("scalemae", {"weights": "random", "seed": 6, "model_kwargs": TINY})
    extractor = build_extractor(spec, tmp_path)
    feats = extract_scene_features(dataset="ucmerced", root=root, manifest=manifest, spec=spec, extractor=extractor,
                                   scales=[0.25, 1.0], base_resolution=2.0, batch_size=4, preset="t",
                                   data_source="synthetic")
    np.testing.assert_allclose(feats.gsd_ratios, [8.0, 2.0])
    assert feats.cls.shape == (2, 6, 12) and feats.attrs["gsd_aware"] is True
    from vitlocal.io import read_rgb

    image = read_rgb(root / manifest["image_path"].iloc[3])
    x = torch.from_numpy(model_input(image, 0.25, spec))[None]
    outs = {}
    for ratio in (8.0, 1.0):
        extractor.model.gsd_ratio = ratio
        outs[ratio] = token_summaries(extractor, x, spec.depth)[0][0]
    np.testing.assert_allclose(feats.cls[0, 3], outs[8.0], atol=1e-5)
    assert np.abs(outs[8.0] - outs[1.0]).max() > 1e-3  # the ratio changes the features

    plain = resolve("dino", {"weights": "random", "model_kwargs": TINY})
    other = extract_scene_features(dataset="ucmerced", root=root, manifest=manifest, spec=plain,
                                   extractor=build_extractor(plain, tmp_path), scales=[0.5], base_resolution=2.0,
                                   batch_size=6, preset="t", data_source="synthetic")
    assert np.isnan(other.gsd_ratios).all() and other.attrs["gsd_aware"] is False
    write_scene_features(other, tmp_path / "f.npz")
    back = read_scene_features(tmp_path / "f.npz")
    np.testing.assert_array_equal(back.mean, other.mean)
    assert back.sample_ids.tolist() == manifest["sample_id"].tolist() and back.attrs == other.attrs


def test_split_is_stratified_seeded_and_two_sided():
    labels = np.repeat([0, 1, 2], [5, 2, 10])
    train = scene_split(labels, 0.8, seed=3)
    assert [int(train[labels == c].sum()) for c in range(3)] == [4, 1, 8]
    np.testing.assert_array_equal(train, scene_split(labels, 0.8, seed=3))
    assert not np.array_equal(train, scene_split(labels, 0.8, seed=4))
    with pytest.raises(ConfigError, match="class 1 has 1 image"):
        scene_split(np.array([0, 0, 1]), 0.5, seed=0)


def test_patch_variance_pools_all_patches():
    rng = np.random.default_rng(0)
    patches = rng.normal(size=(6, 9, 4)) * [1, 10, 0.1, 3]  # 6 images x 9 patches x 4 dims
    feats = SceneFeatures(cls=rng.normal(size=(1, 6, 4)), mean=patches.mean(1)[None], sq_mean=(patches**2).mean(1)[None],
                          labels=np.zeros(6), sample_ids=np.arange(6).astype(str), scales=np.ones(1),
                          gsd_ratios=np.full(1, np.nan), attrs={})
    train = np.array([1, 1, 0, 1, 0, 1], bool)
    var = representation_variance(feats, 0, train)
    np.testing.assert_allclose(var["mean"], patches[train].reshape(-1, 4).var(axis=0), rtol=1e-10)
    np.testing.assert_allclose(var["cls"], feats.cls[0, train].var(axis=0))


def _planted(tmp_path, model="m", dataset="ucmerced"):
    """Dim 0: huge noise; dim 1: the class. 1-NN dot fails with dim 0 and is perfect without it."""
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 10)
    n = len(labels)
    x = np.zeros((n, 4))
    x[:, 0] = rng.normal(0, 100, n)
    x[:, 1] = np.where(labels == 1, 1.0, -1.0)
    x[:, 2:] = rng.normal(0, 0.01, (n, 2))
    feats = SceneFeatures(cls=x[None].astype(np.float32), mean=(x[None] * 0.5).astype(np.float32),
                          sq_mean=(x[None] ** 2 * 0.25).astype(np.float32), labels=labels,
                          sample_ids=np.array([f"s{i}" for i in range(n)]), scales=np.array([0.5]),
                          gsd_ratios=np.array([2.0]),
                          attrs={"model": model, "dataset": dataset, "layer": 12, "preset": "demo",
                                 "weights": "random(seed=0)", "data_source": "synthetic"})
    path = tmp_path / f"{dataset}.npz"
    write_scene_features(feats, path)
    return path, labels


def test_knn_rows_remove_the_top_variance_dim(tmp_path):
    path, labels = _planted(tmp_path)
    rows = scene_knn_rows("m", {"ucmerced": path}, removed_dims=1, train_fraction=0.5, k=1, metric="dot", seed=0,
                          device="cpu")
    assert len(rows) == 4 and set(rows["model"]) == {"m", "m-1"}
    assert set(rows["level"]) == {"cls:scale=0.5", "mean:scale=0.5"}
    value = rows.set_index(["model", "representation"])["value"]
    assert value[("m-1", "cls")] == 1.0 and value[("m-1", "mean")] == 1.0
    assert value[("m", "cls")] < 0.8  # dim 0 dominates the dot product
    # the same by hand: 1-NN with dot on dim 0 only decides, labels of test = argmax over train of x0*x0'
    settings = json.loads(rows["settings"].iloc[0])
    assert settings["n_train"] == 10 and settings["n_test"] == 10 and settings["gsd_ratio"] == 2.0
    assert settings["gsd_m"] == pytest.approx(0.6)
    with pytest.raises(ConfigError, match="removed_dims = 4"):
        scene_knn_rows("m", {"ucmerced": path}, removed_dims=4, train_fraction=0.5, k=1, metric="dot", seed=0)
    with pytest.raises(ConfigError, match="not resisc45/m"):
        scene_knn_rows("m", {"resisc45": path}, removed_dims=1, train_fraction=0.5, k=1, metric="dot", seed=0)


def test_fig5_writes_the_numbers_with_a_demo_banner(tmp_path, monkeypatch):
    path, _ = _planted(tmp_path, model="mae")
    stamped = []
    monkeypatch.setattr("vitlocal.plotting.base.stamp_demo", lambda fig, subject=None: stamped.append(subject))
    rows = scene_knn_rows("mae", {"ucmerced": path}, removed_dims=1, train_fraction=0.5, k=1, metric="dot", seed=0,
                          device="cpu")
    csv = tmp_path / "rows.csv"
    rows.to_csv(csv, index=False)
    out = {s: tmp_path / f"fig5.{s}" for s in ("pdf", "png", "csv")}
    data = figures.fig5(concat_results([csv]), out["pdf"], out["png"], out["csv"])
    assert all(p.stat().st_size > 0 for p in out.values())
    assert stamped == ["synthetic data and random weights"]
    assert len(data) == 4 and set(data["base_model"]) == {"mae"} and data["weights"].iloc[0] == "random(seed=0)"
    shown = pd.read_csv(out["csv"])
    assert shown["value"].tolist() == data["value"].tolist()
