"""Map official checkpoints that timm does not ship onto timm modules.

Each converter takes the object ``torch.load`` returned for an official
release file and the target module, and returns a state dict that loads into
that module with ``strict=True``. Conversion is strict in both directions:
every checkpoint tensor is either mapped or in a documented drop list (any
other key is an error), and every tensor the module expects must be produced
with the expected shape. A wrong or truncated file therefore fails here, with
the offending keys named, instead of silently loading half a model.

| format        | official file                                   | target (see ``archs``)            |
|---------------|-------------------------------------------------|-----------------------------------|
| ``simmim``    | ``simmim_pretrain__vit_base__img224__800ep.pth`` | ``simmim_vit_base_patch16_224``   |
| ``ibot``      | iBOT ViT-B/16 ``checkpoint_teacher.pth``         | ``vit_base_patch16_224``          |
| ``scalemae``  | ``scalemae-vitlarge-800.pth``                    | ``scalemae_vit_large_patch16``    |
| ``mae_decoder`` | ``mae_visualize_vit_base.pth``                 | ``mae_vit_base_patch16_dec512d8b`` |
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn
from timm.models.beit import gen_relative_position_index

from vitlocal.errors import CorruptFileError

__all__ = [
    "CONVERTERS",
    "convert_ibot",
    "convert_mae_decoder",
    "convert_scalemae",
    "convert_simmim",
]

StateDict = dict[str, torch.Tensor]
Converter = Callable[[Mapping[str, Any], nn.Module], StateDict]

# Keys of the official files that the feature models do not use, by format.
SIMMIM_DROPPED_PREFIXES = (
    "decoder.",  # 1x1 conv + PixelShuffle pixel head of the SimMIM wrapper
    "encoder.mask_token",  # learned [MASK] embedding, only used for masked inputs
)
IBOT_DROPPED_PREFIXES = (
    "head.",  # iBOT projection heads (DINO-style MLP, last_layer, last_layer2)
    "masked_embed",  # learned [MASK] embedding of the MIM branch
)
SCALEMAE_DROPPED_PREFIXES = (
    "pos_embed",  # fixed GSD-free sin-cos table; the encoder recomputes it from the GSD
    "decoder_embed.",
    "decoder_pos_embed",
    "decoder_blocks.",
    "decoder_norm.",
    "mask_token",  # also matches mask_token_decoder
    "pos_emb_projection.",
    "fpn.",
    "fcn.",
    "fcn_high.",
    "fcn_low.",
)


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------
def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(torch.is_tensor(v) for v in obj.values())


def unwrap_checkpoint(checkpoint: Mapping[str, Any], wrapper_keys: Iterable[str], fmt: str) -> StateDict:
    """Return the state dict stored under the first present ``wrapper_keys``, or ``checkpoint`` itself.

    Official releases wrap the weights (``{'model': ...}``, ``{'state_dict': ...}``,
    ``{'teacher': ...}``) next to optimiser state and arguments.
    """
    wrapper_keys = tuple(wrapper_keys)
    for key in wrapper_keys:
        inner = checkpoint.get(key) if isinstance(checkpoint, Mapping) else None
        if inner is not None:
            if not _is_state_dict(inner):
                raise CorruptFileError(f"{fmt} checkpoint: entry {key!r} is not a non-empty dict of tensors")
            return dict(inner)
    if _is_state_dict(checkpoint):
        return dict(checkpoint)
    found = sorted(checkpoint)[:10] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
    raise CorruptFileError(
        f"{fmt} checkpoint: expected a state dict or one wrapped under {list(wrapper_keys)}, found {found}"
    )


def strip_prefix(state_dict: StateDict, prefix: str) -> StateDict:
    """Remove ``prefix`` from every key that has it (others unchanged)."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def drop_keys(state_dict: StateDict, prefixes: Iterable[str]) -> StateDict:
    """Remove every key starting with one of ``prefixes``."""
    prefixes = tuple(prefixes)
    return {k: v for k, v in state_dict.items() if not k.startswith(prefixes)}


