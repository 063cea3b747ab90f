"""Test-only transcriptions of the official models (key names, shapes, forward passes).

Written from microsoft/SimMIM ``models/{vision_transformer,simmim}.py``,
bytedance/ibot ``models/vision_transformer.py``, bair-climate-initiative/scale-mae
``scalemae/{models_mae,models_vit,util/pos_embed}.py`` and facebookresearch/mae
``models_mae.py`` / ``util/pos_embed.py``, without timm, so that the converted
timm models are checked against an independent implementation.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-6  # every official model uses partial(nn.LayerNorm, eps=1e-6)


def randomize_(module: nn.Module, seed: int, scale: float = 0.2) -> nn.Module:
    """Overwrite every trainable parameter with seeded noise (LayerNorm weights around 1).

    Frozen ones (the fixed sin-cos tables) keep their official values.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            noise = torch.randn(param.shape, generator=gen) * scale
            is_norm_weight = name.endswith("weight") and param.ndim == 1 and "norm" in name
            param.copy_(noise + 1.0 if is_norm_weight else noise)
    return module


# --------------------------------------------------------------------------
# Shared pieces (timm 0.3.2 / DINO Block)
# --------------------------------------------------------------------------
class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * (c // self.num_heads) ** -0.5
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(x)


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=EPS)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


# --------------------------------------------------------------------------
# Position embeddings
# --------------------------------------------------------------------------
def mae_numpy_sincos(embed_dim: int, grid_size: int, cls_token: bool) -> np.ndarray:
    """MAE ``util/pos_embed.get_2d_sincos_pos_embed`` (numpy)."""

    def one_d(dim: int, pos: np.ndarray) -> np.ndarray:
        omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.meshgrid(np.arange(grid_size, dtype=np.float32), np.arange(grid_size, dtype=np.float32))
    grid = np.stack(grid, axis=0).reshape(2, 1, grid_size, grid_size)
    emb = np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)
    return emb


def scalemae_pos_embed(embed_dim: int, grid_size: int, res: torch.Tensor) -> torch.Tensor:
    """Scale-MAE ``get_2d_sincos_pos_embed_with_resolution(..., cls_token=True)``: (n, 1+G*G, D)."""

    def one_d(dim: int, pos: torch.Tensor) -> torch.Tensor:
        omega = torch.arange(dim // 2, dtype=torch.float32)
        omega /= dim / 2.0
        omega = 1.0 / 10000**omega
        out = torch.einsum("m,d->md", pos.reshape(-1), omega)
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    grid_h = torch.arange(grid_size, dtype=torch.float32)
    grid_w = torch.arange(grid_size, dtype=torch.float32)
    grid = torch.stack(torch.meshgrid(grid_w, grid_h, indexing="xy"), dim=0)
    grid = torch.einsum("chw,n->cnhw", grid, res)
    _, n, h, w = grid.shape
    emb = torch.cat([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], dim=1)
    emb = emb.reshape(n, h * w, embed_dim)
    return torch.cat([torch.zeros(n, 1, embed_dim), emb], dim=1)


# --------------------------------------------------------------------------
# SimMIM ViT
# --------------------------------------------------------------------------
def simmim_relative_position_index(grid: int) -> torch.Tensor:
    """BEiT/SimMIM index, written out pair by pair."""
    num_distance = (2 * grid - 1) ** 2 + 3
    area = grid * grid
    index = torch.zeros(area + 1, area + 1, dtype=torch.long)
    for i in range(area):
        for j in range(area):
            dh = i // grid - j // grid + grid - 1
            dw = i % grid - j % grid + grid - 1
            index[i + 1, j + 1] = dh * (2 * grid - 1) + dw
    index[0, :] = num_distance - 3
    index[:, 0] = num_distance - 2
    index[0, 0] = num_distance - 1
    return index


class SimMIMRelativePositionBias(nn.Module):
    def __init__(self, grid: int, num_heads: int) -> None:
        super().__init__()
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * grid - 1) ** 2 + 3, num_heads))
        self.register_buffer("relative_position_index", simmim_relative_position_index(grid))

    def forward(self) -> torch.Tensor:
        n = self.relative_position_index.shape[0]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        return bias.permute(2, 0, 1)


class SimMIMAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rel_pos_bias: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * (c // self.num_heads) ** -0.5) @ k.transpose(-2, -1) + rel_pos_bias
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, -1)
        return self.proj(x)


class SimMIMBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=EPS)
        self.attn = SimMIMAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=EPS)
        self.mlp = Mlp(dim, 4 * dim)
        self.gamma_1 = nn.Parameter(0.1 * torch.ones(dim))
        self.gamma_2 = nn.Parameter(0.1 * torch.ones(dim))

    def forward(self, x: torch.Tensor, rel_pos_bias: torch.Tensor) -> torch.Tensor:
        x = x + self.gamma_1 * self.attn(self.norm1(x), rel_pos_bias)
        return x + self.gamma_2 * self.mlp(self.norm2(x))


