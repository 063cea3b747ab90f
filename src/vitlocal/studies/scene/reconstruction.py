"""Table 4 / fig_recon: MAE reconstruction with the top-m variance dimensions of the encoder output zeroed.

The MAE encoder + decoder (``archs.MaeWithDecoder``, official
``mae_visualize_vit_base.pth``) reconstructs each Cityscapes val tile (the
study's 224 px model inputs) at each mask ratio (seeded per tile), once with
the encoder output intact and once with the top-m variance dimensions set to
zero before the decoder. The dimensions are ranked, as in Fig 4, by the
population variance of the encoder output (final LayerNorm, no mask) over all
patches of the study's Cityscapes training tiles (the main train set), computed
here with the model itself. The encoder runs once per tile and ratio; both
decodings see the same tokens and the same mask.

Errors are computed per tile in RGB pixel space ([0, 1]: the normalised model
input mapped back with the model's mean / std and clipped), on the masked
patches for a ratio > 0 and on all patches for ratio 0:

- MSE: mean squared error over the evaluated pixels and channels;
- PSNR: ``10 log10(1 / MSE)`` (data range 1);
- SSIM: the SSIM map of ``torchmetrics`` (Gaussian window 11, sigma 1.5,
  K1 0.01, K2 0.03, data range 1, the settings of Wang et al. 2004) averaged
  over the evaluated pixels at least ``SSIM_PAD`` px from the tile border,
  where it equals scikit-image's map (for ratio 0: scikit-image's
  ``structural_similarity`` of the tile with ``gaussian_weights=True,
  use_sample_covariance=False``).

The table reports the mean over tiles and the number of tiles.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from ...errors import ConfigError
from ...evaluation.segmentation import RESULT_COLUMNS, resolve_device
from ...features.degrade import derive_seed
from ...layout import fmt
from ...probes.variance import VarianceAccumulator, top_variance_dims
from ...tiling import preprocess_tiles

log = logging.getLogger(__name__)

PathLike = str | os.PathLike
SSIM_KERNEL, SSIM_SIGMA = 11, 1.5
#: Half the SSIM window: pixels closer to the border have a truncated window.
SSIM_PAD = (SSIM_KERNEL - 1) // 2
METRICS = ("mse", "psnr", "ssim")


# --------------------------------------------------------------------------- metrics


def ssim_map(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM (N, H, W) of images in [0, 1] (N, 3, H, W), averaged over channels (torchmetrics)."""
    _, full = structural_similarity_index_measure(
        pred.double(), target.double(), gaussian_kernel=True, sigma=SSIM_SIGMA, kernel_size=SSIM_KERNEL,
        data_range=1.0, k1=0.01, k2=0.03, return_full_image=True,
    )
    return full.mean(dim=1)


def image_metrics(pred: torch.Tensor, target: torch.Tensor, region: torch.Tensor) -> dict[str, np.ndarray]:
    """Per image MSE, PSNR and SSIM of ``pred`` vs ``target`` (N, 3, H, W) in [0, 1] over ``region`` (N, H, W).

    SSIM is averaged over the region's pixels at least ``SSIM_PAD`` px from the border.
    """
    pred, target, region = pred.double(), target.double(), region.bool()
    h, w = region.shape[-2:]
    if h <= 2 * SSIM_PAD or w <= 2 * SSIM_PAD:
        raise ConfigError(f"images of {h}x{w} px are too small for an {SSIM_KERNEL}-px SSIM window")
    counts = region.sum(dim=(1, 2))
    if (counts == 0).any():
        raise ConfigError("an image has no evaluated pixel (empty region)")
    err = ((pred - target) ** 2).mean(dim=1)
    mse = (err * region).sum(dim=(1, 2)) / counts
    interior = torch.zeros_like(region)
    interior[:, SSIM_PAD:h - SSIM_PAD, SSIM_PAD:w - SSIM_PAD] = True
    ssim_region = region & interior
    ssim = (ssim_map(pred, target) * ssim_region).sum(dim=(1, 2)) / ssim_region.sum(dim=(1, 2))
    return {"mse": mse.cpu().numpy(), "psnr": (10.0 * torch.log10(1.0 / mse)).cpu().numpy(),
            "ssim": ssim.cpu().numpy()}


