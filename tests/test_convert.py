"""Official checkpoints -> timm modules: strict key mapping and identical forward passes.

Checkpoints are built from test-only transcriptions of the official models
(``reference_models.py``) so they carry the official key names; tiny sizes
check the outputs numerically, full sizes (on the meta device, no memory)
check that the real checkpoint layouts map key for key.
"""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

import reference_models as ref
from vitlocal.errors import ConfigError, CorruptFileError
from vitlocal.models import archs  # noqa: F401  (registers the architectures)
from vitlocal.models.archs import gsd_sincos_pos_embed
from vitlocal.models.convert import CONVERTERS

TINY = dict(img=64, patch=16, dim=48, depth=2, heads=3)
TINY_TIMM = dict(img_size=64, embed_dim=48, depth=2, num_heads=3)
ATOL = 1e-5


def _images(seed: int, size: int = 64, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _load(fmt: str, checkpoint: dict, model: torch.nn.Module, **load_kwargs) -> dict:
    state = CONVERTERS[fmt](checkpoint, model)
    model.load_state_dict(state, strict=True, **load_kwargs)
    return state


def _meta(fn):
    with torch.device("meta"):
        return fn()


def _assert_consumed(source: dict, converted: dict, dropped: set[str]) -> None:
    """Every source tensor is either dropped (exactly the documented set) or mapped."""
    assert {k for k in source if k in dropped} == dropped
    assert len(converted) == len(source) - len(dropped)


# --------------------------------------------------------------------------
# SimMIM
# --------------------------------------------------------------------------
def test_simmim_forward_matches_official():
    official = ref.randomize_(ref.SimMIM(**TINY), seed=0).eval()
    model = timm.create_model("simmim_vit_base_patch16_224", **TINY_TIMM).eval()
    source = official.state_dict()
    state = _load("simmim", {"model": source, "epoch": 799}, model)
    _assert_consumed(source, state, {
        "encoder.mask_token", "decoder.0.weight", "decoder.0.bias", "encoder.rel_pos_bias.relative_position_index",
    })
    x = _images(1)
    with torch.no_grad():
        expected = official.encoder(x, mask=torch.zeros(2, 4, 4))
        got = model.forward_features(x)
        inter = model.forward_intermediates(x, indices=[1], norm=True, output_fmt="NLC", intermediates_only=True)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(inter[0], expected[:, 1:], atol=ATOL, rtol=0)


def test_simmim_real_checkpoint_layout():
    source = _meta(lambda: ref.SimMIM()).state_dict()
    source["encoder.rel_pos_bias.relative_position_index"] = ref.simmim_relative_position_index(14)
    model = _meta(lambda: timm.create_model("simmim_vit_base_patch16_224"))
    state = _load("simmim", {"model": source}, model, assign=True)
    assert state["rel_pos_bias.relative_position_bias_table"].shape == (27 * 27 + 3, 12)
    assert state["blocks.11.gamma_2"].shape == (768,)
    assert "pos_embed" not in state and len(source) == 4 + len(state)


def test_simmim_wrong_relative_position_index_is_rejected():
    source = ref.SimMIM(**TINY).state_dict()
    source["encoder.rel_pos_bias.relative_position_index"] = ref.simmim_relative_position_index(4).flip(0)
    model = timm.create_model("simmim_vit_base_patch16_224", **TINY_TIMM)
    with pytest.raises(CorruptFileError, match="relative_position_index"):
        CONVERTERS["simmim"]({"model": source}, model)


# --------------------------------------------------------------------------
# iBOT
# --------------------------------------------------------------------------
def _ibot_checkpoint(backbone: ref.IBOTBackbone, layout: str) -> dict:
    if layout == "teacher_backbone":  # released checkpoint_teacher.pth
        return {"state_dict": backbone.state_dict()}
    wrapped = ref.IBOTTeacher(backbone, TINY["dim"]).state_dict()
    if layout == "full_teacher":  # checkpoint.pth['teacher']
        return {"teacher": wrapped, "student": {}, "epoch": 100}
    return {"state_dict": {f"module.{k}": v for k, v in wrapped.items()}}


@pytest.mark.parametrize("layout", ["teacher_backbone", "full_teacher", "ddp_prefixed"])
def test_ibot_forward_matches_official(layout):
    backbone = ref.randomize_(ref.IBOTBackbone(**TINY), seed=2).eval()
    model = timm.create_model("vit_base_patch16_224", num_classes=0, **TINY_TIMM).eval()
    state = _load("ibot", _ibot_checkpoint(backbone, layout), model)
    assert len(state) == len(backbone.state_dict())
    x = _images(3)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), backbone(x), atol=ATOL, rtol=0)


