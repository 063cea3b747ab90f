"""Any backbone without a wrapper: a model built by a Python factory named in the config.

A ``models:`` entry with a ``factory`` key::

    my_vit: {factory: "my_package.my_module:build", patch_size: 16, input_size: 224,
             mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225], prefix_tokens: 5,
             kwargs: {...}, seed: 0}

``factory`` names a callable returning a ``torch.nn.Module``; ``kwargs`` are
passed to it; it runs under ``torch.manual_seed(seed)`` (global RNG restored
afterwards), so a factory with random weights is reproducible. It loads its own
weights, from a local file: no compute job downloads anything. The facts
(``patch_size``, ``input_size``, ``mean``, ``std``, ``prefix_tokens``: CLS plus
registers) come from the entry or from a ``vitlocal_spec`` dict attribute of
the callable; when both give one they must agree. ``depth`` and ``embed_dim``
are read off the built module (``len(model.blocks)``, ``model.embed_dim``)
unless declared.

Layers are read through one of two contracts, checked when the config is read:

1. timm's ``forward_intermediates(x, indices=[0-based blocks], norm=True,
   output_fmt="NLC", intermediates_only=True, return_prefix_tokens=True,
   stop_early=True)`` (any timm ``VisionTransformer``); the first
   ``prefix_tokens`` tokens (CLS, registers) are dropped.
2. otherwise the minimal contract, DINOv2's
   ``get_intermediate_layers(x, n=[0-based blocks], reshape=False,
   return_class_token=True, norm=True)`` returning, per block, a pair
   ``(patch tokens (B, gh*gw, C) in row-major order with CLS and registers
   already removed and the final norm applied, CLS token (B, C))``.

Any other module is refused with a :class:`ConfigError` naming both contracts.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from vitlocal.errors import ConfigError
from vitlocal.models.registry import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, block_indices, grid_size

INTERMEDIATES, CONTRACT = "forward_intermediates", "get_intermediate_layers"
CONTRACT_TEXT = (
    "a factory model must have timm's forward_intermediates(x, indices, norm, output_fmt='NLC', "
    "intermediates_only, return_prefix_tokens, stop_early) or the minimal contract "
    "get_intermediate_layers(x, n=[0-based blocks], reshape=False, return_class_token=True, norm=True) -> "
    "[(patch tokens (B, gh*gw, C), CLS (B, C)), ...] (DINOv2's signature); see vitlocal/models/factory.py"
)
#: Entry keys: the declared facts, and how the factory is called.
FACTS = ("patch_size", "input_size", "mean", "std", "prefix_tokens")
OPTIONAL = ("depth", "embed_dim")
ENTRY_KEYS = ("factory", *FACTS, *OPTIONAL, "kwargs", "seed", "description")


def load_callable(path: str, key: str = "?") -> Callable[..., nn.Module]:
    """The callable ``"pkg.module:name"``; a ConfigError naming the entry when it cannot be imported."""
    module_name, sep, attr = str(path).partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"model {key!r}: factory {path!r} must be 'package.module:callable'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"model {key!r}: cannot import factory module {module_name!r}: {err}") from err
    try:
        fn = functools.reduce(getattr, attr.split("."), module)
    except AttributeError:
        fn = None
    if not callable(fn):
        raise ConfigError(f"model {key!r}: {module_name!r} has no callable {attr!r}")
    return fn


def reader_of(model: nn.Module, key: str = "?") -> str:
    """Which contract ``model`` offers (``INTERMEDIATES`` first); ConfigError naming both otherwise."""
    if callable(getattr(model, INTERMEDIATES, None)):
        return INTERMEDIATES
    if callable(getattr(model, CONTRACT, None)):
        return CONTRACT
    raise ConfigError(f"model {key!r} ({type(model).__name__}) offers neither layer reader: {CONTRACT_TEXT}")


def call_factory(spec: ModelSpec, *, dynamic_img_size: bool = False) -> nn.Module:
    """The module ``spec.factory`` builds with ``spec.model_kwargs``, seeded by ``spec.seed``, in eval mode."""
    fn = load_callable(spec.factory or "", spec.key)
    kwargs = dict(spec.model_kwargs)
    if dynamic_img_size:
        if "dynamic_img_size" not in inspect.signature(fn).parameters:
            raise ConfigError(
                f"model {spec.key!r}: whole-frame inputs need a factory taking dynamic_img_size=True "
                f"({spec.factory} does not)"
            )
        kwargs["dynamic_img_size"] = True
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        try:
            model = fn(**kwargs)
        except TypeError as err:
            raise ConfigError(f"model {spec.key!r}: factory {spec.factory} rejects kwargs {kwargs}: {err}") from err
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {spec.key!r}: factory {spec.factory} returned {type(model).__name__}, not an nn.Module")
    return model.eval()


@functools.lru_cache(maxsize=32)
def _built_facts(key: str, path: str, kwargs_json: str, seed: int) -> tuple[str, int | None, int | None]:
    """Contract, depth and width of the built module (once per process: the Snakefile resolves often)."""
    probe = ModelSpec(key=key, arch=f"factory:{path}", weights="factory", factory=path,
                      model_kwargs=json.loads(kwargs_json), seed=seed)
    model = call_factory(probe)
    blocks = getattr(model, "blocks", None)
    depth = len(blocks) if isinstance(blocks, (nn.ModuleList, nn.Sequential, list, tuple)) else None
    width = getattr(model, "embed_dim", None)
    return reader_of(model, key), depth, int(width) if isinstance(width, int) else None


def resolve_factory(key: str, entry: Mapping[str, Any]) -> ModelSpec:
    """:class:`ModelSpec` of a factory entry; every fact checked (and the contract) before any job runs."""
    unknown = sorted(set(entry) - set(ENTRY_KEYS))
    if unknown:
        raise ConfigError(f"model {key!r}: unknown factory field(s) {unknown}; valid: {', '.join(ENTRY_KEYS)}")
    path = str(entry["factory"])
    declared = dict(getattr(load_callable(path, key), "vitlocal_spec", {}) or {})
    facts: dict[str, Any] = {}
    for name in (*FACTS, *OPTIONAL):
        if name in entry and name in declared and _norm(entry[name]) != _norm(declared[name]):
            raise ConfigError(
                f"model {key!r}: {name}={entry[name]!r} contradicts {path}.vitlocal_spec ({declared[name]!r})"
            )
        if name in entry or name in declared:
            facts[name] = entry.get(name, declared.get(name))
    missing = [name for name in ("patch_size", "input_size", "prefix_tokens") if name not in facts]
    if missing:
        raise ConfigError(f"model {key!r}: factory entry must declare {missing} (or {path}.vitlocal_spec must)")
    kwargs = dict(entry.get("kwargs") or {})
    seed = int(entry.get("seed", 0))
    _, depth, width = _built_facts(key, path, json.dumps(kwargs, sort_keys=True), seed)
    for name, built in (("depth", depth), ("embed_dim", width)):
        if name in facts and built is not None and int(facts[name]) != built:
            raise ConfigError(f"model {key!r}: {name}={facts[name]} but the built module has {built}")
        facts.setdefault(name, built)
        if facts[name] is None:
            raise ConfigError(f"model {key!r}: cannot read {name} off the module; declare '{name}' in the entry")
    return ModelSpec(
        key=key, arch=f"factory:{path}", weights="factory", factory=path,
        patch_size=int(facts["patch_size"]), input_size=int(facts["input_size"]),
        num_prefix_tokens=int(facts["prefix_tokens"]), embed_dim=int(facts["embed_dim"]), depth=int(facts["depth"]),
        mean=tuple(facts.get("mean", IMAGENET_MEAN)), std=tuple(facts.get("std", IMAGENET_STD)),
        model_kwargs=kwargs, seed=seed, description=str(entry.get("description", f"factory {path}")),
    )


def _norm(value: Any) -> Any:
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else value


class FactoryExtractor(nn.Module):
    """``FeatureExtractor``'s interface (``forward_layers``, ``depth``, ``spec``, ...) over either contract."""

    def __init__(self, model: nn.Module, spec: ModelSpec, *, dynamic_img_size: bool = False) -> None:
        super().__init__()
        self.model = model.eval()
        self.spec = spec
        self.depth = spec.depth
        self.num_prefix_tokens = spec.num_prefix_tokens
        self.reader = reader_of(model, spec.key)
        # The minimal contract (DINOv2) interpolates its position embedding itself.
        self.dynamic_img_size = dynamic_img_size or self.reader == CONTRACT
        self.has_cls = (getattr(model, "cls_token", None) is not None if hasattr(model, "cls_token")
                        else spec.num_prefix_tokens > 0)

    def check_layers(self, layers: Iterable[int]) -> list[int]:
        """Sorted unique 1-based block indices; raises on anything outside 1..depth."""
        return block_indices(self.spec, self.depth, layers)

    def check_input(self, x: torch.Tensor) -> tuple[int, int]:
        """Patch grid of ``x``; the native size only unless the model interpolates its position embedding."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ConfigError(f"model {self.spec.key!r}: expected a (B, 3, H, W) batch, got shape {tuple(x.shape)}")
        grid = grid_size(self.spec, x.shape[-2:])
        size = self.spec.input_size
        if not self.dynamic_img_size and tuple(x.shape[-2:]) != (size, size):
            raise ConfigError(f"model {self.spec.key!r} takes {size}x{size} inputs, got {x.shape[-2]}x{x.shape[-1]}")
        return grid

    @torch.no_grad()
    def forward_layers(self, x: torch.Tensor, layers: Iterable[int]):
        """``(patch[layer] (B, gh*gw, C), cls[layer] (B, C) or None)`` as ``FeatureExtractor.forward_layers``."""
        gh, gw = self.check_input(x)
        wanted = self.check_layers(layers)
        indices = [layer - 1 for layer in wanted]
        if self.reader == INTERMEDIATES:
            outs = self.model.forward_intermediates(
                x, indices=indices, norm=True, output_fmt="NLC", intermediates_only=True,
                return_prefix_tokens=True, stop_early=True,
            )
            pairs = []
            for out in outs:
                patch, prefix = out if isinstance(out, tuple) else (out, None)
                tokens = patch if prefix is None else torch.cat([prefix, patch], dim=1)
                pairs.append((tokens[:, self.num_prefix_tokens:], tokens[:, 0] if self.has_cls else None))
        else:
            outs = self.model.get_intermediate_layers(x, n=indices, reshape=False, return_class_token=True, norm=True)
            pairs = [(out[0], out[1] if self.has_cls else None) for out in outs]
        if len(pairs) != len(wanted):
            raise ConfigError(f"model {self.spec.key!r}: asked for {len(wanted)} layers, got {len(pairs)}; {CONTRACT_TEXT}")
        for patch, _ in pairs:
            if patch.ndim != 3 or patch.shape[:2] != (x.shape[0], gh * gw):
                raise ConfigError(
                    f"model {self.spec.key!r}: patch tokens of shape {tuple(patch.shape)}, expected "
                    f"({x.shape[0]}, {gh * gw}, C) for a {gh}x{gw} grid; check prefix_tokens "
                    f"({self.num_prefix_tokens}: CLS + registers) and patch_size"
                )
        patch = {layer: p for layer, (p, _) in zip(wanted, pairs)}
        cls = {layer: c for layer, (_, c) in zip(wanted, pairs)} if self.has_cls else None
        return patch, cls

    def forward(self, x: torch.Tensor, layers: Iterable[int]):
        return self.forward_layers(x, layers)
