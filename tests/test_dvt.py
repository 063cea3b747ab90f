"""DVT: crop geometry, stage-1 recovery on synthetic features, stage 2, checkpoints and the authors' layout."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import Block, Mlp

from vitlocal.denoise.geometry import Box, image_coords, input_coords, random_resized_box
from vitlocal.denoise.stage1 import Stage1Settings, denoise_image, render_view, view_boxes
from vitlocal.denoise.stage2 import (
    Denoiser,
    Stage2Settings,
    denoise,
    load_checkpoint,
    save_checkpoint,
    sha256_of,
    train_denoiser,
)
from vitlocal.errors import ConfigError, CorruptFileError


def _cos(a, b):
    return float((np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).mean())


# --------------------------------------------------------------------------- geometry


def test_input_coords_are_patch_centres():
    q = input_coords((2, 4))
    assert q.shape == (2, 4, 2)
    np.testing.assert_allclose(q[0, :, 0], [0.125, 0.375, 0.625, 0.875])
    np.testing.assert_allclose(q[:, 0, 1], [0.25, 0.75])


def test_image_coords_hand_computed_box():
    # image 100 (H) x 200 (W); crop rows 20..59, cols 50..129 (40 x 80); 2 x 2 patch grid.
    # Patch centres in the crop: x = 50 + 80 * (0.25, 0.75) = 70, 110; y = 20 + 40 * (0.25, 0.75) = 30, 50.
    p = image_coords(Box(20, 50, 40, 80), (100, 200), (2, 2))
    np.testing.assert_allclose(p[..., 0], [[70 / 200, 110 / 200]] * 2)
    np.testing.assert_allclose(p[..., 1], [[30 / 100] * 2, [50 / 100] * 2])


def test_image_coords_flip_mirrors_columns_only():
    # Flipped: input column 0 shows the crop's right side: x = 110, column 1: x = 70; rows unchanged.
    p = image_coords(Box(20, 50, 40, 80, flip=True), (100, 200), (2, 2))
    np.testing.assert_allclose(p[..., 0], [[110 / 200, 70 / 200]] * 2)
    np.testing.assert_allclose(p[..., 1], [[0.3, 0.3], [0.5, 0.5]])


def test_full_view_coords_equal_input_coords():
    boxes = view_boxes((48, 64), Stage1Settings(views=3), np.random.default_rng(0))
    assert len(boxes) == 4 and boxes[-1] == Box(0, 0, 48, 64, False)
    np.testing.assert_allclose(image_coords(boxes[-1], (48, 64), (3, 4)), input_coords((3, 4)))


def test_random_boxes_respect_scale_ratio_and_bounds():
    rng = np.random.default_rng(1)
    boxes = [random_resized_box((224, 224), rng) for _ in range(300)]
    areas = np.array([b.height * b.width for b in boxes]) / 224**2
    ratios = np.array([b.width / b.height for b in boxes])
    assert areas.min() >= 0.09 and areas.max() <= 0.51
    assert ratios.min() >= 0.74 and ratios.max() <= 1.35
    assert all(b.top >= 0 and b.left >= 0 and b.top + b.height <= 224 and b.left + b.width <= 224 for b in boxes)
    assert 0.4 < np.mean([b.flip for b in boxes]) < 0.6


def test_rendered_flip_matches_coordinates():
    # A horizontal ramp image: the rendered view's left column must show the x that image_coords names.
    image = np.tile(np.linspace(0, 255, 64).astype(np.uint8)[None, :, None], (32, 1, 3))
    box = Box(4, 8, 16, 32, flip=True)
    view = render_view(image, box, (0, 0, 0), (1, 1, 1), 16)  # 16 px input, 4 x 4 grid of 4 px patches
    pooled = view[0].reshape(4, 4, 4, 4).mean(axis=(1, 3))  # (rows, cols) mean intensity
    x = image_coords(box, (32, 64), (4, 4))[..., 0] * 64  # pixel x of the patch centres
    expected = np.interp(x - 0.5, np.arange(64), np.linspace(0, 1, 64))
    np.testing.assert_allclose(pooled, expected, atol=0.02)
    assert pooled[0, 0] > pooled[0, -1]  # flipped: brightest on the left


# --------------------------------------------------------------------------- stage 1 on synthetic features


def _smooth_image(rng, h=64, w=64):
    yy, xx = np.mgrid[0:h, 0:w] / h
    img = np.zeros((h, w, 3))
    for k in range(3):
        for _ in range(3):
            fx, fy = rng.uniform(0.5, 2, 2)
            img[..., k] += np.sin(2 * np.pi * (fx * xx + fy * yy) + rng.uniform(0, 2 * np.pi))
    return ((img - img.min()) / (img.max() - img.min()) * 255).astype(np.uint8)


def test_stage1_recovers_field_and_artifact():
    """Features = content(patch colours) + G(input position) + noise: stage 1 recovers both terms.

    The decomposition is defined up to a constant vector (F + c, G - c); the
    true G has zero mean over the grid, so G is compared centred and F with
    the estimated G's mean added back.
    """
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    image = _smooth_image(rng)
    size, patch, dim = 32, 4, 24
    g = size // patch
    a, b = torch.randn(3, dim, generator=gen) * 2, torch.randn(dim, generator=gen) * 0.5
    artifact = torch.randn(g * g, dim, generator=gen)
    artifact = 0.8 * (artifact - artifact.mean(0))

    def content(x):
        return torch.tanh((F.avg_pool2d(x, patch).flatten(2).transpose(1, 2) - 0.5) @ a + b)

    def encode(x):
        return content(x) + artifact + 0.02 * torch.randn(x.shape[0], g * g, dim, generator=gen)

    settings = Stage1Settings(views=48, steps=300, tokens_per_step=512, levels=4, features_per_level=4,
                              base_resolution=4, max_resolution=32)
    torch.set_num_threads(1)
    result = denoise_image(image, encode, mean=(0, 0, 0), std=(1, 1, 1), input_size=size, grid=(g, g),
                           settings=settings, seed=0)
    full = torch.from_numpy(render_view(image, Box(0, 0, 64, 64), (0, 0, 0), (1, 1, 1), size))[None]
    truth = content(full)[0].numpy()
    est_f, est_g = result.denoised.reshape(-1, dim), result.artifact.reshape(-1, dim)
    assert _cos(result.raw.reshape(-1, dim), truth) < 0.7  # the artifact really corrupts the raw map
    assert _cos(est_f + est_g.mean(0), truth) >= 0.9
    assert _cos(est_g - est_g.mean(0), artifact.numpy()) >= 0.9
    assert result.seconds_fit > 0 and np.isfinite(result.loss)


def test_stage1_settings_reject_unknown_key():
    with pytest.raises(ConfigError, match="dvt.stage1: unknown key"):
        Stage1Settings.from_config({"view": 3})


# --------------------------------------------------------------------------- stage 2


def _synthetic_pairs(n, rng, grid=(6, 6), dim=32, artifact=None):
    """Smooth per-image fields F plus one fixed artifact pattern: raw = F + G + noise."""
    gh, gw = grid
    yy, xx = np.mgrid[0:gh, 0:gw] / max(gh, gw)
    basis = np.stack([np.ones_like(xx), xx, yy, xx * yy, np.sin(3 * xx), np.cos(3 * yy)], -1)  # (gh, gw, 6)
    clean = np.einsum("hwk,nkc->nhwc", basis, rng.normal(size=(n, basis.shape[-1], dim)))
    raw = clean + artifact[None] + 0.05 * rng.normal(size=clean.shape)
    return raw.astype(np.float32), clean.astype(np.float32)


def test_stage2_reduces_error_on_held_out_images():
    rng = np.random.default_rng(0)
    artifact = 1.5 * rng.normal(size=(6, 6, 32))
    raw, clean = _synthetic_pairs(512, rng, artifact=artifact)
    test_raw, test_clean = _synthetic_pairs(16, rng, artifact=artifact)
    torch.set_num_threads(1)
    model, losses = train_denoiser(raw, clean, Stage2Settings(steps=300, batch_size=32, lr=8e-2), seed=0)
    assert losses[-1] < losses[0]
    before = np.mean((test_raw - test_clean) ** 2)
    after = np.mean((denoise(model, test_raw) - test_clean) ** 2)
    assert after < 0.25 * before  # measured 0.065


def test_checkpoint_roundtrip_with_sha256(tmp_path):
    model = Denoiser(64, (3, 4))
    record = save_checkpoint(model, tmp_path / "dino.pt", {"model": "dino", "weights": "random(seed=2)"})
    sidecar = json.loads((tmp_path / "dino.json").read_text())
    assert sidecar["sha256"] == sha256_of(tmp_path / "dino.pt") == record["sha256"]
    assert sidecar["model"] == "dino" and sidecar["grid"] == [3, 4]
    loaded = load_checkpoint(tmp_path / "dino.pt", sha256=record["sha256"])
    x = torch.randn(2, 3, 4, 64)
    torch.testing.assert_close(loaded(x), model.eval()(x))
    with pytest.raises(CorruptFileError, match="sha256"):
        load_checkpoint(tmp_path / "dino.pt", sha256="0" * 64)


@pytest.mark.parametrize("wrap", ["denoiser", "ddp", "bare"])
def test_loads_authors_layout(tmp_path, wrap):
    """A state dict in the authors' layout (timm Block under ``denoiser.``, pos_embed on a 37 x 37 grid)."""
    torch.manual_seed(0)
    dim = 128
    block = Block(dim=dim, num_heads=dim // 64, mlp_ratio=4, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                  mlp_layer=Mlp).eval()
    pos_embed = torch.randn(1, 37 * 37, dim)
    state = {f"denoiser.{k}": v for k, v in block.state_dict().items()} | {"pos_embed": pos_embed}
    if wrap == "ddp":
        state = {f"module.{k}": v for k, v in state.items()}
    blob = state if wrap == "bare" else {"denoiser": state, "step": 39999}
    torch.save(blob, tmp_path / "authors.pth")
    model = load_checkpoint(tmp_path / "authors.pth")
    assert model.grid == (37, 37) and model.dim == dim
    x = torch.randn(2, 16, 16, dim)  # a 224 px patch-14 input: the embedding is resampled to 16 x 16
    pe = resample_abs_pos_embed(pos_embed, (16, 16), num_prefix_tokens=0)
    expected = block(x.reshape(2, 256, dim) + pe).reshape(2, 16, 16, dim)
    torch.testing.assert_close(model(x), expected)


def test_authors_layout_with_wrong_keys_is_refused(tmp_path):
    torch.save({"denoiser": {"pos_embed": torch.zeros(1, 4, 64), "denoiser.foo": torch.zeros(1)}}, tmp_path / "x.pth")
    with pytest.raises(CorruptFileError, match="keys do not match"):
        load_checkpoint(tmp_path / "x.pth")
