"""Patch features of several layers from one forward pass.

The authors' code [code] ran the first L blocks for each layer L and applied
the model's final LayerNorm (``model.norm``) to block L's output, then dropped
the prefix tokens (CLS, registers). Running all blocks once and normalising
each requested block's output gives the same numbers for every layer at the
cost of one pass.
"""

from __future__ import annotations

import importlib
import math
import types
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from vitlocal.errors import ConfigError, CorruptFileError
from vitlocal.models.registry import ModelSpec, block_indices, grid_size, register_custom_archs
from vitlocal.models.weights import ensure_weights

PatchFeatures = dict[int, torch.Tensor]


def build_model(spec: ModelSpec, weights_dir: str | Path, *, dynamic_img_size: bool = False) -> nn.Module:
    """timm model for ``spec`` with its weights loaded (strictly), on CPU, in eval mode.

    ``dynamic_img_size=True`` interpolates the position embedding to the
    input's patch grid at run time (whole-frame experiments, small inputs); at
    the native size it changes nothing. A timm checkpoint stored at another
    grid (DINOv2: 37x37) is kept beside the model and every other grid is
    resampled from it, once.
    """
    if spec.factory:  # a user's module (models/factory.py): it loads its own weights
        from vitlocal.models.factory import call_factory

        return call_factory(spec, dynamic_img_size=dynamic_img_size)
    register_custom_archs()
    kwargs = dict(spec.model_kwargs)
    if dynamic_img_size:
        kwargs["dynamic_img_size"] = True
    if spec.weights == "random":
        with torch.random.fork_rng(devices=[]):  # seeded init, global RNG state untouched
            torch.manual_seed(spec.seed)
            model = _create(spec, spec.arch, kwargs, pretrained=False)
    elif spec.checkpoint_format == "timm":
        # pretrained=True with a local file runs timm's own checkpoint filter
        # (e.g. resampling DINOv2's 37x37 position embedding to 16x16) and a strict load.
        path = ensure_weights(spec, weights_dir)
        model = _create(
            spec, spec.pretrained_tag or spec.arch, kwargs, pretrained=True, pretrained_cfg_overlay={"file": str(path)}
        )
        if dynamic_img_size:
            _keep_checkpoint_pos_embed(model, checkpoint_pos_embed(path), path)
    else:
        path = ensure_weights(spec, weights_dir)
        model = _create(spec, spec.arch, kwargs, pretrained=False)
        model.load_state_dict(_converted_state_dict(spec, path, model), strict=True)
    return model.eval()


def _create(spec: ModelSpec, name: str, kwargs: Mapping[str, Any], **load: Any) -> nn.Module:
    import timm

    try:
        return timm.create_model(name, **load, **kwargs)
    except TypeError as err:
        raise ConfigError(f"model {spec.key!r}: arch {spec.arch!r} rejects model kwargs {dict(kwargs)}: {err}") from err


