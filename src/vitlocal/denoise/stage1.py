"""DVT stage 1: decompose one image's raw ViT features into ``F(p) + G(q) + h(y)``.

``y`` is the raw last-layer feature (final norm applied) of a patch whose
centre sits at ``p`` in the image and ``q`` in the ViT input
(``denoise.geometry``). ``F`` is a neural field over ``p`` shared by all views
(semantics), ``G`` one learnable ``C x gh x gw`` map sampled bilinearly at
``q`` (the artifact tied to the input position), ``h`` an MLP on ``y`` (the
image-dependent residual; detached inside the reconstruction, trained only by
its own losses). Losses, schedule and optimiser follow the authors:
reconstruction ``MSE + (1 - cos)``; after half the steps ``G`` is frozen and
``h`` switched on with ``0.1 * MSE(h, sg(y - F - G)) + 0.02 * |h|_1``; Adam
(lr 0.01, eps 1e-15, betas 0.9/0.99, weight decay 1e-5), linear warm-up then
cosine decay to a tenth of the rate; random tokens from all views each step.

The field is dense multi-resolution grids sampled with ``grid_sample`` (plain
PyTorch, CPU and GPU) instead of tiny-cuda-nn's hash grid: with the paper's
table size (2^20) and resolutions (16..1024) every level fits densely, so the
capacity is the same without hashing.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as nnf
from torch import nn

from ..errors import ConfigError
from ..tiling import preprocess_tiles
from .geometry import Box, full_box, image_coords, input_coords, random_resized_box


@dataclasses.dataclass(frozen=True)
class Stage1Settings:
    """Hyper-parameters of one per-image fit (config ``dvt.stage1``; defaults = the paper's)."""

    views: int = 768
    steps: int = 20000
    tokens_per_step: int = 2048
    levels: int = 16
    features_per_level: int = 8
    base_resolution: int = 16
    max_resolution: int = 1024
    hidden: int = 128
    lr: float = 0.01
    min_lr_ratio: float = 0.1
    warmup: float = 0.1
    weight_decay: float = 1e-5
    freeze_g_after: float = 0.5
    scale: tuple[float, float] = (0.1, 0.5)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    batch_size: int = 64

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> Stage1Settings:
        """From ``dvt.stage1`` (unknown keys are an error naming them)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(section) - fields)
        if unknown:
            raise ConfigError(f"dvt.stage1: unknown key(s) {unknown}; known: {sorted(fields)}")
        values = dict(section)
        for key in ("scale", "ratio"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        settings = cls(**values)
        if settings.views < 1 or settings.steps < 1 or settings.tokens_per_step < 1:
            raise ConfigError(f"dvt.stage1: views, steps and tokens_per_step must be >= 1, got {settings}")
        return settings


class GridField(nn.Module):
    """``F``: dense multi-resolution feature grids over ``[0, 1]^2`` -> MLP (hidden, C/2) -> ``C``."""

    def __init__(self, dim: int, *, levels: int, features: int, base: int, top: int, hidden: int) -> None:
        super().__init__()
        growth = math.exp((math.log(top) - math.log(base)) / max(1, levels - 1))
        self.resolutions = [int(round(base * growth**level)) for level in range(levels)]
        # instant-NGP's init: tiny uniform grid values, the MLP does the rest
        self.grids = nn.ParameterList(
            nn.Parameter(torch.empty(1, features, r, r).uniform_(-1e-4, 1e-4)) for r in self.resolutions
        )
        self.mlp = nn.Sequential(
            nn.Linear(levels * features, hidden), nn.ReLU(),
            nn.Linear(hidden, max(1, dim // 2)), nn.ReLU(),
            nn.Linear(max(1, dim // 2), dim),
        )

    def encode(self, p: torch.Tensor) -> torch.Tensor:
        """(N, 2) coordinates in ``[0, 1]`` -> (N, levels * features) bilinear grid features."""
        where = (p * 2 - 1).view(1, 1, -1, 2)
        parts = [nnf.grid_sample(g, where, mode="bilinear", align_corners=True, padding_mode="border")[0, :, 0].T
                 for g in self.grids]
        return torch.cat(parts, dim=1)

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.encode(p))


class Decomposition(nn.Module):
    """``G`` (1, C, gh, gw) and ``h`` (C -> C/4 -> C/4 -> C) of the noise model; ``F`` is a :class:`GridField`."""

    def __init__(self, dim: int, grid: Sequence[int], settings: Stage1Settings) -> None:
        super().__init__()
        gh, gw = (int(v) for v in grid)
        self.field = GridField(dim, levels=settings.levels, features=settings.features_per_level,
                               base=settings.base_resolution, top=settings.max_resolution, hidden=settings.hidden)
        self.artifact = nn.Parameter(torch.randn(1, dim, gh, gw) * 0.02)
        quarter = max(1, dim // 4)
        self.residual = nn.Sequential(nn.Linear(dim, quarter), nn.ReLU(), nn.Linear(quarter, quarter), nn.ReLU(),
                                      nn.Linear(quarter, dim))

    def shared(self, q: torch.Tensor) -> torch.Tensor:
        """``G`` sampled bilinearly at (N, 2) input coordinates in ``[0, 1]`` (patch centres hit cells exactly)."""
        where = (q * 2 - 1).view(1, 1, -1, 2)
        return nnf.grid_sample(self.artifact, where, mode="bilinear", align_corners=False,
                               padding_mode="border")[0, :, 0].T


@dataclasses.dataclass(frozen=True)
class Stage1Result:
    """One image: ``denoised`` = ``F`` on the full view's grid (gh, gw, C); ``artifact`` = ``G`` (gh, gw, C)."""

    denoised: np.ndarray
    artifact: np.ndarray
    raw: np.ndarray  #: the full view's raw features (gh, gw, C)
    loss: float  #: reconstruction loss (MSE + 1 - cos) of the last step
    seconds_views: float
    seconds_fit: float


def _lr(step: int, settings: Stage1Settings) -> float:
    warm = max(1, int(settings.warmup * settings.steps))
    if step < warm:
        return settings.lr * (step + 1) / warm
    t = (step - warm) / max(1, settings.steps - warm)
    low = settings.lr * settings.min_lr_ratio
    return low + 0.5 * (settings.lr - low) * (1 + math.cos(math.pi * t))


def fit(
    raw: torch.Tensor, p: torch.Tensor, grid: Sequence[int], settings: Stage1Settings, *,
    seed: int = 0, device: torch.device | str = "cpu",
) -> tuple[Decomposition, float]:
    """Fit the decomposition to ``raw`` (V, gh*gw, C) at image coordinates ``p`` (V, gh*gw, 2).

    Every view shares the input coordinates ``q`` of ``grid``. Returns the
    model and the last reconstruction loss.
    """
    device = torch.device(device)
    views, n, dim = raw.shape
    gh, gw = (int(v) for v in grid)
    if n != gh * gw or p.shape != (views, n, 2):
        raise ValueError(f"raw {tuple(raw.shape)} and p {tuple(p.shape)} do not fit a {gh}x{gw} grid")
    torch.manual_seed(seed)
    model = Decomposition(dim, grid, settings).to(device)
    y_all = raw.reshape(-1, dim).to(device, torch.float32)
    p_all = p.reshape(-1, 2).to(device, torch.float32)
    q_all = torch.from_numpy(input_coords(grid)).reshape(1, n, 2).expand(views, n, 2).reshape(-1, 2).to(device)
    # foreach: one fused update for all tensors (the per-step cost of a small field is mostly overhead)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr, eps=1e-15, betas=(0.9, 0.99),
                           weight_decay=settings.weight_decay, foreach=True)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    switch = int(settings.freeze_g_after * settings.steps)
    loss_value = float("nan")
    for step in range(settings.steps):
        residual_on = step >= switch
        if step == switch:
            model.artifact.requires_grad_(False)
        for group in opt.param_groups:
            group["lr"] = _lr(step, settings)
        pick = torch.randint(0, len(y_all), (settings.tokens_per_step,), generator=gen).to(device)
        y, pos, q = y_all[pick], p_all[pick], q_all[pick]
        clean = model.field(pos)
        shared = model.shared(q)
        recon = clean + shared
        if residual_on:
            h = model.residual(y)
            recon = recon + h.detach()
        loss = nnf.mse_loss(recon, y) + (1 - nnf.cosine_similarity(recon, y, dim=-1).mean())
        if step == settings.steps - 1:
            loss_value = float(loss.detach())
        if residual_on:
            target = (y - clean - shared).detach()
            loss = loss + 0.1 * nnf.mse_loss(h, target) + 0.02 * h.abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model, loss_value


