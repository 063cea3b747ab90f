"""Per-patch linear probe: softmax regression on frozen features.

[code] The authors trained ``Linear(768, C)`` — with
``BatchNorm1d(affine=False, eps=1e-6)`` in front for MAE and SimMIM, whose
features have a few huge-variance dimensions — with Adam and cross-entropy
over all training patches. Their lr / batch / epochs are lost and their
checkpoint was selected on the reported validation images; here the schedule
is fixed (cosine decay to 0 over ``epochs``) and the last epoch is kept,
unless ``val_fraction`` holds out *training* patches (or training images, via
``groups``) to select the epoch on.

Defaults (documented choices, not the authors'): Adam, lr 1e-3, batch 4096,
no weight decay, zero-initialised weights (the problem is convex, so no
random init is needed). The workflow trains ``probes.linear_epochs`` epochs
(100 in config.yaml); this function's own default of 30 serves quick calls. Training is fast because the whole feature
matrix stays on the device and minibatches are index gathers from a seeded
permutation (no DataLoader); it is deterministic on CPU for a given seed.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from vitlocal.errors import LabelError
from vitlocal.probes.knn import resolve_device, shared_tensor
from vitlocal.probes.metrics import confusion_matrix, mean_iou

IGNORE_INDEX = 255
OPTIMIZERS: tuple[str, ...] = ("adam", "adamw", "sgd")
#: Rows per forward pass when predicting or scoring the held-out set.
PREDICT_BATCH = 65536


class LinearProbe(nn.Module):
    """``Linear(in_dim, num_classes)``, optionally after ``BatchNorm1d(affine=False, eps=1e-6)``."""

    def __init__(self, in_dim: int, num_classes: int, batchnorm: bool = False) -> None:
        super().__init__()
        self.norm: nn.Module = (
            nn.BatchNorm1d(in_dim, affine=False, eps=1e-6) if batchnorm else nn.Identity()
        )
        self.linear = nn.Linear(in_dim, num_classes)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(x))


def train_linear_probe(
    x: np.ndarray | torch.Tensor,
    y: np.ndarray,
    num_classes: int,
    *,
    batchnorm: bool = False,
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 4096,
    weight_decay: float = 0.0,
    optimizer: str = "adam",
    seed: int = 0,
    device: str | torch.device | None = None,
    ignore_index: int = IGNORE_INDEX,
    val_fraction: float = 0.0,
    groups: np.ndarray | None = None,
) -> tuple[LinearProbe, dict[str, Any]]:
    """Train a probe on features ``x`` (n, d) and labels ``y`` (n,), skipping ``ignore_index`` rows.

    With ``val_fraction > 0`` that fraction of the labelled training rows (of
    the distinct ``groups``, e.g. image ids, when given) is held out and the
    epoch with the best held-out mIoU is returned. Returns the probe (eval
    mode, on ``device``) and the settings used, for provenance.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer={optimizer!r} is unknown; expected one of {OPTIMIZERS}")
    if epochs < 1 or batch_size < 2:
        raise ValueError(f"need epochs >= 1 and batch_size >= 2; got {epochs} and {batch_size}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction} must be in [0, 1)")
    if len(x) != len(y):
        raise ValueError(
            f"x has {len(x)} rows but y has {len(y)} labels; expected one label per row"
        )
    if groups is not None and np.shape(groups) != (len(y),):
        raise ValueError(
            f"groups has shape {np.shape(groups)}; expected ({len(y)},), one id per row"
        )
    dev = resolve_device(device)
    gen = torch.Generator().manual_seed(seed)
    labelled = _labelled_rows(y, num_classes, ignore_index)
    if len(labelled) < 2:
        raise ValueError(f"only {len(labelled)} labelled rows; need at least 2 to train")
    train_rows, val_rows = _split(labelled, val_fraction, groups, gen)

    features = shared_tensor(x).to(dev)
    targets = torch.as_tensor(np.asarray(y), dtype=torch.int64).to(dev)
    probe = LinearProbe(features.shape[1], num_classes, batchnorm).to(dev)
    opt = _make_optimizer(optimizer, probe, lr, weight_decay)
    n_batches = math.ceil(len(train_rows) / batch_size)
    total_steps = epochs * n_batches

    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    for epoch in range(epochs):
        perm = train_rows[torch.randperm(len(train_rows), generator=gen)].to(dev)
        # Near-equal batches: never a 1-row tail that BatchNorm cannot train on.
        batches = torch.tensor_split(perm, n_batches)
        loss = _train_epoch(
            probe, opt, features, targets, batches, lr, epoch * n_batches, total_steps
        )
        if len(val_rows):
            score = _heldout_miou(probe, features, targets, val_rows.to(dev), num_classes)
            if best is None or score > best[0]:
                best = (score, epoch + 1, copy.deepcopy(probe.state_dict()))

    settings: dict[str, Any] = {
        "in_dim": int(features.shape[1]),
        "num_classes": num_classes,
        "batchnorm": batchnorm,
        "epochs": epochs,
        "lr": lr,
        "schedule": "cosine",
        "batch_size": batch_size,
        "weight_decay": weight_decay,
        "optimizer": optimizer,
        "init": "zeros",
        "seed": seed,
        "ignore_index": ignore_index,
        "val_fraction": val_fraction,
        "val_split": "groups" if groups is not None else "rows",
        "n_rows": len(y),
        "n_ignored": int(len(y) - len(labelled)),
        "n_train": len(train_rows),
        "n_val": len(val_rows),
        "device": str(dev),
        "final_loss": loss,
        "selected_epoch": epochs,
        "val_miou": None,
    }
    if best is not None:
        probe.load_state_dict(best[2])
        settings.update(selected_epoch=best[1], val_miou=best[0])
    return probe.eval(), settings


