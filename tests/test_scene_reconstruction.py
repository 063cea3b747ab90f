"""Table 4: reconstruction through an identity-like MAE, and MSE / PSNR / SSIM against scikit-image and torchmetrics."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch import nn
from torchmetrics.functional.image import peak_signal_noise_ratio as tm_psnr

import vitlocal.models.archs  # noqa: F401  (registers the MAE-with-decoder arch)
from vitlocal.studies.base import concat_results
from vitlocal.studies.scene import figures
from vitlocal.studies.scene.reconstruction import SSIM_PAD, image_metrics, patch_region, reconstruct

P, SIZE = 4, 32  # 8x8 patches of 4 px: each encoder dim is one pixel channel of the patch
D = P * P * 3
MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def identity_mae():
    """An MAE whose encoder writes each patch's normalised pixels into its token and whose decoder reads them back.

    Masked patches get the (zero) mask token: their prediction is 0 in normalised
    space, i.e. the mean colour; a zeroed dimension likewise predicts the mean
    for that pixel channel.
    """
    model = timm.create_model("mae_vit_base_patch16_dec512d8b", img_size=SIZE, patch_size=P, embed_dim=D, depth=0,
                              num_heads=3, decoder_embed_dim=D, decoder_depth=0, decoder_num_heads=3)
    with torch.no_grad():
        weight = torch.zeros(D, 3, P, P)
        for i in range(P):
            for j in range(P):
                for c in range(3):
                    weight[(i * P + j) * 3 + c, c, i, j] = 1.0  # patchify order: row, col, channel
        model.patch_embed.proj.weight.copy_(weight)
        model.patch_embed.proj.bias.zero_()
        model.pos_embed.zero_()
        model.cls_token.zero_()
        model.mask_token.zero_()
        model.decoder_pos_embed.zero_()
        for linear in (model.decoder_embed, model.decoder_pred):
            linear.weight.copy_(torch.eye(D))
            linear.bias.zero_()
    model.norm = nn.Identity()
    model.decoder_norm = nn.Identity()
    return model.eval()


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    img = rng.uniform(0.05, 0.95, size=(1, 3, SIZE, SIZE))
    return torch.tensor(img, dtype=torch.float32)


def normalise(img):
    return (img - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def expected_mse(img, pixel_dims, patches):
    """MSE when the pixel channels ``pixel_dims`` of ``patches`` (bool (8, 8) or all) predict the mean colour."""
    x = img[0].numpy()  # (3, H, W)
    err = np.zeros_like(x)
    for d in pixel_dims:
        i, j, c = d // 3 // P, d // 3 % P, d % 3
        err[c, i::P, j::P] = (x[c, i::P, j::P] - MEAN[c]) ** 2
    region = np.kron(patches, np.ones((P, P))).astype(bool)
    return err[:, region].sum() / (3 * region.sum())


def test_intact_features_reconstruct_exactly_and_zeroing_costs_what_it_should(image):
    model = identity_mae()
    dims = [0, 5, 17, 40]
    rec = reconstruct(model, normalise(image), 0.0, seed=0, zero_dims=dims, mean=MEAN, std=STD)
    torch.testing.assert_close(rec.image, image, atol=1e-6, rtol=0)
    intact = image_metrics(rec.intact, rec.image, rec.region)
    zeroed = image_metrics(rec.zeroed, rec.image, rec.region)
    assert intact["mse"][0] < 1e-12 and intact["ssim"][0] == pytest.approx(1.0, abs=1e-9)
    want = expected_mse(image, dims, np.ones((8, 8)))
    assert want > 1e-3
    assert zeroed["mse"][0] == pytest.approx(want, rel=1e-5)
    assert zeroed["psnr"][0] == pytest.approx(10 * np.log10(1 / want), rel=1e-5)


def test_masked_patches_are_the_ones_scored(image):
    model = identity_mae()
    rec = reconstruct(model, normalise(image), 0.75, seed=3, zero_dims=[1, 2], mean=MEAN, std=STD)
    masked = rec.mask[0].reshape(8, 8).numpy().astype(bool)
    assert masked.sum() == 64 - 16
    np.testing.assert_array_equal(rec.region[0].numpy(), np.kron(masked, np.ones((P, P))).astype(bool))
    # every masked patch predicts the mean colour, intact or not: the zeroed dims add nothing there
    intact = image_metrics(rec.intact, rec.image, rec.region)
    assert intact["mse"][0] == pytest.approx(expected_mse(image, range(D), masked), rel=1e-5)
    assert image_metrics(rec.zeroed, rec.image, rec.region)["mse"][0] == pytest.approx(intact["mse"][0], rel=1e-6)
    again = reconstruct(model, normalise(image), 0.75, seed=3, zero_dims=[1, 2], mean=MEAN, std=STD)
    torch.testing.assert_close(again.mask, rec.mask)
    other = reconstruct(model, normalise(image), 0.75, seed=4, zero_dims=[1, 2], mean=MEAN, std=STD)
    assert not torch.equal(other.mask, rec.mask)


def hand_made():
    """A smooth gradient with a checkerboard and a disc, and a blurred, shifted, noisy copy."""
    yy, xx = np.mgrid[0:40, 0:48] / 48.0
    board = ((np.arange(40)[:, None] // 6 + np.arange(48)[None] // 6) % 2).astype(float)
    disc = ((yy - 0.4) ** 2 + (xx - 0.5) ** 2 < 0.04).astype(float)
    target = np.stack([0.2 + 0.6 * xx, 0.3 * board + 0.4 * yy, 0.1 + 0.7 * disc], axis=-1).clip(0, 1)
    rng = np.random.default_rng(2)
    pred = (0.9 * np.roll(target, 1, axis=1) + 0.05 + rng.normal(0, 0.03, target.shape)).clip(0, 1)
    return pred, target


def as_torch(a):
    return torch.tensor(a).permute(2, 0, 1)[None]


def test_psnr_and_ssim_agree_with_scikit_image_and_torchmetrics():
    pred, target = hand_made()
    region = torch.ones(1, 40, 48, dtype=torch.bool)
    ours = image_metrics(as_torch(pred), as_torch(target), region)
    assert ours["psnr"][0] == pytest.approx(peak_signal_noise_ratio(target, pred, data_range=1.0), rel=1e-10)
    # torchmetrics accumulates in float32
    assert ours["psnr"][0] == pytest.approx(float(tm_psnr(as_torch(pred), as_torch(target), data_range=1.0)),
                                            rel=1e-6)
    assert ours["mse"][0] == pytest.approx(np.mean((pred - target) ** 2), rel=1e-12)
    ssim = structural_similarity(target, pred, channel_axis=2, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False)
    assert 0.3 < ssim < 0.95
    assert ours["ssim"][0] == pytest.approx(ssim, abs=1e-10)


def test_ssim_on_a_region_is_scikit_images_map_there():
    pred, target = hand_made()
    _, full = structural_similarity(target, pred, channel_axis=2, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, full=True)
    region = np.zeros((40, 48), bool)
    region[0:20, 24:48] = True  # a corner block: part of it lies within the border
    ours = image_metrics(as_torch(pred), as_torch(target), torch.tensor(region)[None])
    inner = region.copy()
    inner[:SSIM_PAD], inner[-SSIM_PAD:], inner[:, :SSIM_PAD], inner[:, -SSIM_PAD:] = False, False, False, False
    assert ours["ssim"][0] == pytest.approx(full.mean(axis=2)[inner].mean(), abs=1e-10)
    assert ours["mse"][0] == pytest.approx(((pred - target) ** 2)[region].mean(), rel=1e-12)


def test_known_values():
    target = np.full((24, 24, 3), 0.5)
    region = torch.ones(1, 24, 24, dtype=torch.bool)
    same = image_metrics(as_torch(target), as_torch(target), region)
    assert same["mse"][0] == 0 and same["ssim"][0] == pytest.approx(1.0)
    shifted = image_metrics(as_torch(target + 0.1), as_torch(target), region)
    assert shifted["mse"][0] == pytest.approx(0.01) and shifted["psnr"][0] == pytest.approx(20.0)


def test_patch_region_all_patches_when_nothing_is_masked():
    region = patch_region(torch.zeros(2, 4), (2, 2), 3)
    assert region.shape == (2, 6, 6) and region.all()
    region = patch_region(torch.tensor([[0, 1, 0, 0]]), (2, 2), 3)
    assert region[0, :3, 3:].all() and region.sum() == 9


def test_table4_from_rows(tmp_path):
    rows = []
    for ratio in ("0", "0.75"):
        for cond, shift in (("intact", 0.0), ("zeroed12", 0.1)):
            for metric, value in (("mse", 0.01 + shift), ("psnr", 20 - shift), ("ssim", 0.9 - shift), ("n_images", 64)):
                rows.append({"experiment": "reconstruction", "dataset": "cityscapes", "model": "mae_decoder",
                             "probe": "none", "layer": 12, "level": f"mask={ratio}:{cond}", "class": "",
                             "metric": metric, "value": value, "preset": "demo", "weights": "random(seed=7)",
                             "knn_metric": "", "patch_labels": "none", "data": "synthetic", "settings": "{}"})
    csv = tmp_path / "rows.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    data = figures.table4(concat_results([csv]), tmp_path / "t.csv", tmp_path / "t.tex")
    assert data["features"].tolist() == ["intact", "top-12 zeroed"] * 2
    assert data["mask_ratio"].tolist() == [0.0, 0.0, 0.75, 0.75] and data["n_images"].tolist() == [64] * 4
    assert data["mse"].tolist() == pytest.approx([0.01, 0.11, 0.01, 0.11])
    tex = (tmp_path / "t.tex").read_text()
    assert "DEMO" in tex and "top-12 zeroed" in tex and "0.1100" in tex


# --------------------------------------------------------------------------- Table 4 end to end

M, D_CLS = 4, 7  # dims zeroed; a [CLS] dimension made far from every patch


def tiles_of(root, manifest):
    """Every 32 px tile (4 x 8 per 128 x 256 image, row-major) of the manifest, as RGB in [0, 1]: (n, 32, 32, 3)."""
    from vitlocal.io import read_rgb

    out = []
    for path in manifest["image_path"]:
        image = read_rgb(root / path) / 255.0
        out += [image[r * 32:(r + 1) * 32, c * 32:(c + 1) * 32] for r in range(4) for c in range(8)]
    return np.stack(out)


def patch_tokens(tiles):
    """The identity encoder's patch tokens by hand: normalised pixels, (row, col, channel) within each 4 x 4 patch."""
    x = (tiles - np.asarray(MEAN)) / np.asarray(STD)
    n = len(x)
    return x.reshape(n, 8, P, 8, P, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n * 64, D)