def _submodule_or_none(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def check_matches_model(state_dict: StateDict, model: nn.Module, fmt: str) -> StateDict:
    """Raise unless ``state_dict`` has exactly the module's keys with the module's shapes."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(state_dict))
        if state_dict[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} keys (first: {missing[:5]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unmapped checkpoint keys (first: {unexpected[:5]})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches (first: {mismatched[:3]})")
    if problems:
        raise CorruptFileError(
            f"{fmt} checkpoint does not fit {type(model).__name__}: " + "; ".join(problems)
            + ". Check that the file is the official release and the model kwargs match it."
        )
    return state_dict


# --------------------------------------------------------------------------
# Converters
# --------------------------------------------------------------------------
def convert_simmim(checkpoint: Mapping[str, Any], model: nn.Module) -> StateDict:
    """SimMIM ``{'model': {'encoder.*', 'decoder.*'}}`` -> timm ``Beit`` (shared rel-pos bias).

    Beit's parameter names equal SimMIM's encoder names once ``encoder.`` is
    stripped (``rel_pos_bias.relative_position_bias_table``, ``blocks.N.gamma_1``,
    ``attn.q_bias``/``v_bias``, ``norm``). ``relative_position_index`` buffers
    are not parameters: each is checked against the index timm computes.
    """
    sd = unwrap_checkpoint(checkpoint, ("model",), "SimMIM")
    foreign = sorted(k for k in sd if not k.startswith(("encoder.", "decoder.")))
    if foreign:
        raise CorruptFileError(f"SimMIM checkpoint: keys outside 'encoder.'/'decoder.': {foreign[:5]}")
    sd = strip_prefix(drop_keys(sd, SIMMIM_DROPPED_PREFIXES), "encoder.")
    for key in [k for k in sd if k.endswith("relative_position_index")]:
        index = sd.pop(key)
        module = _submodule_or_none(model, key.rsplit(".", 1)[0])
        if module is None or not hasattr(module, "window_size"):
            raise CorruptFileError(
                f"SimMIM checkpoint: {key} has no relative position bias to belong to in "
                f"{type(model).__name__} (does the model use the shared relative position bias?)"
            )
        reference = gen_relative_position_index(tuple(module.window_size))
        if index.shape != reference.shape or not torch.equal(index.long().cpu(), reference):
            raise CorruptFileError(
                f"SimMIM checkpoint: {key} differs from the relative position index of a "
                f"{tuple(module.window_size)} patch grid"
            )
    return check_matches_model(sd, model, "SimMIM")


def convert_ibot(checkpoint: Mapping[str, Any], model: nn.Module) -> StateDict:
    """iBOT teacher (``{'state_dict'|'teacher': ...}``) -> timm ``VisionTransformer``.

    The released ``checkpoint_teacher.pth`` holds the bare backbone under
    ``state_dict``; the full ``checkpoint.pth`` holds ``teacher`` with
    ``backbone.``/``head.`` (possibly behind ``module.``). The DINO-style
    backbone names are timm's.
    """
    sd = unwrap_checkpoint(checkpoint, ("teacher", "state_dict"), "iBOT")
    sd = strip_prefix(strip_prefix(sd, "module."), "backbone.")
    sd = drop_keys(sd, IBOT_DROPPED_PREFIXES)
    return check_matches_model(sd, model, "iBOT")


def convert_scalemae(checkpoint: Mapping[str, Any], model: nn.Module) -> StateDict:
    """Scale-MAE pretraining ``{'model': ...}`` -> ``ScaleMaeVisionTransformer``.

    Keeps the encoder (``cls_token``, ``patch_embed``, ``blocks``, ``norm``,
    timm names) and drops the decoder side (decoder blocks, FPN/FCN heads, mask
    tokens) and the fixed ``pos_embed`` table, which the official forward
    never reads: it recomputes the embedding from the GSD.
    """
    sd = unwrap_checkpoint(checkpoint, ("model",), "Scale-MAE")
    sd = drop_keys(sd, SCALEMAE_DROPPED_PREFIXES)
    return check_matches_model(sd, model, "Scale-MAE")


def convert_mae_decoder(checkpoint: Mapping[str, Any], model: nn.Module) -> StateDict:
    """MAE ``{'model': ...}`` (encoder + decoder) -> ``MaeWithDecoder``: every key kept, names unchanged."""
    sd = unwrap_checkpoint(checkpoint, ("model",), "MAE")
    return check_matches_model(sd, model, "MAE")


CONVERTERS: dict[str, Converter] = {
    "simmim": convert_simmim,
    "ibot": convert_ibot,
    "scalemae": convert_scalemae,
    "mae_decoder": convert_mae_decoder,
}
