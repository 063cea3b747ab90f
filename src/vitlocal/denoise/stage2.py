"""DVT stage 2: a generalizable denoiser from raw last-layer features to stage-1 ``F``.

One timm ``Block`` (dim C, C/64 heads, MLP ratio 4, qkv bias, LayerNorm eps
1e-6) applied to ``x + pos_embed``, the learnable position embedding resampled
(bicubic, timm's ``resample_abs_pos_embed``) to the input's patch grid, as the
authors' ``Denoiser``. Trained with ``MSE + (1 - cos)``, AdamW at
``lr * sqrt(batch / 256)``, 15 % linear warm-up, cosine decay. A seeded share
of the stage-1 tiles (``held_out``, at least 5 %) is never trained on; its
loss is measured every ``eval_every`` steps and kept in the model's
``history`` and the checkpoint's sidecar (``training_log``): 1,000 tiles
seen ~1,300 times each can over-fit, and this shows it.

Checkpoints (:func:`save_checkpoint`): ``<name>.pt`` holding ``{"denoiser":
state_dict, "config": ..., "format": ...}`` in the authors' key layout
(``denoiser.<Block keys>``, ``pos_embed`` of shape (1, gh*gw, C)), plus
``<name>.json`` with the sha256 of the ``.pt`` and the provenance.
:func:`load_checkpoint` reads ours and the authors' released files
(``{"denoiser": ...}``, ``{"model": ...}`` or a bare state dict; ``module.``
prefixes and ``vit.`` backbone keys are dropped; ``num_blocks`` > 1 is read
off ``denoiser.<i>.`` keys).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
import re
from functools import partial
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as nnf
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import Block, Mlp
from torch import nn

from .. import __version__
from ..errors import ConfigError, CorruptFileError

FORMAT = "vitlocal-dvt-denoiser/1"


def _block(dim: int) -> Block:
    return Block(dim=dim, num_heads=max(1, dim // 64), mlp_ratio=4, qkv_bias=True, qk_norm=False,
                 init_values=None, norm_layer=partial(nn.LayerNorm, eps=1e-6), act_layer=nn.GELU, mlp_layer=Mlp)


class Denoiser(nn.Module):
    """``Block(x + pos_embed)`` on (B, gh, gw, C) patch features; ``num_blocks`` > 1 stacks blocks."""

    def __init__(self, dim: int, grid: Sequence[int], num_blocks: int = 1) -> None:
        super().__init__()
        gh, gw = (int(v) for v in grid)
        self.dim, self.grid, self.num_blocks = int(dim), (gh, gw), int(num_blocks)
        blocks = [_block(dim) for _ in range(num_blocks)]
        self.denoiser = blocks[0] if num_blocks == 1 else nn.Sequential(*blocks)
        self.pos_embed = nn.Parameter(torch.randn(1, gh * gw, dim) * 0.02)
        self.history: dict[str, Any] | None = None  #: set by :func:`train_denoiser`, saved in the sidecar

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        if c != self.dim:
            raise ConfigError(f"denoiser of dim {self.dim} got features of dim {c}")
        pe = self.pos_embed if (h, w) == self.grid else resample_abs_pos_embed(
            self.pos_embed, (h, w), old_size=self.grid, num_prefix_tokens=0)
        return self.denoiser(x.reshape(b, h * w, c) + pe).reshape(b, h, w, c)


@dataclasses.dataclass(frozen=True)
class Stage2Settings:
    """Training of the denoiser (config ``dvt.stage2``; defaults: the authors' schedule, 40k steps)."""

    steps: int = 40000
    batch_size: int = 32
    lr: float = 2e-4
    min_lr: float = 1e-6
    warmup: float = 0.15
    weight_decay: float = 1e-5
    held_out: float = 0.05  #: share of the tiles never trained on (at least one tile)
    eval_every: int = 500  #: steps between two held-out evaluations (and the last step)

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> Stage2Settings:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(section) - fields)
        if unknown:
            raise ConfigError(f"dvt.stage2: unknown key(s) {unknown}; known: {sorted(fields)}")
        settings = cls(**section)
        if not 0.05 <= settings.held_out < 1 or settings.eval_every < 1:
            raise ConfigError(f"dvt.stage2: held_out must lie in [0.05, 1) and eval_every be >= 1, got {settings}")
        return settings