@torch.inference_mode()
def predict(
    probe: LinearProbe, x: np.ndarray | torch.Tensor, batch_size: int = PREDICT_BATCH
) -> np.ndarray:
    """Predicted class (int64) for every row of ``x``, on the probe's device."""
    probe.eval()
    dev = next(probe.parameters()).device
    out = np.empty(len(x), dtype=np.int64)
    for start in range(0, len(x), batch_size):
        block = shared_tensor(x[start : start + batch_size]).to(dev).float()
        out[start : start + len(block)] = probe(block).argmax(dim=1).cpu().numpy()
    return out


def _labelled_rows(y: np.ndarray, num_classes: int, ignore_index: int) -> torch.Tensor:
    """Indices of rows whose label is a class (not ``ignore_index``); other values raise."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise LabelError(f"labels have shape {y.shape}; expected one label per feature row")
    keep = y != ignore_index
    bad = keep & ((y < 0) | (y >= num_classes))
    if bad.any():
        raise LabelError(
            f"label {int(y[bad][0])} is out of range; "
            f"expected 0..{num_classes - 1} or {ignore_index}"
        )
    return torch.from_numpy(np.flatnonzero(keep))


def _split(
    rows: torch.Tensor, val_fraction: float, groups: np.ndarray | None, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded train / held-out split of labelled ``rows``, by row or by group."""
    if val_fraction == 0.0:
        return rows, rows[:0]
    if groups is None:
        perm = rows[torch.randperm(len(rows), generator=gen)]
        n_val = max(1, round(val_fraction * len(rows)))
        return perm[n_val:].sort().values, perm[:n_val].sort().values
    row_groups = np.asarray(groups)[rows.numpy()]
    names = np.unique(row_groups)
    n_val = max(1, round(val_fraction * len(names)))
    if n_val >= len(names):
        raise ValueError(
            f"val_fraction={val_fraction} leaves no training group out of {len(names)}"
        )
    val_names = names[torch.randperm(len(names), generator=gen)[:n_val].numpy()]
    is_val = torch.from_numpy(np.isin(row_groups, val_names))
    return rows[~is_val], rows[is_val]


def _train_epoch(
    probe: LinearProbe,
    opt: torch.optim.Optimizer,
    features: torch.Tensor,
    targets: torch.Tensor,
    batches: Sequence[torch.Tensor],
    lr: float,
    first_step: int,
    total_steps: int,
) -> float:
    """One pass over ``batches`` (row indices) with cosine-decayed lr; returns the last loss."""
    probe.train()
    for step, idx in enumerate(batches, start=first_step):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
        loss = nn.functional.cross_entropy(probe(features[idx].float()), targets[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return float(loss.item())


def _make_optimizer(
    name: str, probe: nn.Module, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    params = probe.parameters()
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


def _heldout_miou(
    probe: LinearProbe,
    features: torch.Tensor,
    targets: torch.Tensor,
    rows: torch.Tensor,
    num_classes: int,
) -> float:
    """Patch-level mIoU of the probe on held-out training rows."""
    pred = predict(probe, features[rows])
    cm = confusion_matrix(pred, targets[rows].cpu().numpy(), num_classes)
    return mean_iou(cm)[0]
