"""Multi-layer feature extraction on tiny random timm ViTs (fast, offline)."""

from __future__ import annotations

import argparse

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

import vitlocal.models.convert as convert
from vitlocal.errors import ConfigError, CorruptFileError, WeightsNotFoundError
from vitlocal.models.extractor import build_extractor, build_model, read_checkpoint
from vitlocal.models.registry import MODELS, demo_variant, resolve
from vitlocal.models.weights import weights_path

TINY = {"embed_dim": 48, "depth": 4, "num_heads": 3, "img_size": 64}


def tiny_spec(seed: int = 0, **overrides):
    return resolve("tiny", {"arch": "vit_tiny_patch16_224", "weights": "random", "seed": seed,
                            "model_kwargs": TINY, **overrides})


def batch(h: int = 64, w: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(seed))


def truncated_run(model, x: torch.Tensor, layer: int, norm: bool = True) -> torch.Tensor:
    """The authors' way [code]: run only the first ``layer`` blocks, then the final norm."""
    with torch.no_grad():
        t = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
        for block in model.blocks[:layer]:
            t = block(t)
        return model.norm(t) if norm else t


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_extractor(tiny_spec(), tmp_path_factory.mktemp("w"))


def test_one_pass_equals_truncated_runs(tiny):
    x = batch()
    patch, cls = tiny.forward_layers(x, [4, 1, 2, 2])
    assert sorted(patch) == [1, 2, 4] and sorted(cls) == [1, 2, 4]
    for layer in (1, 2, 4):
        ref = truncated_run(tiny.model, x, layer)
        assert patch[layer].shape == (2, 16, 48)
        torch.testing.assert_close(patch[layer], ref[:, 1:], atol=1e-5, rtol=0)
        torch.testing.assert_close(cls[layer], ref[:, 0], atol=1e-5, rtol=0)


def test_final_norm_is_applied_with_its_affine_parameters(tmp_path):
    ext = build_extractor(tiny_spec(), tmp_path)
    with torch.no_grad():
        ext.model.norm.weight.fill_(2.0)
        ext.model.norm.bias.fill_(0.5)
    x = batch()
    patch, _ = ext.forward_layers(x, [3])
    tokens = patch[3]
    # LayerNorm output: per-token mean = bias, (biased) std = weight (up to eps)
    torch.testing.assert_close(tokens.mean(-1), torch.full((2, 16), 0.5), atol=1e-5, rtol=0)
    torch.testing.assert_close(tokens.std(-1, unbiased=False), torch.full((2, 16), 2.0), atol=1e-4, rtol=0)
    raw = truncated_run(ext.model, x, 3, norm=False)[:, 1:]
    assert not torch.allclose(tokens, raw, atol=1e-2)


def test_hook_fallback_matches_forward_intermediates(tmp_path):
    ext = build_extractor(tiny_spec(), tmp_path)
    x = batch()
    expected = ext.forward_layers(x, [1, 3])
    ext.model.forward_intermediates = None  # an architecture without the timm API
    got = ext.forward_layers(x, [1, 3])
    for want, have in zip(expected, got):
        for layer in (1, 3):
            torch.testing.assert_close(have[layer], want[layer], atol=1e-6, rtol=0)


def test_dinov2_style_patch14_at_224_gives_256_patches(tmp_path):
    spec = demo_variant(MODELS["dinov2"], depth=2)
    ext = build_extractor(spec, tmp_path)
    patch, cls = ext.forward_layers(batch(224, 224)[:1], [2])
    assert patch[2].shape == (1, 256, 48) and cls[2].shape == (1, 48)