def peak_lr(settings: Stage2Settings) -> float:
    """The authors' square-root rule (``main_denoiser.py``): ``blr * sqrt(batch / 256)``."""
    return settings.lr * math.sqrt(settings.batch_size / 256)


def held_out_tiles(n: int, share: float, seed: int) -> np.ndarray:
    """Sorted indices of the ``ceil(share * n)`` tiles (at least 1, at most n - 1) kept out of training."""
    if n < 2:
        raise ConfigError(f"dvt stage 2 needs at least 2 stage-1 tiles to hold one out, got {n}")
    k = min(n - 1, max(1, math.ceil(share * n)))
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def _loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nnf.mse_loss(pred, target) + 1 - nnf.cosine_similarity(pred, target, dim=-1).mean()


def train_denoiser(
    raw: np.ndarray, target: np.ndarray, settings: Stage2Settings, *, seed: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[Denoiser, list[float]]:
    """Fit a :class:`Denoiser` mapping ``raw`` (N, gh, gw, C) to ``target`` (same shape); returns it and the losses.

    ``seed`` seeds torch right before the model is built, the held-out draw
    and the batches. The held-out tiles (:func:`held_out_tiles`) are never in
    a batch; ``model.history`` holds their loss through training.
    """
    raw_t = torch.as_tensor(np.asarray(raw, dtype=np.float32))
    target_t = torch.as_tensor(np.asarray(target, dtype=np.float32))
    if raw_t.shape != target_t.shape or raw_t.ndim != 4:
        raise ValueError(f"raw {tuple(raw_t.shape)} and target {tuple(target_t.shape)} must both be (N, gh, gw, C)")
    device = torch.device(device)
    torch.manual_seed(seed)
    n, gh, gw, dim = raw_t.shape
    model = Denoiser(dim, (gh, gw)).to(device)
    held = held_out_tiles(n, settings.held_out, seed)
    train = torch.from_numpy(np.setdiff1d(np.arange(n), held))
    lr = peak_lr(settings)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=settings.weight_decay)
    warm = max(1, int(settings.warmup * settings.steps))
    gen = torch.Generator().manual_seed(seed)
    raw_t, target_t = raw_t.to(device), target_t.to(device)
    losses, log = [], {"held_out": settings.held_out, "held_out_tiles": held.tolist(), "steps": [],
                       "train_loss": [], "held_out_loss": []}
    model.train()
    for step in range(settings.steps):
        if step < warm:
            rate = lr * (step + 1) / warm
        else:
            t = (step - warm) / max(1, settings.steps - warm)
            rate = settings.min_lr + 0.5 * (lr - settings.min_lr) * (1 + math.cos(math.pi * t))
        for group in opt.param_groups:
            group["lr"] = rate
        pick = train[torch.randint(0, len(train), (min(settings.batch_size, len(train)),), generator=gen)].to(device)
        loss = _loss(model(raw_t[pick]), target_t[pick])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if (step + 1) % settings.eval_every == 0 or step == settings.steps - 1:
            since = log["steps"][-1] if log["steps"] else 0
            log["steps"].append(step + 1)
            log["train_loss"].append(float(np.mean(losses[since:])))
            log["held_out_loss"].append(_held_out_loss(model, raw_t, target_t, held))
    model.history = log
    return model.eval(), losses


@torch.no_grad()
def _held_out_loss(model: Denoiser, raw: torch.Tensor, target: torch.Tensor, held: np.ndarray) -> float:
    """Mean loss over the held-out tiles (64 per call), the model left in training mode."""
    model.eval()
    parts = [(len(chunk), float(_loss(model(raw[chunk]), target[chunk])))
             for chunk in (torch.from_numpy(held[i : i + 64]).to(raw.device) for i in range(0, len(held), 64))]
    model.train()
    return sum(k * v for k, v in parts) / sum(k for k, _ in parts)