def test_ibot_real_checkpoint_layout():
    source = _meta(lambda: ref.IBOTBackbone()).state_dict()
    model = _meta(lambda: timm.create_model("vit_base_patch16_224", num_classes=0))
    state = _load("ibot", {"state_dict": source}, model, assign=True)
    assert len(state) == len(source) == 4 + 12 * 12 + 2  # cls, pos, patch_embed, blocks, norm


# --------------------------------------------------------------------------
# Scale-MAE
# --------------------------------------------------------------------------
def test_gsd_pos_embed_hand_values():
    # dim 4: token (row i, col j) -> [sin(j r), cos(j r), sin(i r), cos(i r)]
    r = 0.5
    emb = gsd_sincos_pos_embed(4, (2, 3), gsd_ratio=r)
    i, j = 1, 2
    expected = torch.tensor([np.sin(j * r), np.cos(j * r), np.sin(i * r), np.cos(i * r)], dtype=torch.float32)
    torch.testing.assert_close(emb[i * 3 + j], expected)
    assert emb.shape == (6, 4)


@pytest.mark.parametrize("ratio", [1.0, 0.37, 2.5])
def test_gsd_pos_embed_equals_official_formula(ratio):
    official = ref.scalemae_pos_embed(64, 5, torch.tensor([ratio]))[0, 1:]
    torch.testing.assert_close(gsd_sincos_pos_embed(64, (5, 5), ratio), official, atol=1e-6, rtol=0)
    if ratio == 1.0:  # Scale-MAE at unit ratio is MAE's fixed table
        mae = torch.from_numpy(ref.mae_numpy_sincos(64, 5, cls_token=False)).float()
        torch.testing.assert_close(gsd_sincos_pos_embed(64, (5, 5)), mae, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("ratio", "size"), [(1.0, 64), (0.5, 64), (2.0, 96)])
def test_scalemae_forward_matches_official(ratio, size):
    official = ref.randomize_(ref.ScaleMAE(**TINY, dec_dim=32, dec_depth=1, dec_heads=4), seed=4).eval()
    model = timm.create_model("scalemae_vit_large_patch16", gsd_ratio=ratio, **TINY_TIMM).eval()
    source = official.state_dict()
    state = _load("scalemae", {"model": source, "args": None}, model)
    assert set(state) == {k for k in source if k.startswith(("cls_token", "patch_embed.", "blocks.", "norm."))}
    x = _images(5, size=size)
    with torch.no_grad():
        expected = official.forward_encoder_tokens(x, torch.full((2,), ratio))
        torch.testing.assert_close(model.forward_features(x), expected, atol=ATOL, rtol=0)


def test_scalemae_real_checkpoint_layout():
    source = _meta(lambda: ref.ScaleMAE()).state_dict()
    model = _meta(lambda: timm.create_model("scalemae_vit_large_patch16"))
    state = _load("scalemae", {"model": source}, model, assign=True)
    assert len(state) == 1 + 2 + 24 * 12 + 2  # cls, patch_embed, blocks, norm
    assert state["patch_embed.proj.weight"].shape == (1024, 3, 16, 16)


def test_scalemae_unknown_key_is_named():
    source = ref.ScaleMAE(**TINY, dec_dim=32, dec_depth=1, dec_heads=4).state_dict()
    source["surprise.weight"] = torch.zeros(3)
    model = timm.create_model("scalemae_vit_large_patch16", **TINY_TIMM)
    with pytest.raises(CorruptFileError, match="surprise.weight"):
        CONVERTERS["scalemae"]({"model": source}, model)


# --------------------------------------------------------------------------
# MAE with decoder
# --------------------------------------------------------------------------
MAE_DEC = dict(dec_dim=32, dec_depth=1, dec_heads=4)
MAE_DEC_TIMM = dict(decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4)


def _mae_pair(norm_pix_loss: bool = False):
    official = ref.randomize_(ref.MAE(**TINY, **MAE_DEC, norm_pix_loss=norm_pix_loss), seed=6).eval()
    model = timm.create_model(
        "mae_vit_base_patch16_dec512d8b", norm_pix_loss=norm_pix_loss, **TINY_TIMM, **MAE_DEC_TIMM
    ).eval()
    state = _load("mae_decoder", {"model": official.state_dict()}, model)
    assert len(state) == len(official.state_dict())
    return official, model