class SimMIMEncoder(nn.Module):
    """``VisionTransformerForSimMIM`` (USE_APE False, USE_SHARED_RPB True, no mean pooling)."""

    def __init__(self, img: int, patch: int, dim: int, depth: int, heads: int) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.rel_pos_bias = SimMIMRelativePositionBias(img // patch, heads)
        self.blocks = nn.ModuleList([SimMIMBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=EPS)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """All tokens after the final norm (official forward, before dropping [CLS])."""
        x = self.patch_embed(x)
        w = mask.flatten(1).unsqueeze(-1).type_as(x)
        x = x * (1 - w) + self.mask_token.expand_as(x) * w
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        bias = self.rel_pos_bias()
        for blk in self.blocks:
            x = blk(x, bias)
        return self.norm(x)


class SimMIM(nn.Module):
    def __init__(self, img: int = 224, patch: int = 16, dim: int = 768, depth: int = 12, heads: int = 12) -> None:
        super().__init__()
        self.encoder = SimMIMEncoder(img, patch, dim, depth, heads)
        self.decoder = nn.Sequential(nn.Conv2d(dim, patch**2 * 3, kernel_size=1), nn.PixelShuffle(patch))


# --------------------------------------------------------------------------
# iBOT ViT (teacher backbone) + head, wrapped like MultiCropWrapper
# --------------------------------------------------------------------------
class IBOTBackbone(nn.Module):
    def __init__(self, img: int = 224, patch: int = 16, dim: int = 768, depth: int = 12, heads: int = 12) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (img // patch) ** 2 + 1, dim))
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``forward(x, return_all_tokens=True)`` at the native size (no pos interpolation)."""
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


class IBOTHead(nn.Module):
    def __init__(self, dim: int, out: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.last_layer = nn.Linear(dim, out, bias=False)
        self.last_layer2 = nn.Linear(dim, out, bias=False)


class IBOTTeacher(nn.Module):
    def __init__(self, backbone: IBOTBackbone, dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = IBOTHead(dim, 16)


# --------------------------------------------------------------------------
# Scale-MAE pretraining model (encoder exact, decoder side key-shaped)
# --------------------------------------------------------------------------
class ScaleMAE(nn.Module):
    def __init__(self, img: int = 224, patch: int = 16, dim: int = 1024, depth: int = 24, heads: int = 16,
                 dec_dim: int = 512, dec_depth: int = 8, dec_heads: int = 16) -> None:
        super().__init__()
        num_patches = (img // patch) ** 2
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim), requires_grad=False)
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=EPS)
        self.decoder_embed = nn.Linear(dim, dec_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_dim))
        self.mask_token_decoder = nn.Parameter(torch.zeros(1, 1, dec_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dec_dim), requires_grad=False)
        # release file: FPNHead keys under 'fpn.fpn', independent FCN heads 'fcn_high' / 'fcn_low'
        self.fpn = nn.Module()
        self.fpn.fpn = nn.Sequential(nn.ConvTranspose2d(dec_dim, dec_dim, 2, 2), nn.BatchNorm2d(dec_dim))
        self.fcn_high = nn.Sequential(nn.Conv2d(dec_dim, 32, 3, padding=1), nn.BatchNorm2d(32), nn.Conv2d(32, 3, 1))
        self.fcn_low = nn.Sequential(nn.Conv2d(dec_dim, 32, 3, padding=1), nn.BatchNorm2d(32), nn.Conv2d(32, 3, 1))
        self.decoder_blocks = nn.ModuleList([Block(dec_dim, dec_heads) for _ in range(dec_depth)])
        self.decoder_norm = nn.LayerNorm(dec_dim, eps=EPS)

    def forward_encoder_tokens(self, x: torch.Tensor, input_res: torch.Tensor) -> torch.Tensor:
        """``models_vit.VisionTransformer.forward_features`` before pooling: all normed tokens."""
        b, _, h, w = x.shape
        x = self.patch_embed(x)
        grid = int((h * w / self.patch_embed.proj.kernel_size[0] ** 2) ** 0.5)
        pos = scalemae_pos_embed(x.shape[-1], grid, input_res)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1) + pos
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


# --------------------------------------------------------------------------
# MAE MaskedAutoencoderViT
# --------------------------------------------------------------------------
class MAE(nn.Module):
    def __init__(self, img: int = 224, patch: int = 16, dim: int = 768, depth: int = 12, heads: int = 12,
                 dec_dim: int = 512, dec_depth: int = 8, dec_heads: int = 16, norm_pix_loss: bool = False) -> None:
        super().__init__()
        self.patch = patch
        grid = img // patch
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(
            torch.from_numpy(mae_numpy_sincos(dim, grid, True)).float().unsqueeze(0), requires_grad=False)
        self.blocks = nn.ModuleList([Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=EPS)
        self.decoder_embed = nn.Linear(dim, dec_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.from_numpy(mae_numpy_sincos(dec_dim, grid, True)).float().unsqueeze(0), requires_grad=False)
        self.decoder_blocks = nn.ModuleList([Block(dec_dim, dec_heads) for _ in range(dec_depth)])
        self.decoder_norm = nn.LayerNorm(dec_dim, eps=EPS)
        self.decoder_pred = nn.Linear(dec_dim, patch**2 * 3)
        self.norm_pix_loss = norm_pix_loss

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        p = self.patch
        h = w = imgs.shape[2] // p
        x = imgs.reshape(imgs.shape[0], 3, h, p, w, p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(imgs.shape[0], h * w, p**2 * 3)

    def forward_encoder(self, x: torch.Tensor, mask_ratio: float, noise: torch.Tensor):
        x = self.patch_embed(x) + self.pos_embed[:, 1:, :]
        n, length, d = x.shape
        len_keep = int(length * (1 - mask_ratio))
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        x = torch.gather(x, 1, ids_shuffle[:, :len_keep].unsqueeze(-1).repeat(1, 1, d))
        mask = torch.ones(n, length)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(n, -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, x: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(x)
        mask_tokens = self.mask_token.repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        x = torch.cat([x[:, :1, :], x_], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:, :]

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss = ((pred - target) ** 2).mean(dim=-1)
        return (loss * mask).sum() / mask.sum()