@torch.no_grad()
def denoise(model: Denoiser, raw: np.ndarray, batch_size: int = 256, device: torch.device | str = "cpu") -> np.ndarray:
    """``model`` applied to (N, gh, gw, C) features, in batches; float32 numpy out."""
    model = model.to(device).eval()
    out = [model(torch.as_tensor(np.asarray(raw[i : i + batch_size], dtype=np.float32)).to(device)).cpu().numpy()
           for i in range(0, len(raw), batch_size)]
    return np.concatenate(out) if out else np.zeros_like(raw, dtype=np.float32)


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(model: Denoiser, path: str | os.PathLike, provenance: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``path`` (.pt, atomically) and its ``.json`` sidecar (sha256, provenance); return the sidecar record."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {"dim": model.dim, "grid": list(model.grid), "num_blocks": model.num_blocks}
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    torch.save({"format": FORMAT, "config": config, "denoiser": model.state_dict()}, tmp)
    os.replace(tmp, path)
    record = {"format": FORMAT, "file": path.name, "sha256": sha256_of(path), **config,
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "vitlocal_version": __version__, **dict(provenance)}
    if model.history is not None:
        record["training_log"] = model.history
    sidecar = path.with_suffix(".json")
    tmp = sidecar.with_name(f"{sidecar.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
    os.replace(tmp, sidecar)
    return record


def _state_dict_of(blob: Any, path: Path) -> dict[str, torch.Tensor]:
    """The denoiser's tensors of any of the known containers, ``module.`` / ``vit.`` keys handled."""
    if isinstance(blob, Mapping):
        for key in ("denoiser", "model", "state_dict"):
            if key in blob and isinstance(blob[key], Mapping):
                blob = blob[key]
                break
    if not isinstance(blob, Mapping) or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise CorruptFileError(f"{path}: not a denoiser checkpoint (no 'denoiser' state dict of tensors)")
    out = {}
    for key, value in blob.items():
        key = key.removeprefix("module.")
        if key.startswith("vit."):
            continue
        out[key] = value
    return out


def load_checkpoint(path: str | os.PathLike, *, sha256: str | None = None, grid: Sequence[int] | None = None) -> Denoiser:
    """A :class:`Denoiser` from our checkpoint or the authors' (see the module docstring).

    ``sha256``: refuse a file with another digest. ``grid``: the position
    embedding's grid when it is not square and the file records none.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"denoiser checkpoint {path} does not exist")
    if sha256 is not None and sha256_of(path) != sha256:
        raise CorruptFileError(f"{path}: sha256 {sha256_of(path)} differs from the recorded {sha256}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle / zip errors of a truncated or foreign file
        raise CorruptFileError(f"{path}: cannot be read as a torch checkpoint ({err})") from err
    state = _state_dict_of(blob, path)
    if "pos_embed" not in state:
        raise CorruptFileError(f"{path}: no 'pos_embed' (expected the authors' layout: denoiser.*, pos_embed)")
    _, n, dim = state["pos_embed"].shape
    recorded = blob.get("config", {}) if isinstance(blob, Mapping) else {}
    if "grid" in recorded:
        grid = recorded["grid"]
    elif grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ConfigError(f"{path}: pos_embed has {n} positions, not a square grid; pass grid=(gh, gw)")
        grid = (side, side)
    stacked = {int(m.group(1)) for k in state if (m := re.match(r"denoiser\.(\d+)\.", k))}
    model = Denoiser(dim, grid, num_blocks=max(stacked) + 1 if stacked else 1)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CorruptFileError(f"{path}: keys do not match the denoiser layout (missing {missing}, "
                               f"unexpected {unexpected})")
    return model.eval()