@pytest.mark.parametrize("norm_pix_loss", [False, True])
@pytest.mark.parametrize("mask_ratio", [0.0, 0.75])
def test_mae_reconstruction_matches_official(norm_pix_loss, mask_ratio):
    official, model = _mae_pair(norm_pix_loss)
    x, seed = _images(7), 11
    noise = torch.rand(2, 16, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        latent_ref, mask_ref, ids_ref = official.forward_encoder(x, mask_ratio, noise)
        pred_ref = official.forward_decoder(latent_ref, ids_ref)
        latent, mask, ids = model.forward_encoder(x, mask_ratio, seed)
        pred, mask2 = model.reconstruct(x, mask_ratio, seed)
    torch.testing.assert_close(latent, latent_ref, atol=ATOL, rtol=0)
    assert torch.equal(mask, mask_ref) and torch.equal(mask2, mask_ref) and torch.equal(ids, ids_ref)
    torch.testing.assert_close(pred, pred_ref, atol=ATOL, rtol=0)
    if mask_ratio > 0:
        torch.testing.assert_close(
            model.forward_loss(x, pred, mask), official.forward_loss(x, pred_ref, mask_ref), atol=ATOL, rtol=0)
    pixels = model.predicted_pixels(x, model.patch_targets(x))  # perfect prediction -> the input
    torch.testing.assert_close(pixels, x, atol=1e-4, rtol=0)


def test_mae_zero_dims_equals_official_on_zeroed_latent():
    official, model = _mae_pair()
    x, dims = _images(8), [0, 5, 47]
    noise = torch.rand(2, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        latent, _, ids = official.forward_encoder(x, 0.75, noise)
        latent[..., dims] = 0
        expected = official.forward_decoder(latent, ids)
        got, _ = model.reconstruct(x, 0.75, seed=3, zero_dims=dims)
        intact, _ = model.reconstruct(x, 0.75, seed=3)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    assert (got - intact).abs().max() > 1e-3


def test_mae_features_are_the_unmasked_encoder():
    official, model = _mae_pair()
    x = _images(9)
    noise = torch.rand(2, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        latent, _, ids = official.forward_encoder(x, 0.0, noise)
        patches = torch.gather(latent[:, 1:], 1, ids.unsqueeze(-1).expand(-1, -1, latent.shape[-1]))
        feats = model.forward_intermediates(x, indices=[1], norm=True, output_fmt="NLC", intermediates_only=True)
    torch.testing.assert_close(feats[0], patches, atol=ATOL, rtol=0)


def test_mae_masking_is_seeded():
    _, model = _mae_pair()
    tokens = torch.zeros(3, 196, 8)
    _, mask_a, _ = model.random_masking(tokens, 0.75, seed=1)
    _, mask_b, _ = model.random_masking(tokens, 0.75, seed=1)
    _, mask_c, _ = model.random_masking(tokens, 0.75, seed=2)
    assert torch.equal(mask_a, mask_b) and not torch.equal(mask_a, mask_c)
    assert mask_a.sum(dim=1).tolist() == [196 - 49] * 3
    with pytest.raises(ConfigError, match="mask_ratio"):
        model.random_masking(tokens, 1.0, seed=1)


def test_mae_real_checkpoint_layout():
    source = _meta(lambda: ref.MAE()).state_dict()
    model = _meta(lambda: timm.create_model("mae_vit_base_patch16_dec512d8b"))
    state = _load("mae_decoder", {"model": source}, model, assign=True)
    # encoder (cls, pos, patch_embed, blocks, norm) + decoder (embed, mask_token, pos, blocks, norm, pred)
    assert len(state) == (4 + 12 * 12 + 2) + (2 + 1 + 1 + 8 * 12 + 2 + 2)
    assert state["decoder_pred.weight"].shape == (768, 512)
    assert state["decoder_pos_embed"].shape == (1, 197, 512)


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------
def test_shape_mismatch_and_bad_wrapper_are_reported():
    official = ref.MAE(**TINY, **MAE_DEC)
    model = timm.create_model("mae_vit_base_patch16_dec512d8b", **TINY_TIMM, decoder_embed_dim=64,
                              decoder_depth=1, decoder_num_heads=4)
    expected = r"19 shape mismatches.*decoder_blocks\.0\.attn\.proj\.bias: checkpoint \(32,\) vs model \(64,\)"
    with pytest.raises(CorruptFileError, match=expected):
        CONVERTERS["mae_decoder"]({"model": official.state_dict()}, model)
    with pytest.raises(CorruptFileError, match="wrapped under"):
        CONVERTERS["mae_decoder"]({"optimizer": {}, "epoch": 3}, model)


def test_timm_download_is_refused():
    with pytest.raises(ConfigError, match="pretrained=False"):
        timm.create_model("scalemae_vit_large_patch16", pretrained=True)
