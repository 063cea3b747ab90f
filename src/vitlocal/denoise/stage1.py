"""DVT stage 1: decompose one image's raw ViT features into ``F(p) + G(q) + h(y)``.

``y`` is the raw last-layer feature (final norm applied) of a patch whose
centre sits at ``p`` in the image and ``q`` in the ViT input
(``denoise.geometry``). ``F`` is a neural field over ``p`` shared by all views
(semantics), ``G`` one learnable ``C x gh x gw`` map sampled bilinearly at
``q`` (the artifact tied to the input position), ``h`` an MLP on ``y`` (the
image-dependent residual; detached inside the reconstruction, trained only by
its own losses). Losses, schedule and optimiser follow the authors
(``main_img_denoising.py``, ``dvt/models/offline_denoiser.py``):
reconstruction ``MSE + (1 - cos)``; after half the steps ``G`` is frozen and
``h`` switched on with ``0.1 * MSE(h, sg(y - F - G)) + 0.02 * |h|_1``; Adam
(lr 0.01, eps 1e-15, betas 0.9/0.99, the authors' *effective* weight decay,
see :class:`Stage1Settings`), linear warm-up then cosine decay to a tenth of
the rate; random tokens from all views each step.

The field is dense multi-resolution grids sampled with ``grid_sample`` (plain
PyTorch, CPU and GPU) instead of tiny-cuda-nn's hash grid: with the paper's
table size (2^20) and resolutions (16..1024) every level fits densely, so the
capacity is the same without hashing; its MLP is the authors'
``levels * features -> C/2 -> C``.

Several tiles are fitted together (:func:`denoise_images`): each keeps its own
field, ``G``, ``h`` and Adam state as slice ``b`` of stacked tensors (one
``grid_sample`` per level over all tiles, the MLPs as batched matrix
products), and the loss is the sum of the per-tile losses, so each tile gets
exactly the gradients, and (Adam being per element) the updates, it would
get alone.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as nnf
from torch import nn

from ..tiling import preprocess_tiles
from .geometry import Box, full_box, image_coords, input_coords, random_resized_box
from .settings import Stage1Settings


def _tile_parameters(dim: int, grid: Sequence[int], resolutions: Sequence[int], features: int,
                     seed: int) -> dict[str, list[torch.Tensor]]:
    """One tile's initial ``F`` grids and MLP, ``G`` and ``h`` (drawn from ``seed``; weights as (in, out))."""
    torch.manual_seed(seed)
    gh, gw = (int(v) for v in grid)
    half, quarter = max(1, dim // 2), max(1, dim // 4)
    # instant-NGP's init: tiny uniform grid values, the MLP does the rest
    grids = [torch.empty(features, r, r).uniform_(-1e-4, 1e-4) for r in resolutions]
    field = [nn.Linear(len(resolutions) * features, half), nn.Linear(half, dim)]
    artifact = torch.randn(dim, gh, gw) * 0.02
    residual = [nn.Linear(dim, quarter), nn.Linear(quarter, quarter), nn.Linear(quarter, dim)]
    return {"grids": grids, "artifact": [artifact],
            "field_w": [m.weight.detach().T for m in field], "field_b": [m.bias.detach()[None] for m in field],
            "residual_w": [m.weight.detach().T for m in residual],
            "residual_b": [m.bias.detach()[None] for m in residual]}


def _mlp(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor]) -> torch.Tensor:
    """(B, N, in) through Linear -> ReLU -> ... -> Linear, one batched matrix product per layer."""
    for i, (w, b) in enumerate(zip(weights, biases)):
        x = torch.baddbmm(b, x, w)
        if i < len(weights) - 1:
            x = torch.relu(x)
    return x