def patch_region(mask: torch.Tensor, grid: tuple[int, int], patch: int) -> torch.Tensor:
    """(N, L) patch mask (1 = removed) -> (N, H, W) pixels of the evaluated patches (all for no removed patch)."""
    mask = mask.bool()
    evaluated = torch.where(mask.any(dim=1, keepdim=True), mask, torch.ones_like(mask))
    cells = evaluated.reshape(-1, *grid)
    return cells.repeat_interleave(patch, dim=1).repeat_interleave(patch, dim=2)


# --------------------------------------------------------------------------- reconstruction


@dataclass(frozen=True)
class Reconstruction:
    """One batch at one mask ratio: input, intact and zeroed reconstructions in [0, 1], the patch mask."""

    image: torch.Tensor
    intact: torch.Tensor
    zeroed: torch.Tensor
    mask: torch.Tensor
    region: torch.Tensor


def to_pixels(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalised (N, 3, H, W) -> RGB in [0, 1]."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * s + m).clamp(0.0, 1.0)


@torch.no_grad()
def reconstruct(model, x: torch.Tensor, mask_ratio: float, seed: int, zero_dims: Sequence[int],
                mean: Sequence[float], std: Sequence[float]) -> Reconstruction:
    """Encode ``x`` (normalised) once with ``mask_ratio`` (seeded), decode intact and with ``zero_dims`` zeroed."""
    latent, mask, ids_restore = model.forward_encoder(x, mask_ratio, seed)
    intact = model.predicted_pixels(x, model.forward_decoder(latent, ids_restore))
    zeroed = model.predicted_pixels(x, model.forward_decoder(latent, ids_restore, zero_dims=list(zero_dims)))
    p = model.patch_embed.patch_size[0]
    region = patch_region(mask, (x.shape[-2] // p, x.shape[-1] // p), p)
    return Reconstruction(to_pixels(x, mean, std), to_pixels(intact, mean, std), to_pixels(zeroed, mean, std),
                          mask, region)


def require_decoder(model, key: str):
    """The reconstruction needs MAE's decoder: a clear error for any other model."""
    from ...models.archs import MaeWithDecoder

    if not isinstance(model, MaeWithDecoder):
        raise ConfigError(f"scene.reconstruction_model = {key!r} is a {type(model).__name__}, not an MAE with its "
                          "decoder (arch mae_vit_base_patch16_dec512d8b)")
    return model


def cityscapes_images(spec, root: PathLike, manifest: pd.DataFrame, max_images: int | None):
    """``(sample id, normalised tiles (n, 3, S, S))`` of the manifest's images, tiled as every Cityscapes input."""
    from ...features.sources import make_source

    if max_images is not None:
        manifest = manifest.iloc[:max_images]
    source = make_source("cityscapes", root, manifest, spec, "clean")
    for i in range(len(source)):
        item = source[i]
        yield item.sample_id, preprocess_tiles(item.tiles, spec.mean, spec.std, spec.input_size)


def tiles(spec, root: PathLike, manifest: pd.DataFrame, max_images: int | None):
    """``(tile id, normalised (3, S, S) input)``, tile by tile."""
    for sample_id, inputs in cityscapes_images(spec, root, manifest, max_images):
        for t, x in enumerate(inputs):
            yield f"{sample_id}/{t}", x


@torch.no_grad()
def ranked_dims(model, spec, *, root: PathLike, manifest: pd.DataFrame, m: int,
                max_images: int | None = None) -> tuple[np.ndarray, int]:
    """Top-``m`` variance dims of the encoder output over all patches of the training tiles, and the patch count."""
    if not 0 < m < model.embed_dim:
        raise ConfigError(f"scene.removed_dims = {m}: {spec.key!r} has {model.embed_dim} dims; expected 0 < m < that")
    dev = next(model.parameters()).device
    acc = VarianceAccumulator()
    for _, inputs in cityscapes_images(spec, root, manifest, max_images):
        tokens = model.forward_features(torch.from_numpy(inputs).to(dev))[:, model.num_prefix_tokens:]
        acc.update(tokens.reshape(-1, tokens.shape[-1]).double().cpu().numpy())
    if acc.n == 0:
        raise ConfigError("no Cityscapes training tile to rank the dimensions on")
    return top_variance_dims(acc.variance(), m), acc.n


def reconstruction_rows(
    key: str,
    spec,
    model,
    *,
    root: PathLike,
    train_manifest: pd.DataFrame,
    manifest: pd.DataFrame,
    mask_ratios: Sequence[float],
    removed_dims: int,
    seed: int,
    max_images: int | None = None,
    rank_images: int | None = None,
    preset: str,
    data_source: str,
    device: str | None = "auto",
) -> pd.DataFrame:
    """Table 4 rows: mean MSE / PSNR / SSIM over tiles and ``n_images``, per mask ratio, intact and zeroed.

    Level ``mask=<r>:intact`` or ``mask=<r>:zeroed<m>``.
    """
    model = require_decoder(model, key).to(resolve_device(device)).eval()
    dev = next(model.parameters()).device
    dims, n_patches = ranked_dims(model, spec, root=root, manifest=train_manifest, m=int(removed_dims),
                                  max_images=rank_images)
    values: dict[tuple[float, str, str], list[float]] = {}
    n = 0
    for tile_id, x in tiles(spec, root, manifest, max_images):
        x = torch.from_numpy(x)[None].to(dev)
        for ratio in mask_ratios:
            rec = reconstruct(model, x, float(ratio), derive_seed(seed, tile_id), dims, spec.mean, spec.std)
            for condition, pred in (("intact", rec.intact), (f"zeroed{len(dims)}", rec.zeroed)):
                for metric, value in image_metrics(pred, rec.image, rec.region).items():
                    values.setdefault((float(ratio), condition, metric), []).append(float(value[0]))
        n += 1
    if n == 0:
        raise ConfigError("no Cityscapes val tile to reconstruct")
    log.info("%s: reconstructed %d tiles at mask ratios %s", key, n, list(mask_ratios))
    settings = {
        "removed_dims": len(dims), "ranked_on": f"encoder output, {n_patches} Cityscapes training patches",
        "n_images": n, "image": "one Cityscapes val tile at the model input", "seed": seed,
        "mask_seed": "derive_seed(seed, '<sample_id>/<tile>')", "pixel_space": "RGB in [0, 1], clipped",
        "ssim": {"kernel": SSIM_KERNEL, "sigma": SSIM_SIGMA, "k1": 0.01, "k2": 0.03, "border_px": SSIM_PAD},
        "evaluated": "masked patches (ratio > 0), all patches (ratio 0)", "zeroed_dims": [int(d) for d in dims],
    }
    rows = []
    for (ratio, condition, metric), vals in values.items():
        level = f"mask={fmt(ratio)}:{condition}"
        rows.append({"level": level, "metric": metric, "value": float(np.mean(vals))})
        if metric == "mse":
            rows.append({"level": level, "metric": "n_images", "value": float(len(vals))})
    table = pd.DataFrame(rows).assign(
        experiment="reconstruction", dataset="cityscapes", model=key, probe="none", layer=spec.depth,
        **{"class": ""}, preset=preset, weights=spec.weights_label, knn_metric="", patch_labels="none",
        data=data_source, settings=json.dumps(settings, sort_keys=True, separators=(",", ":")),
    )
    table["layer"] = table["layer"].astype("Int64")
    return table[list(RESULT_COLUMNS)]


def reconstruction_examples(
    key: str, spec, model, *, dims: Sequence[int], root: PathLike, manifest: pd.DataFrame,
    mask_ratios: Sequence[float], seed: int, n_examples: int, device: str | None = "auto",
) -> list[dict[str, Any]]:
    """A few reconstructions for fig_recon (Table 4's dims and masks): tiles of the first val image, evenly spaced.

    One record per (tile, ratio) with the images as (H, W, 3) arrays and the per-tile metrics.
    """
    model = require_decoder(model, key).to(resolve_device(device)).eval()
    dev = next(model.parameters()).device
    first = list(tiles(spec, root, manifest, 1))
    picks = np.unique(np.linspace(0, len(first) - 1, max(1, n_examples)).round().astype(int))
    records = []
    for index in picks:
        tile_id, x = first[index]
        x = torch.from_numpy(x)[None].to(dev)
        for ratio in mask_ratios:
            rec = reconstruct(model, x, float(ratio), derive_seed(seed, tile_id), dims, spec.mean, spec.std)
            image = lambda t: t[0].permute(1, 2, 0).cpu().numpy()  # noqa: E731
            visible = rec.image * (~rec.region[:, None]) if float(ratio) > 0 else rec.image
            record = {"tile": tile_id, "mask_ratio": float(ratio), "input": image(rec.image),
                      "visible": image(visible), "intact": image(rec.intact), "zeroed": image(rec.zeroed)}
            for condition in ("intact", "zeroed"):
                for metric, value in image_metrics(getattr(rec, condition), rec.image, rec.region).items():
                    record[f"{condition}_{metric}"] = float(value[0])
            records.append(record)
    return records