def test_registers_are_dropped_from_the_patch_grid(tmp_path):
    ext = build_extractor(demo_variant(MODELS["dinov2_reg4"], depth=2), tmp_path)
    x = batch(224, 224)[:1]
    patch, cls = ext.forward_layers(x, [1, 2])
    ref = truncated_run(ext.model, x, 2)
    assert ref.shape[1] == 5 + 256
    torch.testing.assert_close(patch[2], ref[:, 5:], atol=1e-5, rtol=0)
    torch.testing.assert_close(cls[2], ref[:, 0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("key", ["eva02", "simmim", "scalemae"])
def test_last_layer_equals_forward_features_for_other_archs(tmp_path, key):
    ext = build_extractor(demo_variant(MODELS[key], depth=2), tmp_path)
    x = batch(224, 224)[:1]
    patch, cls = ext.forward_layers(x, [2])
    with torch.no_grad():
        full = ext.model.forward_features(x)
    torch.testing.assert_close(patch[2], full[:, 1:], atol=1e-5, rtol=0)
    torch.testing.assert_close(cls[2], full[:, 0], atol=1e-5, rtol=0)


def test_non_native_input_interpolates_position_embedding(tmp_path):
    dynamic = build_extractor(tiny_spec(), tmp_path, dynamic_img_size=True)
    static = build_extractor(tiny_spec(), tmp_path)
    x = batch()
    torch.testing.assert_close(dynamic.forward_layers(x, [4])[0][4], static.forward_layers(x, [4])[0][4])
    # Reference: a model built for 64x96 whose stored position embedding was resampled once.
    wide = timm.create_model("vit_tiny_patch16_224", **{**TINY, "img_size": (64, 96)}).eval()
    state = dict(static.model.state_dict())
    state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], new_size=(4, 6), old_size=(4, 4))
    wide.load_state_dict(state)
    x_wide = batch(64, 96)
    patch, _ = dynamic.forward_layers(x_wide, [2, 4])
    assert patch[4].shape == (2, 24, 48)
    torch.testing.assert_close(patch[4], truncated_run(wide, x_wide, 4)[:, 1:], atol=1e-5, rtol=0)


def test_input_and_layer_errors(tiny):
    with pytest.raises(ConfigError, match="dynamic_img_size=True"):
        tiny.forward_layers(batch(64, 96), [1])
    with pytest.raises(ConfigError, match="multiple of patch size 16"):
        tiny.forward_layers(batch(64, 70), [1])
    with pytest.raises(ConfigError, match=r"1\.\.4"):
        tiny.forward_layers(batch(), [0, 2])
    with pytest.raises(ConfigError, match=r"1\.\.4"):
        tiny.forward_layers(batch(), [5])
    with pytest.raises(ConfigError, match=r"\(B, 3, H, W\)"):
        tiny.forward_layers(batch()[0], [1])


def test_random_weights_are_seeded_and_leave_global_rng_alone(tmp_path):
    torch.manual_seed(1)
    a = build_model(tiny_spec(seed=5), tmp_path).state_dict()
    after_build = torch.rand(3)
    torch.manual_seed(1)
    assert torch.equal(after_build, torch.rand(3))  # the global RNG stream is untouched
    torch.manual_seed(2)
    b = build_model(tiny_spec(seed=5), tmp_path).state_dict()
    c = build_model(tiny_spec(seed=6), tmp_path).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.0.attn.qkv.weight"], c["blocks.0.attn.qkv.weight"])


def test_timm_format_file_is_loaded_strictly(tmp_path):
    spec = resolve("tiny_hub", {"arch": "vit_tiny_patch16_224.augreg_in21k_ft_in1k", "model_kwargs": TINY})
    with pytest.raises(WeightsNotFoundError, match="model.safetensors"):
        build_extractor(spec, tmp_path)
    source = build_model(tiny_spec(seed=9), tmp_path)
    path = weights_path(spec, tmp_path)
    path.parent.mkdir(parents=True)
    save_file(source.state_dict(), str(path))
    loaded = build_extractor(spec, tmp_path).model.state_dict()
    assert set(loaded) == set(source.state_dict())
    assert all(torch.equal(loaded[k], v) for k, v in source.state_dict().items())