#: ``encode(x)``: normalised inputs (B, 3, S, S) -> last-layer patch tokens (B, gh*gw, C).
Encoder = Callable[[torch.Tensor], torch.Tensor]


def view_boxes(image_hw: Sequence[int], settings: Stage1Settings, rng: np.random.Generator) -> list[Box]:
    """``settings.views`` random-resized crops, then the full image (always last)."""
    boxes = [random_resized_box(image_hw, rng, scale=settings.scale, ratio=settings.ratio, flip_p=settings.flip_p)
             for _ in range(settings.views)]
    return [*boxes, full_box(image_hw)]


def render_view(image: np.ndarray, box: Box, mean: Sequence[float], std: Sequence[float], size: int) -> np.ndarray:
    """One view as model input (3, size, size): crop, normalise, resize bicubically (``preprocess_tiles``), flip."""
    crop = image[box.top : box.top + box.height, box.left : box.left + box.width]
    x = preprocess_tiles(np.ascontiguousarray(crop)[None], mean, std, size)[0]
    return np.ascontiguousarray(x[:, :, ::-1]) if box.flip else x


@torch.no_grad()
def extract_views(
    image: np.ndarray, encode: Encoder, *, mean: Sequence[float], std: Sequence[float], input_size: int,
    grid: Sequence[int], settings: Stage1Settings, rng: np.random.Generator, device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw features (V+1, gh*gw, C) and image coordinates (V+1, gh*gw, 2) of every view, full image last."""
    hw = image.shape[:2]
    boxes = view_boxes(hw, settings, rng)
    feats = []
    for start in range(0, len(boxes), settings.batch_size):
        batch = np.stack([render_view(image, b, mean, std, input_size) for b in boxes[start : start + settings.batch_size]])
        feats.append(encode(torch.from_numpy(batch).to(device)).float().cpu())
    coords = np.stack([image_coords(b, hw, grid).reshape(-1, 2) for b in boxes])
    return torch.cat(feats), torch.from_numpy(coords)


def denoise_image(
    image: np.ndarray, encode: Encoder, *, mean: Sequence[float], std: Sequence[float], input_size: int,
    grid: Sequence[int], settings: Stage1Settings, seed: int = 0, device: torch.device | str = "cpu",
) -> Stage1Result:
    """Stage 1 for one image (uint8 H x W x 3): views, fit, ``F`` and ``G`` on the full view's grid."""
    start = time.perf_counter()
    raw, p = extract_views(image, encode, mean=mean, std=std, input_size=input_size, grid=grid,
                           settings=settings, rng=np.random.default_rng(seed), device=device)
    mid = time.perf_counter()
    model, loss = fit(raw, p, grid, settings, seed=seed, device=device)
    gh, gw = (int(v) for v in grid)
    with torch.no_grad():
        denoised = model.field(p[-1].to(device)).cpu().numpy().reshape(gh, gw, -1)
        artifact = model.artifact[0].permute(1, 2, 0).cpu().numpy()
    return Stage1Result(denoised, artifact, raw[-1].numpy().reshape(gh, gw, -1), loss, mid - start,
                        time.perf_counter() - mid)
