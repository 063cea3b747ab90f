"""Example factories for ``models: {<key>: {factory: ...}}`` entries (demo preset and tests).

``tiny_reg_vit``: a plain-PyTorch ViT with a CLS token and 4 register tokens
that offers only the minimal contract (``get_intermediate_layers``, DINOv2's
signature), so it exercises the path a non-timm backbone takes. Weights are
random; :func:`vitlocal.models.factory.call_factory` seeds them.
``timm_reg_vit``: the same shape as a timm ``VisionTransformer`` (the
``forward_intermediates`` path).
"""

from __future__ import annotations

import torch
from torch import nn


class TinyRegViT(nn.Module):
    """Pre-norm ViT: patch embedding, [CLS, 4 registers, patches] + learned position embedding, blocks, norm."""

    def __init__(self, img_size: int = 48, patch_size: int = 16, embed_dim: int = 48, depth: int = 4,
                 num_heads: int = 3, reg_tokens: int = 4) -> None:
        super().__init__()
        self.patch_size, self.embed_dim, self.num_register_tokens = patch_size, embed_dim, reg_tokens
        self.patch_embed = nn.Conv2d(3, embed_dim, patch_size, stride=patch_size)
        grid = img_size // patch_size
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim) * 0.02)
        self.register_tokens = nn.Parameter(torch.randn(1, reg_tokens, embed_dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, grid * grid, embed_dim) * 0.02)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(embed_dim, num_heads, 2 * embed_dim, dropout=0.0, batch_first=True,
                                       norm_first=True)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim)

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, gh*gw, C), row-major
        n = patches.shape[1]
        pos = self.pos_embed
        if n != pos.shape[1]:  # bicubic resampling of the square position grid, as DINOv2 does
            side, (gh, gw) = int(pos.shape[1] ** 0.5), (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
            grid = pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
            pos = nn.functional.interpolate(grid, size=(gh, gw), mode="bicubic").permute(0, 2, 3, 1).reshape(1, n, -1)
        b = x.shape[0]
        return torch.cat([self.cls_token.expand(b, -1, -1), self.register_tokens.expand(b, -1, -1), patches + pos], 1)

    def get_intermediate_layers(self, x: torch.Tensor, n=1, reshape: bool = False, return_class_token: bool = False,
                                norm: bool = True):
        """DINOv2's contract: per block in ``n`` (0-based list, or the last ``n``), patch tokens (and CLS)."""
        wanted = set(range(len(self.blocks) - n, len(self.blocks)) if isinstance(n, int) else n)
        tokens, outs = self._tokens(x), []
        for i, block in enumerate(self.blocks):
            tokens = block(tokens)
            if i in wanted:
                outs.append(self.norm(tokens) if norm else tokens)
        prefix = 1 + self.num_register_tokens
        patches = [out[:, prefix:] for out in outs]
        if reshape:
            gh, gw = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
            patches = [p.reshape(x.shape[0], gh, gw, -1).permute(0, 3, 1, 2) for p in patches]
        if return_class_token:
            return tuple(zip(patches, [out[:, 0] for out in outs]))
        return tuple(patches)


def tiny_reg_vit(img_size: int = 48, embed_dim: int = 48, depth: int = 4, num_heads: int = 3) -> nn.Module:
    """Tiny random ViT/16 with CLS + 4 registers (prefix_tokens: 5), minimal contract only."""
    return TinyRegViT(img_size=img_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads)


tiny_reg_vit.vitlocal_spec = {"patch_size": 16, "prefix_tokens": 5, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


def timm_reg_vit(img_size: int = 48, embed_dim: int = 48, depth: int = 4, num_heads: int = 3,
                 dynamic_img_size: bool = False) -> nn.Module:
    """The same tiny ViT/16 with 4 registers as a timm ``VisionTransformer`` (``forward_intermediates``)."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=img_size, patch_size=16, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                             reg_tokens=4, num_classes=0, dynamic_img_size=dynamic_img_size)