def test_official_format_goes_through_its_converter(tmp_path, monkeypatch):
    spec = resolve("ibot", {"model_kwargs": TINY})
    source = build_model(tiny_spec(seed=4, model_kwargs={**TINY, "num_classes": 0}), tmp_path)
    checkpoint = {
        "state_dict": {f"backbone.{k}": v for k, v in source.state_dict().items()},
        "args": argparse.Namespace(epochs=3),  # not loadable with weights_only=True
    }
    path = weights_path(spec, tmp_path)
    path.parent.mkdir(parents=True)
    torch.save(checkpoint, path)
    seen = {}

    def fake_ibot(raw, model):
        seen["raw_keys"] = sorted(raw)
        return {k.removeprefix("backbone."): v for k, v in raw["state_dict"].items()}

    monkeypatch.setitem(convert.CONVERTERS, "ibot", fake_ibot)
    ext = build_extractor(spec, tmp_path)
    assert seen["raw_keys"] == ["args", "state_dict"]
    x = batch()
    torch.testing.assert_close(ext.forward_layers(x, [4])[0][4], truncated_run(source, x, 4)[:, 1:])


def test_dinov2_hub_file_is_resampled_to_224(tmp_path):
    """The hub file holds a 37x37 position embedding (518 px); timm's filter resamples it to 16x16."""
    kwargs = {"embed_dim": 48, "num_heads": 3, "depth": 1}
    spec = resolve("dinov2", {"model_kwargs": kwargs})
    native = timm.create_model("vit_base_patch14_dinov2", **kwargs)
    assert native.pos_embed.shape[1] == 1 + 37 * 37
    path = weights_path(spec, tmp_path)
    path.parent.mkdir(parents=True)
    save_file(native.state_dict(), str(path))
    model = build_extractor(spec, tmp_path).model
    expected = resample_abs_pos_embed(native.pos_embed.detach(), new_size=(16, 16), num_prefix_tokens=1)
    torch.testing.assert_close(model.pos_embed.detach(), expected)
    torch.testing.assert_close(model.blocks[0].mlp.fc1.weight, native.blocks[0].mlp.fc1.weight)


def test_unreadable_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CorruptFileError, match="broken.pth"):
        read_checkpoint(path)


@pytest.mark.parametrize("arch,prefix", [("vit_base_patch14_dinov2", 1), ("vit_base_patch14_reg4_dinov2", 0)])
def test_whole_frame_grid_is_resampled_once_from_the_checkpoint_table(tmp_path, arch, prefix):
    """Issue 18 §2: a 48x80 grid (672x1120 frame) gets the checkpoint's 37x37 table resampled once.

    Reference: timm's ``resample_abs_pos_embed`` of the stored table, and a model
    built at the checkpoint's own 518 px that timm resamples at run time.
    """
    kwargs = {"embed_dim": 48, "num_heads": 3, "depth": 1}
    key = "dinov2" if prefix else "dinov2_reg4"
    spec = resolve(key, {"arch": arch, "model_kwargs": {**kwargs, "img_size": 224}})
    native = timm.create_model(arch, **kwargs, dynamic_img_size=True).eval()
    with torch.no_grad():  # a table with detail that a 16x16 copy loses
        native.pos_embed.copy_(torch.randn(native.pos_embed.shape, generator=torch.Generator().manual_seed(1)))
    path = weights_path(spec, tmp_path)
    path.parent.mkdir(parents=True)
    save_file(native.state_dict(), str(path))
    ext = build_extractor(spec, tmp_path, dynamic_img_size=True)
    table = native.pos_embed.detach()
    want = resample_abs_pos_embed(table, new_size=(48, 80), old_size=(37, 37), num_prefix_tokens=prefix)
    with torch.no_grad():
        used = ext.model._pos_embed(torch.zeros(1, 48, 80, 48))
    n_prefix = ext.model.num_prefix_tokens
    torch.testing.assert_close(used[:, n_prefix:], want[:, prefix:], atol=1e-6, rtol=0)
    x = batch(672, 1120)[:1]
    with torch.no_grad():
        reference = native.forward_features(x)
    patch, _ = ext.forward_layers(x, [1])
    torch.testing.assert_close(patch[1], reference[:, n_prefix:], atol=1e-5, rtol=0)
    # At the load size the model keeps timm's own (once-resampled) 16x16 table.
    static = build_extractor(spec, tmp_path)
    x = batch(224, 224)[:1]
    torch.testing.assert_close(ext.forward_layers(x, [1])[0][1], static.forward_layers(x, [1])[0][1])