def top_dims(tokens, m=M):
    var = tokens.var(axis=0)
    order = np.argsort(-var, kind="stable")
    assert var[order[m - 1]] > var[order[m]] * 1.001  # no near-tie at the cut
    return sorted(order[:m].tolist())


@pytest.fixture(scope="module")
def cityscapes_root(tmp_path_factory):
    from vitlocal.synthetic import cityscapes as synth_cityscapes

    root = tmp_path_factory.mktemp("cityscapes")
    return synth_cityscapes.write(root, train_cities=["aachen"], val_cities=["lindau"],
                                  images_per_city={"train": 2, "val": 1}, size=(128, 256), seed=0)


def test_reconstruction_rows_follow_the_protocol(cityscapes_root):
    """Table 4 on an identity MAE: dims ranked over the training tiles' patches only, errors known by hand."""
    from vitlocal.datasets import cityscapes
    from vitlocal.models.registry import ModelSpec
    from vitlocal.studies.scene.reconstruction import reconstruction_rows

    root = cityscapes_root
    train, val = cityscapes.list_images(root, "train"), cityscapes.list_images(root, "val")
    spec = ModelSpec(key="mae_decoder", arch="mae_vit_base_patch16_dec512d8b", weights="random", patch_size=P,
                     input_size=SIZE, embed_dim=D, depth=0, mean=MEAN, std=STD)
    model = identity_mae()
    with torch.no_grad():
        model.cls_token[0, 0, D_CLS] = 50.0
    train_tiles, val_tiles = tiles_of(root, train), tiles_of(root, val)
    want_dims = top_dims(patch_tokens(train_tiles))
    # the test can tell the protocol from its plausible slips:
    assert D_CLS not in want_dims
    with_cls = np.concatenate([patch_tokens(train_tiles), np.tile(np.eye(D)[D_CLS] * 50.0, (len(train_tiles), 1))])
    assert D_CLS in top_dims(with_cls)  # ... [CLS] tokens among the ranked ones
    assert top_dims(patch_tokens(val_tiles)) != want_dims  # ... ranked on the val tiles

    rows = reconstruction_rows("mae_decoder", spec, model, root=root, train_manifest=train, manifest=val,
                               mask_ratios=[0.0, 0.75], removed_dims=M, seed=0, preset="demo",
                               data_source="synthetic", device="cpu")
    settings = json.loads(rows["settings"].iloc[0])
    assert sorted(settings["zeroed_dims"]) == want_dims
    assert settings["n_images"] == 32 and "4096 Cityscapes training patches" in settings["ranked_on"]
    value = rows.set_index(["level", "metric"])["value"]
    assert value[("mask=0:intact", "mse")] < 1e-12
    per_tile = [expected_mse(torch.tensor(t).permute(2, 0, 1)[None], want_dims, np.ones((8, 8))) for t in val_tiles]
    assert value[(f"mask=0:zeroed{M}", "mse")] == pytest.approx(np.mean(per_tile), rel=1e-5)
    assert value[(f"mask=0:zeroed{M}", "psnr")] == pytest.approx(np.mean(10 * np.log10(1 / np.array(per_tile))),
                                                                 rel=1e-5)
    # 75 % masked: only masked patches are scored and they see the mask token, never the zeroed dims
    assert value[("mask=0.75:intact", "mse")] == pytest.approx(value[(f"mask=0.75:zeroed{M}", "mse")], rel=1e-9)
    assert value[("mask=0.75:intact", "mse")] > 1e-3
    assert (rows.loc[rows["metric"] == "n_images", "value"] == 32).all()