class TileStack(nn.Module):
    """B tiles' ``F``, ``G`` and ``h``: tile ``b`` owns slice ``b`` of every parameter.

    ``F``: per-level grids (B, features, r, r) -> MLP ``levels * features ->
    C/2 -> C`` (the authors' ``NeuralFeatureField``); ``G``: (B, C, gh, gw);
    ``h``: MLP ``C -> C/4 -> C/4 -> C``. Tile ``b`` starts from ``seeds[b]``
    exactly as it would alone.
    """

    def __init__(self, dim: int, grid: Sequence[int], resolutions: Sequence[int], features: int,
                 seeds: Sequence[int]) -> None:
        super().__init__()
        tiles = [_tile_parameters(dim, grid, resolutions, features, int(s)) for s in seeds]

        def stacked(key: str) -> nn.ParameterList:
            return nn.ParameterList(nn.Parameter(torch.stack(parts)) for parts in zip(*(t[key] for t in tiles)))

        self.resolutions = list(resolutions)
        self.grids, self.field_w, self.field_b = stacked("grids"), stacked("field_w"), stacked("field_b")
        self.artifact = stacked("artifact")[0]
        self.residual_w, self.residual_b = stacked("residual_w"), stacked("residual_b")

    def field(self, p: torch.Tensor) -> torch.Tensor:
        """``F`` at (B, N, 2) image coordinates in ``[0, 1]`` -> (B, N, C)."""
        where = (p * 2 - 1).unsqueeze(1)
        parts = [nnf.grid_sample(g, where, mode="bilinear", align_corners=True, padding_mode="border")[:, :, 0]
                 for g in self.grids]
        return _mlp(torch.cat(parts, dim=1).transpose(1, 2), self.field_w, self.field_b)

    def shared(self, q: torch.Tensor) -> torch.Tensor:
        """``G`` sampled bilinearly at (B, N, 2) input coordinates in ``[0, 1]`` (patch centres hit cells exactly)."""
        where = (q * 2 - 1).unsqueeze(1)
        return nnf.grid_sample(self.artifact, where, mode="bilinear", align_corners=False,
                               padding_mode="border")[:, :, 0].transpose(1, 2)

    def residual(self, y: torch.Tensor) -> torch.Tensor:
        """``h`` of (B, N, C) raw features."""
        return _mlp(y, self.residual_w, self.residual_b)

    def losses(self, y: torch.Tensor, p: torch.Tensor, q: torch.Tensor, *,
               residual_on: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-tile training loss (B,) and reconstruction loss ``MSE + 1 - cos`` (B,) of tokens (B, N, ...)."""
        clean, shared = self.field(p), self.shared(q)
        recon = clean + shared
        if residual_on:
            h = self.residual(y)
            recon = recon + h.detach()  # h is trained by its own two losses only
        rec = ((recon - y) ** 2).mean(dim=(1, 2)) + 1 - nnf.cosine_similarity(recon, y, dim=-1).mean(dim=1)
        if not residual_on:
            return rec, rec
        target = (y - clean - shared).detach()
        return rec + 0.1 * ((h - target) ** 2).mean(dim=(1, 2)) + 0.02 * h.abs().mean(dim=(1, 2)), rec


@dataclasses.dataclass(frozen=True)
class Stage1Result:
    """One image: ``denoised`` = ``F`` on the full view's grid (gh, gw, C); ``artifact`` = ``G`` (gh, gw, C).

    Fitted together with others, a tile's seconds are its batch's divided by the batch's size.
    """

    denoised: np.ndarray
    artifact: np.ndarray
    raw: np.ndarray  #: the full view's raw features (gh, gw, C)
    loss: float  #: reconstruction loss (MSE + 1 - cos) of the last step
    seconds_views: float
    seconds_fit: float
    losses: np.ndarray  #: reconstruction loss of every step (steps,)


def learning_rate(step: int, settings: Stage1Settings) -> float:
    """The authors' schedule: linear warm-up over ``warmup`` of the steps, half-cycle cosine to ``min_lr_ratio``."""
    warm = max(1, int(settings.warmup * settings.steps))
    if step < warm:
        return settings.lr * (step + 1) / warm
    t = (step - warm) / max(1, settings.steps - warm)
    low = settings.lr * settings.min_lr_ratio
    return low + 0.5 * (settings.lr - low) * (1 + math.cos(math.pi * t))


def fit(
    raw: torch.Tensor, p: torch.Tensor, grid: Sequence[int], resolutions: Sequence[int], settings: Stage1Settings, *,
    seeds: Sequence[int], device: torch.device | str = "cpu",
) -> tuple[TileStack, np.ndarray]:
    """Fit B tiles' decompositions to ``raw`` (B, V, gh*gw, C) at image coordinates ``p`` (B, V, gh*gw, 2).

    Every view shares the input coordinates ``q`` of ``grid``. Tile ``b``
    draws its initial values and its tokens from ``seeds[b]`` alone. Returns
    the stack and the reconstruction loss of every step, (steps, B).
    """
    device = torch.device(device)
    tiles, views, n, dim = raw.shape
    gh, gw = (int(v) for v in grid)
    if n != gh * gw or p.shape != (tiles, views, n, 2) or len(seeds) != tiles:
        raise ValueError(f"raw {tuple(raw.shape)}, p {tuple(p.shape)} and {len(seeds)} seeds do not fit "
                         f"{tiles} tiles on a {gh}x{gw} grid")
    model = TileStack(dim, grid, resolutions, settings.features_per_level, seeds).to(device)
    y_all = raw.reshape(tiles, -1, dim).to(device, torch.float32)
    p_all = p.reshape(tiles, -1, 2).to(device, torch.float32)
    q_grid = torch.from_numpy(input_coords(grid)).reshape(n, 2).to(device)
    rows = torch.arange(tiles, device=device)[:, None]
    # foreach: one fused update for all tensors (the per-step cost of a small field is mostly overhead)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr, eps=1e-15, betas=(0.9, 0.99),
                           weight_decay=settings.weight_decay, foreach=True)
    gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    switch = int(settings.freeze_g_after * settings.steps)
    history = torch.empty(settings.steps, tiles, device=device)
    for step in range(settings.steps):
        residual_on = step >= switch
        if step == switch:
            model.artifact.requires_grad_(False)
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, settings)
        pick = torch.stack([torch.randint(0, views * n, (settings.tokens_per_step,), generator=g)
                            for g in gens]).to(device)
        loss, rec = model.losses(y_all[rows, pick], p_all[rows, pick], q_grid[pick % n], residual_on=residual_on)
        history[step] = rec.detach()
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()  # the sum: each tile's gradient is its own loss's
        opt.step()
    return model, history.cpu().numpy()


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
    images: Sequence[np.ndarray], encode: Encoder, *, mean: Sequence[float], std: Sequence[float], input_size: int,
    grid: Sequence[int], settings: Stage1Settings, rngs: Sequence[np.random.Generator],
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw features (B, V+1, gh*gw, C) and image coordinates (B, V+1, gh*gw, 2) of every view, full image last.

    Image ``b``'s crops are drawn from ``rngs[b]``; the views of all images go
    through the ViT together, ``settings.batch_size`` at a time.
    """
    boxes = [view_boxes(image.shape[:2], settings, rng) for image, rng in zip(images, rngs)]
    jobs = [(image, box) for image, own in zip(images, boxes) for box in own]
    feats = []
    for start in range(0, len(jobs), settings.batch_size):
        batch = np.stack([render_view(image, box, mean, std, input_size)
                          for image, box in jobs[start : start + settings.batch_size]])
        feats.append(encode(torch.from_numpy(batch).to(device)).float().cpu())
    coords = np.stack([np.stack([image_coords(b, image.shape[:2], grid).reshape(-1, 2) for b in own])
                       for image, own in zip(images, boxes)])
    raw = torch.cat(feats)
    return raw.reshape(len(images), -1, *raw.shape[1:]), torch.from_numpy(coords)


def denoise_images(
    tiles: Sequence[np.ndarray], encode: Encoder, *, mean: Sequence[float], std: Sequence[float], input_size: int,
    grid: Sequence[int], settings: Stage1Settings, seeds: Sequence[int], device: torch.device | str = "cpu",
) -> list[Stage1Result]:
    """Stage 1 for uint8 tiles (H x W x 3), ``settings.tiles_per_step`` fitted together; results in order.

    Tile ``i`` gets the result :func:`denoise_image` gives it with
    ``seed=seeds[i]`` (within float tolerance): its own crops, initial values,
    tokens and optimiser state. Tiles of one size share a batch (their grids
    stack); any number of tiles may be passed.
    """
    if len(seeds) != len(tiles):
        raise ValueError(f"{len(tiles)} tiles but {len(seeds)} seeds")
    by_size: dict[tuple[int, ...], list[int]] = {}
    for i, tile in enumerate(tiles):
        by_size.setdefault(tuple(tile.shape), []).append(i)
    results: list[Stage1Result | None] = [None] * len(tiles)
    gh, gw = (int(v) for v in grid)
    for members in by_size.values():
        for first in range(0, len(members), settings.tiles_per_step):
            batch = members[first : first + settings.tiles_per_step]
            start = time.perf_counter()
            raw, p = extract_views([tiles[i] for i in batch], encode, mean=mean, std=std, input_size=input_size,
                                   grid=grid, settings=settings,
                                   rngs=[np.random.default_rng(seeds[i]) for i in batch], device=device)
            mid = time.perf_counter()
            resolutions = settings.resolutions(tiles[batch[0]].shape[:2])
            model, history = fit(raw, p, grid, resolutions, settings, seeds=[seeds[i] for i in batch], device=device)
            with torch.no_grad():
                denoised = model.field(p[:, -1].to(device)).cpu().numpy().reshape(len(batch), gh, gw, -1)
                artifact = model.artifact.permute(0, 2, 3, 1).cpu().numpy()
            share = (mid - start) / len(batch), (time.perf_counter() - mid) / len(batch)
            for b, i in enumerate(batch):
                results[i] = Stage1Result(denoised[b], artifact[b], raw[b, -1].numpy().reshape(gh, gw, -1),
                                          float(history[-1, b]), *share, history[:, b].copy())
    return results


def denoise_image(
    image: np.ndarray, encode: Encoder, *, mean: Sequence[float], std: Sequence[float], input_size: int,
    grid: Sequence[int], settings: Stage1Settings, seed: int = 0, device: torch.device | str = "cpu",
) -> Stage1Result:
    """Stage 1 for one image (uint8 H x W x 3): views, fit, ``F`` and ``G`` on the full view's grid."""
    return denoise_images([image], encode, mean=mean, std=std, input_size=input_size, grid=grid, settings=settings,
                          seeds=[seed], device=device)[0]
