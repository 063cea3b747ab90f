"""timm architectures for the study's models that timm does not ship.

Importing this module registers three names with ``timm.models.register_model``
so that ``timm.create_model(name, pretrained=False, **kwargs)`` builds them; the
official weights are then loaded through ``vitlocal.models.convert``:

- ``simmim_vit_base_patch16_224``: timm's ``Beit`` configured like SimMIM's
  ViT-B/16 (microsoft/SimMIM ``configs/vit_base__800ep``): no absolute position
  embedding, one relative position bias shared by all blocks, layer scale
  (init 0.1), q/v biases, final LayerNorm (no mean pooling).
- ``scalemae_vit_large_patch16``: a timm ViT-L/16 whose position embedding is
  not learned but computed, as in Scale-MAE, from the 2-D sin-cos embedding of
  the patch grid scaled by the ground-sample-distance ratio ``gsd_ratio``.
- ``mae_vit_base_patch16_dec512d8b``: the MAE ViT-B/16 encoder (a plain timm
  ViT, so feature extraction works as for any timm ViT) plus MAE's pixel
  decoder, with seeded random masking, reconstruction and a hook that zeroes
  chosen encoder feature dimensions before decoding (paper Table 4).

Pretrained downloads through timm are refused: the weights come from the
official release files, fetched by ``vitlocal.models.weights``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import LayerNorm
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.beit import Beit
from timm.models.vision_transformer import Block, VisionTransformer

from vitlocal.errors import ConfigError

__all__ = [
    "MaeWithDecoder",
    "ScaleMaeVisionTransformer",
    "gsd_sincos_pos_embed",
    "sincos_1d",
]


def _cfg(**kwargs: Any) -> dict[str, Any]:
    """Pretrained cfg used only for input size and normalisation metadata."""
    return {
        "url": "",
        "num_classes": 0,
        "input_size": (3, 224, 224),
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "simmim_vit_base_patch16_224.simmim_800ep": _cfg(
        origin_url="https://github.com/microsoft/SimMIM", paper_ids="arXiv:2111.09886",
        notes=("simmim_pretrain__vit_base__img224__800ep.pth",),
    ),
    "scalemae_vit_large_patch16.fmow_800ep": _cfg(
        origin_url="https://github.com/bair-climate-initiative/scale-mae", paper_ids="arXiv:2212.14532",
        notes=("scalemae-vitlarge-800.pth (release base-800)",),
    ),
    "mae_vit_base_patch16_dec512d8b.visualize": _cfg(
        origin_url="https://github.com/facebookresearch/mae", paper_ids="arXiv:2111.06377",
        notes=("mae_visualize_vit_base.pth, trained without norm_pix_loss",),
    ),
})


# --------------------------------------------------------------------------
# 2-D sin-cos position embeddings (MAE / Scale-MAE ``util/pos_embed.py``)
# --------------------------------------------------------------------------
def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """``[sin(pos*w_k), cos(pos*w_k)]`` with ``w_k = 10000**(-k/(dim/2))``: (M, dim)."""
    if dim % 2:
        raise ConfigError(f"sin-cos embedding needs an even dimension, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float32, device=pos.device)
    omega /= dim / 2.0
    omega = 1.0 / 10000**omega
    out = torch.einsum("m,d->md", pos.reshape(-1).float(), omega)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def gsd_sincos_pos_embed(
    dim: int,
    grid_hw: tuple[int, int],
    gsd_ratio: float = 1.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Sin-cos embedding of a row-major (H, W) patch grid, coordinates × ``gsd_ratio``: (H*W, dim).

    The first half of the channels encodes the column (x) coordinate and the
    second half the row, as in the official code (``meshgrid(grid_w, grid_h)``).
    ``gsd_ratio == 1`` gives MAE's fixed embedding; Scale-MAE multiplies the
    grid by the ratio of the input's GSD to the reference GSD
    (``get_2d_sincos_pos_embed_with_resolution(dim, grid, res)``).
    """
    if dim % 4:
        raise ConfigError(f"2-D sin-cos embedding needs a dimension divisible by 4, got {dim}")
    height, width = grid_hw
    rows = torch.arange(height, dtype=torch.float32, device=device)
    cols = torch.arange(width, dtype=torch.float32, device=device)
    grid_y, grid_x = torch.meshgrid(rows, cols, indexing="ij")
    scale = torch.tensor(gsd_ratio, dtype=torch.float32, device=device)
    return torch.cat([sincos_1d(dim // 2, grid_x * scale), sincos_1d(dim // 2, grid_y * scale)], dim=1)


def _require_cls_only(model: VisionTransformer, name: str) -> None:
    """Both official models prepend exactly one [CLS] token that gets a position embedding."""
    if model.cls_token is None or model.reg_token is not None or model.no_embed_class:
        raise ConfigError(
            f"{name} needs class_token=True, reg_tokens=0, no_embed_class=False (the official layout)"
        )


# --------------------------------------------------------------------------
# Scale-MAE
# --------------------------------------------------------------------------
class ScaleMaeVisionTransformer(VisionTransformer):
    """ViT whose position embedding is Scale-MAE's GSD-aware sin-cos embedding.

    ``gsd_ratio`` (attribute, also a constructor kwarg) is the ``input_res`` the
    official code passes to the encoder: the patch-grid coordinates are
    multiplied by it. The official k-NN evaluation uses
    ``base_resolution * 224 / input_size`` (``scalemae/eval/knn.py``), i.e. 1.0
    for a 224 px input. The [CLS] token gets a zero position embedding.
    Any square or rectangular input whose sides are multiples of the patch
    size is accepted (``dynamic_img_size`` defaults to True).
    """

    def __init__(self, *, gsd_ratio: float = 1.0, **kwargs: Any) -> None:
        super().__init__(pos_embed="none", **kwargs)
        _require_cls_only(self, type(self).__name__)
        self.gsd_ratio = float(gsd_ratio)

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:  # NHWC from a dynamic-size patch embed
            batch, height, width, dim = x.shape
            grid = (height, width)
            x = x.reshape(batch, height * width, dim)
        else:
            batch, _, dim = x.shape
            grid = tuple(self.patch_embed.grid_size)
        pos = gsd_sincos_pos_embed(dim, grid, self.gsd_ratio, device=x.device).to(x.dtype)
        x = torch.cat([self.cls_token.expand(batch, -1, -1), x + pos.unsqueeze(0)], dim=1)
        return self.pos_drop(x)


# --------------------------------------------------------------------------
# MAE with its decoder
# --------------------------------------------------------------------------
class MaeWithDecoder(VisionTransformer):
    """MAE (facebookresearch/mae ``MaskedAutoencoderViT``) as a timm ViT plus decoder.

    The encoder is an ordinary timm ViT (its ``pos_embed`` holds MAE's fixed
    sin-cos table from the checkpoint), so ``forward_features`` and
    ``forward_intermediates`` give the usual unmasked features. The decoder
    modules keep the official names, so ``mae_visualize_vit_base.pth`` loads
    key for key. ``norm_pix_loss`` selects the reconstruction target: the
    visualisation checkpoints were trained on plain (ImageNet-normalised)
    pixels, hence False.
    """

    def __init__(
        self,
        *,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        norm_pix_loss: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _require_cls_only(self, type(self).__name__)
        if self.pos_embed is None:
            raise ConfigError("MaeWithDecoder needs the (sin-cos) encoder pos_embed; do not pass pos_embed='none'")
        grid = tuple(self.patch_embed.grid_size)
        patch_h, patch_w = self.patch_embed.patch_size
        mlp_ratio = float(kwargs.get("mlp_ratio", 4.0))
        self.norm_pix_loss = norm_pix_loss
        self.decoder_embed = nn.Linear(self.embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        table = gsd_sincos_pos_embed(decoder_embed_dim, grid)
        table = torch.cat([torch.zeros(1, decoder_embed_dim), table], dim=0).unsqueeze(0)
        self.decoder_pos_embed = nn.Parameter(table, requires_grad=False)
        self.decoder_blocks = nn.ModuleList([
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, norm_layer=LayerNorm)
            for _ in range(decoder_depth)
        ])
        self.decoder_norm = LayerNorm(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_h * patch_w * self.in_chans)

    # -- pixels <-> patches -------------------------------------------------
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, L, p*p*C), pixel order (row, col, channel) inside a patch."""
        p = self.patch_embed.patch_size[0]
        n, c, h, w = imgs.shape
        if h % p or w % p:
            raise ConfigError(f"image size {h}x{w} is not a multiple of the patch size {p}")
        x = imgs.reshape(n, c, h // p, p, w // p, p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(n, (h // p) * (w // p), p * p * c)

    def unpatchify(self, x: torch.Tensor, grid_hw: tuple[int, int] | None = None) -> torch.Tensor:
        """Inverse of ``patchify``; ``grid_hw`` defaults to the model's patch grid."""
        p = self.patch_embed.patch_size[0]
        gh, gw = grid_hw or tuple(self.patch_embed.grid_size)
        n, length, _ = x.shape
        if gh * gw != length:
            raise ConfigError(f"{length} patches do not fill a {gh}x{gw} grid")
        x = x.reshape(n, gh, gw, p, p, self.in_chans)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(n, self.in_chans, gh * p, gw * p)

    # -- encoder ------------------------------------------------------------
    @staticmethod
    def random_masking(
        x: torch.Tensor, mask_ratio: float, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """MAE's per-sample random masking with noise from ``seed`` (drawn on CPU, device independent).

        Returns the kept tokens (N, L_keep, D), the mask (N, L; 1 = removed)
        and ``ids_restore`` (N, L) that undoes the shuffle.
        """
        if not 0.0 <= mask_ratio < 1.0:
            raise ConfigError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        n, length, dim = x.shape
        len_keep = int(length * (1 - mask_ratio))
        generator = torch.Generator().manual_seed(seed)
        noise = torch.rand(n, length, generator=generator).to(x.device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        x_kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
        mask = torch.ones(n, length, device=x.device)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return x_kept, mask, ids_restore

    def forward_encoder(
        self, imgs: torch.Tensor, mask_ratio: float, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Official ``forward_encoder``: embed, add pos, mask, prepend [CLS], blocks, final norm.

        Returns ``latent`` (N, 1+L_keep, D) with the kept tokens in shuffled
        order, ``mask`` (N, L) and ``ids_restore`` (N, L).
        """
        x = self.patch_embed(imgs)
        if x.ndim == 4:
            x = x.flatten(1, 2)
        x = x + self.pos_embed[:, 1:, :]
        x, mask, ids_restore = self.random_masking(x, mask_ratio, seed)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    # -- decoder ------------------------------------------------------------
    def forward_decoder(
        self,
        latent: torch.Tensor,
        ids_restore: torch.Tensor,
        zero_dims: Sequence[int] | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Official ``forward_decoder``: per-patch pixel predictions (N, L, p*p*C), [CLS] removed.

        ``zero_dims``: encoder feature dimensions set to 0 in every token
        ([CLS] included) before ``decoder_embed`` -- the paper's "remove the
        top-variance dimensions and reconstruct" probe.
        """
        if ids_restore.shape[1] + 1 != self.decoder_pos_embed.shape[1]:
            raise ConfigError(
                f"the decoder position table covers {self.decoder_pos_embed.shape[1] - 1} patches, "
                f"the input has {ids_restore.shape[1]}"
            )
        if zero_dims is not None:
            keep = torch.ones(latent.shape[-1], dtype=latent.dtype, device=latent.device)
            keep[torch.as_tensor(zero_dims, dtype=torch.long, device=latent.device)] = 0
            latent = latent * keep
        x = self.decoder_embed(latent)
        n, kept, dim = x.shape
        mask_tokens = self.mask_token.expand(n, ids_restore.shape[1] + 1 - kept, -1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, dim))
        x = torch.cat([x[:, :1, :], x_], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_pred(self.decoder_norm(x))
        return x[:, 1:, :]

    def reconstruct(
        self,
        imgs: torch.Tensor,
        mask_ratio: float,
        seed: int,
        zero_dims: Sequence[int] | torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode with ``mask_ratio`` (seeded) and decode: (pred (N, L, p*p*C), mask (N, L))."""
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, seed)
        return self.forward_decoder(latent, ids_restore, zero_dims=zero_dims), mask

    # -- targets and errors -------------------------------------------------
    def patch_targets(self, imgs: torch.Tensor) -> torch.Tensor:
        """The training target: patchified pixels, per-patch standardised if ``norm_pix_loss``."""
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        return target

    def patch_mse(self, imgs: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """Per-patch mean squared error against ``patch_targets`` (N, L)."""
        return ((pred - self.patch_targets(imgs)) ** 2).mean(dim=-1)

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Official training loss: per-patch MSE averaged over the removed patches."""
        return (self.patch_mse(imgs, pred) * mask).sum() / mask.sum()

    def predicted_pixels(self, imgs: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """Predictions as an image (N, C, H, W) in the input's pixel space.

        With ``norm_pix_loss`` the prediction is per-patch standardised, so it
        is mapped back with each input patch's mean and std (as MAE's demo does).
        """
        if self.norm_pix_loss:
            target = self.patchify(imgs)
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            pred = pred * (var + 1.0e-6) ** 0.5 + mean
        p = self.patch_embed.patch_size[0]
        return self.unpatchify(pred, (imgs.shape[-2] // p, imgs.shape[-1] // p))


# --------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------
def _build(model_cls: type[nn.Module], variant: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    """``build_model_with_cfg`` that refuses timm downloads (weights come via ``convert``)."""
    if pretrained:
        raise ConfigError(
            f"{variant}: timm has no weights for this architecture; create it with pretrained=False "
            "and load the official checkpoint through vitlocal.models.convert.CONVERTERS"
        )
    return build_model_with_cfg(
        model_cls, variant, pretrained=False, feature_cfg={"feature_cls": "getter"}, **kwargs
    )


@register_model
def simmim_vit_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> Beit:
    """SimMIM ViT-B/16 (800 ep): Beit with shared rel-pos bias, layer scale 0.1, no abs pos."""
    args = dict(
        patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4, qkv_bias=True,
        use_abs_pos_emb=False, use_rel_pos_bias=False, use_shared_rel_pos_bias=True,
        init_values=0.1, num_classes=0, global_pool="token",
    )
    return _build(Beit, "simmim_vit_base_patch16_224", pretrained, **{**args, **kwargs})


@register_model
def scalemae_vit_large_patch16(pretrained: bool = False, **kwargs: Any) -> ScaleMaeVisionTransformer:
    """Scale-MAE ViT-L/16 with the GSD-aware sin-cos position embedding."""
    args = dict(
        patch_size=16, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4, qkv_bias=True,
        num_classes=0, global_pool="token", dynamic_img_size=True,
    )
    return _build(ScaleMaeVisionTransformer, "scalemae_vit_large_patch16", pretrained, **{**args, **kwargs})


@register_model
def mae_vit_base_patch16_dec512d8b(pretrained: bool = False, **kwargs: Any) -> MaeWithDecoder:
    """MAE ViT-B/16 encoder + 8-block 512-d decoder (``mae_visualize_vit_base.pth`` layout)."""
    args = dict(
        patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4, qkv_bias=True,
        num_classes=0, global_pool="token",
        decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16, norm_pix_loss=False,
    )
    return _build(MaeWithDecoder, "mae_vit_base_patch16_dec512d8b", pretrained, **{**args, **kwargs})