def checkpoint_pos_embed(path: Path) -> torch.Tensor | None:
    """``pos_embed`` as stored in a timm-layout checkpoint, before timm resamples it to the load size."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            return fh.get_tensor("pos_embed") if "pos_embed" in fh.keys() else None
    state = read_checkpoint(path)
    for key in ("model", "state_dict"):  # the wrappers timm's checkpoint filter unwraps
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    table = state.get("pos_embed") if isinstance(state, Mapping) else None
    return table if isinstance(table, torch.Tensor) else None


def _keep_checkpoint_pos_embed(model: nn.Module, table: torch.Tensor | None, path: Path) -> None:
    """Keep the checkpoint's own position table beside ``model`` when the load size resampled it.

    timm's loader shrinks e.g. DINOv2's 37x37 table to the 16x16 of a 224-px
    build; resampling every other grid from that copy would interpolate twice,
    once lossily. Inputs of another grid then get the table resampled once,
    from the checkpoint's grid (``_pos_embed_from_checkpoint``).
    """
    if table is None or getattr(model, "pos_embed", None) is None:
        return
    prefix = 0 if model.no_embed_class else int(model.num_prefix_tokens)
    side = math.isqrt(max(table.shape[1] - prefix, 0)) if table.ndim == 3 else 0
    if table.ndim != 3 or side * side != table.shape[1] - prefix or table.shape[2] != model.pos_embed.shape[2]:
        raise CorruptFileError(
            f"{path}: pos_embed of shape {tuple(table.shape)} is not {prefix} prefix entries + a square grid "
            f"of width {model.pos_embed.shape[2]}, as the model needs"
        )
    if (side, side) == tuple(model.patch_embed.grid_size):
        return  # loaded as stored: the model's own table is the checkpoint's
    model.register_buffer("checkpoint_pos_embed", table.detach().to(model.pos_embed.dtype).clone(), persistent=False)
    model.checkpoint_grid = (side, side)
    model._pos_embed = types.MethodType(_pos_embed_from_checkpoint, model)


def _pos_embed_from_checkpoint(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm's ``VisionTransformer._pos_embed`` (dynamic size), taking other grids from the checkpoint's table."""
    batch, h, w, dim = x.shape
    prefix = 0 if self.no_embed_class else self.num_prefix_tokens
    if (h, w) == tuple(self.patch_embed.grid_size):
        pos_embed = self.pos_embed
    else:
        pos_embed = resample_abs_pos_embed(self.checkpoint_pos_embed, new_size=(h, w),
                                           old_size=self.checkpoint_grid, num_prefix_tokens=prefix)
    x = x.view(batch, -1, dim)
    to_cat = [t.expand(batch, -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
    if self.no_embed_class:
        x = x + pos_embed
        return self.pos_drop(torch.cat(to_cat + [x], dim=1) if to_cat else x)
    x = torch.cat(to_cat + [x], dim=1) if to_cat else x
    return self.pos_drop(x + pos_embed)


def read_checkpoint(path: Path) -> Any:
    """Object stored in a checkpoint file (safetensors dict, or what the torch pickle holds).

    Pickles go through ``checkpoint_io.load_checkpoint``: ``weights_only``
    first; official files that also pickle their training config (SimMIM's
    yacs ``CfgNode``, argparse objects) load with inert stand-ins for those
    classes, never importing or running the code a pickle names.
    """
    from vitlocal.models.checkpoint_io import load_checkpoint

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return load_checkpoint(path)
    except Exception as err:  # a broken pickle can fail with almost any exception type
        raise CorruptFileError(f"cannot read checkpoint {path}: {err}") from err


def _converted_state_dict(spec: ModelSpec, path: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """Official checkpoint -> timm state dict via ``vitlocal.models.convert.CONVERTERS`` (which unwrap it)."""
    converters = importlib.import_module("vitlocal.models.convert").CONVERTERS
    if spec.checkpoint_format not in converters:
        raise ConfigError(
            f"model {spec.key!r}: no converter for checkpoint_format {spec.checkpoint_format!r} "
            f"(available: {sorted(converters)})"
        )
    return converters[spec.checkpoint_format](read_checkpoint(path), model)


class FeatureExtractor(nn.Module):
    """A ViT that returns normalised patch (and CLS) tokens of any set of blocks."""

    def __init__(self, model: nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        self.model = model.eval()
        self.spec = spec
        self.depth = len(model.blocks)
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        self.has_cls = getattr(model, "cls_token", None) is not None
        self.dynamic_img_size = bool(getattr(model, "dynamic_img_size", False))
        built = {
            "patch_size": int(model.patch_embed.patch_size[0]),
            "num_prefix_tokens": self.num_prefix_tokens,
            "depth": self.depth,
        }
        stale = {name: (getattr(spec, name), got) for name, got in built.items() if getattr(spec, name) != got}
        if stale:
            raise ConfigError(f"model {spec.key!r}: spec disagrees with the built model (spec, model): {stale}")

    def check_layers(self, layers: Iterable[int]) -> list[int]:
        """Sorted unique 1-based block indices; raises on anything outside 1..depth."""
        return block_indices(self.spec, self.depth, layers)

    def check_input(self, x: torch.Tensor) -> tuple[int, int]:
        """Patch grid of ``x``; raises if the model cannot take this size."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ConfigError(f"model {self.spec.key!r}: expected a (B, 3, H, W) batch, got shape {tuple(x.shape)}")
        gh, gw = grid_size(self.spec, x.shape[-2:])
        native = tuple(self.model.patch_embed.img_size)
        if not self.dynamic_img_size and tuple(x.shape[-2:]) != native:
            raise ConfigError(
                f"model {self.spec.key!r} was built for {native[0]}x{native[1]} inputs, got "
                f"{x.shape[-2]}x{x.shape[-1]}; build it with dynamic_img_size=True to interpolate "
                "the position embedding"
            )
        return gh, gw

    @torch.no_grad()
    def forward_layers(
        self, x: torch.Tensor, layers: Iterable[int]
    ) -> tuple[PatchFeatures, PatchFeatures | None]:
        """Normalised tokens of blocks ``layers`` (1-based) from one pass over ``x``.

        ``x``: (B, 3, H, W), already normalised with ``spec.mean``/``spec.std``.
        Returns ``patch[layer]`` (B, gh*gw, C) in row-major grid order, and
        ``cls[layer]`` (B, C), or ``None`` for models without a CLS token.
        Every token went through ``model.norm``.
        """
        self.check_input(x)
        wanted = self.check_layers(layers)
        if callable(getattr(self.model, "forward_intermediates", None)):
            tokens = self._tokens_intermediates(x, wanted)
        else:
            tokens = self._tokens_hooks(x, wanted)
        patch = {layer: t[:, self.num_prefix_tokens :] for layer, t in tokens.items()}
        cls = {layer: t[:, 0] for layer, t in tokens.items()} if self.has_cls else None
        return patch, cls

    def forward(self, x: torch.Tensor, layers: Iterable[int]) -> tuple[PatchFeatures, PatchFeatures | None]:
        return self.forward_layers(x, layers)

    def _tokens_intermediates(self, x: torch.Tensor, layers: list[int]) -> dict[int, torch.Tensor]:
        """Full (prefix + patch) normalised sequences via timm's ``forward_intermediates``."""
        outs = self.model.forward_intermediates(
            x,
            indices=[layer - 1 for layer in layers],
            norm=True,
            output_fmt="NLC",
            intermediates_only=True,
            return_prefix_tokens=True,
            stop_early=True,
        )
        tokens = {}
        for layer, out in zip(layers, outs):
            patch, prefix = out if isinstance(out, tuple) else (out, None)
            tokens[layer] = patch if prefix is None else torch.cat([prefix, patch], dim=1)
        return tokens

    def _tokens_hooks(self, x: torch.Tensor, layers: list[int]) -> dict[int, torch.Tensor]:
        """Fallback for architectures without ``forward_intermediates``: hooks on the blocks."""
        captured: dict[int, torch.Tensor] = {}
        handles = [
            self.model.blocks[layer - 1].register_forward_hook(
                lambda _m, _in, out, layer=layer: captured.__setitem__(layer, out)
            )
            for layer in layers
        ]
        try:
            self.model.forward_features(x)
        finally:
            for handle in handles:
                handle.remove()
        return {layer: self.model.norm(captured[layer]) for layer in layers}


def build_extractor(
    spec: ModelSpec, weights_dir: str | Path, device: str | torch.device = "cpu", *, dynamic_img_size: bool = False
) -> FeatureExtractor:
    """Ready-to-use extractor (eval mode, on ``device``) for ``spec``; never downloads."""
    model = build_model(spec, weights_dir, dynamic_img_size=dynamic_img_size)
    if spec.factory:
        from vitlocal.models.factory import FactoryExtractor

        return FactoryExtractor(model, spec, dynamic_img_size=dynamic_img_size).to(device).eval()
    return FeatureExtractor(model, spec).to(device).eval()
