"""Model registry: the one place that knows each model.

A :class:`ModelSpec` says which architecture to build (a timm model name), where
its weights come from (a timm hub tag, an official checkpoint URL, or a seeded
random init) and the facts downstream code needs without building the model
(patch size, token grid, prefix tokens, width, depth, normalisation).

``resolve(key, overrides)`` turns a config entry into a spec: a built-in key
with field overrides, or a new key whose overrides name at least an ``arch``
(any timm ViT, optionally with its pretrained tag: ``"vit_small_patch16_224.augreg_in21k"``).
Architecture facts (patch size, input size, prefix tokens, width, depth) are
never configured independently: they are read off the architecture, and an
override that disagrees with it is a :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import urlparse

from vitlocal.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

WEIGHT_SOURCES = ("timm", "url", "random", "factory")
CHECKPOINT_FORMATS = ("timm", "simmim", "ibot", "scalemae", "mae_decoder")
HUB_FILENAME = "model.safetensors"
#: Facts about the architecture: derived from it, an override may only agree.
STRUCTURAL = ("patch_size", "input_size", "num_prefix_tokens", "embed_dim", "depth")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build one model and to interpret its tokens.

    ``weights``: ``"timm"`` (``pretrained_tag`` fetched from the Hugging Face hub
    ``hf_hub_id`` at ``revision``), ``"url"`` (official checkpoint at ``url``,
    converted from ``checkpoint_format``) or ``"random"`` (init seeded by ``seed``).
    ``sha256=None`` means the checksum is unknown; the download marker records
    the one actually received. ``revision=None`` means the hub's default branch.
    """

    key: str
    arch: str
    weights: str = "timm"
    pretrained_tag: str | None = None
    url: str | None = None
    hf_hub_id: str | None = None
    revision: str | None = None
    filename: str | None = None
    sha256: str | None = None
    checkpoint_format: str = "timm"
    patch_size: int = 16
    input_size: int = 224
    num_prefix_tokens: int = 1
    embed_dim: int = 768
    depth: int = 12
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    description: str = ""
    #: ``"pkg.module:callable"`` building the model (``weights="factory"``); see ``models/factory.py``.
    factory: str | None = None

    def __post_init__(self) -> None:
        _set = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        _set("model_kwargs", dict(self.model_kwargs))
        _set("mean", _triple(self.key, "mean", self.mean))
        _set("std", _triple(self.key, "std", self.std))
        if self.weights not in WEIGHT_SOURCES:
            raise ConfigError(f"model {self.key!r}: weights={self.weights!r}, expected one of {WEIGHT_SOURCES}")
        if self.checkpoint_format not in CHECKPOINT_FORMATS:
            raise ConfigError(
                f"model {self.key!r}: checkpoint_format={self.checkpoint_format!r}, "
                f"expected one of {CHECKPOINT_FORMATS}"
            )
        if self.sha256 is not None and not _SHA256.fullmatch(self.sha256):
            raise ConfigError(f"model {self.key!r}: sha256={self.sha256!r} is not 64 lowercase hex digits")
        if self.input_size % self.patch_size:
            raise ConfigError(
                f"model {self.key!r}: input_size {self.input_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.weights == "timm":
            self._check_timm_source()
            _set("hf_hub_id", self.hf_hub_id or f"timm/{self.pretrained_tag}")
            _set("filename", self.filename or HUB_FILENAME)
        elif self.weights == "url":
            if not self.url:
                raise ConfigError(f"model {self.key!r}: weights='url' needs a 'url'")
            _set("filename", self.filename or urlparse(self.url).path.rsplit("/", 1)[-1])

    def _check_timm_source(self) -> None:
        if not self.pretrained_tag:
            raise ConfigError(f"model {self.key!r}: weights='timm' needs a 'pretrained_tag' (e.g. '{self.arch}.<tag>')")
        if self.pretrained_tag.split(".", 1)[0] != self.arch:
            raise ConfigError(
                f"model {self.key!r}: pretrained_tag {self.pretrained_tag!r} is not a tag of arch {self.arch!r}"
            )
        if self.checkpoint_format != "timm":
            raise ConfigError(
                f"model {self.key!r}: timm hub weights are in timm format, got checkpoint_format="
                f"{self.checkpoint_format!r}"
            )

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid at the native input size (e.g. 14x14, 16x16 for DINOv2 at 224)."""
        return grid_size(self, (self.input_size, self.input_size))

    @property
    def weights_label(self) -> str:
        """Short provenance string: which weights produced a feature file."""
        if self.weights == "random":
            return f"random(seed={self.seed})"
        if self.weights == "factory":
            return f"factory:{self.factory}(seed={self.seed})"
        if self.weights == "timm":
            return f"timm:{self.pretrained_tag}" + (f"@{self.revision}" if self.revision else "")
        return f"url:{self.filename}" + (f"#sha256={self.sha256[:12]}" if self.sha256 else "")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON/YAML-ready) for provenance files."""
        out = dataclasses.asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        out["weights_label"] = self.weights_label
        return out


def _triple(key: str, name: str, value: Any) -> tuple[float, float, float]:
    values = tuple(float(v) for v in value)
    if len(values) != 3:
        raise ConfigError(f"model {key!r}: {name} must have 3 values (RGB), got {list(value)!r}")
    return values  # type: ignore[return-value]


def block_indices(spec: ModelSpec, depth: int, layers) -> list[int]:
    """Sorted unique 1-based block indices of ``layers``; raises on anything outside 1..depth."""
    out = sorted({int(layer) for layer in layers})
    if not out or out[0] < 1 or out[-1] > depth:
        raise ConfigError(f"model {spec.key!r}: layers must be block indices in 1..{depth}, got {list(layers)!r}")
    return out


def grid_size(spec: ModelSpec, input_hw: tuple[int, int]) -> tuple[int, int]:
    """Patch grid ``(gh, gw)`` for an input of ``input_hw`` pixels.

    Raises instead of flooring: a size that is not a multiple of the patch
    size would silently drop border pixels from every feature map.
    """
    h, w = (int(v) for v in input_hw)
    p = spec.patch_size
    if h <= 0 or w <= 0 or h % p or w % p:
        raise ConfigError(f"model {spec.key!r}: input {h}x{w} is not a positive multiple of patch size {p}")
    return h // p, w // p


_FIELDS = tuple(f.name for f in dataclasses.fields(ModelSpec))

MODELS: dict[str, ModelSpec] = {
    spec.key: spec
    for spec in (
        ModelSpec(
            key="supervised",
            arch="vit_base_patch16_224",
            pretrained_tag="vit_base_patch16_224.augreg_in1k",
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            description=(
                "ViT-B/16 supervised on ImageNet-1k only (AugReg). The authors' code used torchvision "
                "vit_b_16 IMAGENET1K_V1; we use timm's ImageNet-1k-only counterpart so every model loads "
                "through one code path, with its own normalisation (0.5/0.5)."
            ),
        ),
        ModelSpec(
            key="dino",
            arch="vit_base_patch16_224",
            pretrained_tag="vit_base_patch16_224.dino",
            description="DINO ViT-B/16 (same weights as dino_vitbase16_pretrain.pth).",
        ),
        ModelSpec(
            key="dinov2",
            arch="vit_base_patch14_dinov2",
            pretrained_tag="vit_base_patch14_dinov2.lvd142m",
            patch_size=14,
            model_kwargs={"img_size": 224},
            description="DINOv2 ViT-B/14 distilled, no registers, built at 224 px -> 16x16 patches.",
        ),
        ModelSpec(
            key="mae",
            arch="vit_base_patch16_224",
            pretrained_tag="vit_base_patch16_224.mae",
            description="MAE ViT-B/16 encoder (same weights as mae_pretrain_vit_base.pth).",
        ),
        ModelSpec(
            key="simmim",
            arch="simmim_vit_base_patch16_224",  # registered by vitlocal.models.archs (timm Beit, SimMIM layout)
            weights="url",
            # Official release is a Google Drive file (SimMIM README, "ViT-Base 800 ep pre-train model":
            # https://drive.google.com/file/d/1dJn6GYkwMIcoP3zqOEyW1_iQfpBi8UOw); this is its direct-download form.
            url="https://drive.usercontent.google.com/download?id=1dJn6GYkwMIcoP3zqOEyW1_iQfpBi8UOw&export=download&confirm=t",
            filename="simmim_pretrain__vit_base__img224__800ep.pth",
            checkpoint_format="simmim",
            description="SimMIM ViT-B/16, 800 epochs on ImageNet-1k (BEiT-style ViT with shared rel. pos. bias).",
        ),
        ModelSpec(
            key="ibot",
            arch="vit_base_patch16_224",
            weights="url",
            url="https://lf3-nlp-opensource.bytetos.com/obj/nlp-opensource/archive/2022/ibot/vitb_16/checkpoint_teacher.pth",
            checkpoint_format="ibot",
            model_kwargs={"num_classes": 0},
            description="iBOT ViT-B/16 teacher, ImageNet-1k.",
        ),
        ModelSpec(
            key="scalemae",
            arch="scalemae_vit_large_patch16",  # registered by vitlocal.models.archs
            weights="url",
            url="https://github.com/bair-climate-initiative/scale-mae/releases/download/base-800/scalemae-vitlarge-800.pth",
            checkpoint_format="scalemae",
            embed_dim=1024,
            depth=24,
            description=(
                "Scale-MAE ViT-L/16, 800 epochs on FMoW-RGB (GSD-aware pos. embedding). ImageNet "
                "normalisation, as the authors' code used for every model."
            ),
        ),
        ModelSpec(
            key="mae_decoder",
            arch="mae_vit_base_patch16_dec512d8b",  # registered by vitlocal.models.archs
            weights="url",
            url="https://dl.fbaipublicfiles.com/mae/visualize/mae_visualize_vit_base.pth",
            checkpoint_format="mae_decoder",
            description="MAE ViT-B/16 encoder + pretrained decoder (visualisation checkpoint), for reconstructions.",
        ),
        ModelSpec(
            key="dinov2_reg4",
            arch="vit_base_patch14_reg4_dinov2",
            pretrained_tag="vit_base_patch14_reg4_dinov2.lvd142m",
            patch_size=14,
            num_prefix_tokens=5,
            model_kwargs={"img_size": 224},
            description="DINOv2 ViT-B/14 with 4 register tokens (DVT set), at 224 px.",
        ),
        ModelSpec(
            key="deit3",
            arch="deit3_base_patch16_224",
            pretrained_tag="deit3_base_patch16_224.fb_in1k",
            description="DeiT-III ViT-B/16 supervised on ImageNet-1k (DVT set).",
        ),
        ModelSpec(
            key="clip",
            arch="vit_base_patch16_clip_224",
            pretrained_tag="vit_base_patch16_clip_224.openai",
            mean=(0.48145466, 0.4578275, 0.40821073),
            std=(0.26862954, 0.26130258, 0.27577711),
            description="OpenAI CLIP ViT-B/16 image tower (DVT set).",
        ),
        ModelSpec(
            key="eva02",
            arch="eva02_base_patch16_clip_224",
            pretrained_tag="eva02_base_patch16_clip_224.merged2b",
            mean=(0.48145466, 0.4578275, 0.40821073),
            std=(0.26862954, 0.26130258, 0.27577711),
            description="EVA02-CLIP ViT-B/16 image tower (DVT set).",
        ),
    )
}


def register_custom_archs() -> None:
    """Import ``vitlocal.models.archs`` (if present) so its timm registrations exist."""
    try:
        importlib.import_module("vitlocal.models.archs")
    except ModuleNotFoundError as err:
        if err.name != "vitlocal.models.archs":
            raise


#: describe_arch's answers by (arch, model_kwargs): the Snakefile resolves each model several times, and
#: a build costs ~0.5 s even on the meta device (timm's weight init runs through torch's Python refs there).
_ARCH_FACTS: dict[str, dict[str, int]] = {}


def describe_arch(arch: str, model_kwargs: Mapping[str, Any] | None = None) -> dict[str, int]:
    """Read the structural facts off a timm architecture (built on the meta device: no memory), once per process."""
    key = json.dumps([arch.split(".", 1)[0], dict(model_kwargs or {})], sort_keys=True, default=str)
    if key not in _ARCH_FACTS:
        _ARCH_FACTS[key] = _build_and_describe(arch, model_kwargs)
    return dict(_ARCH_FACTS[key])


#: model_kwargs whose effect on the facts is known without building the model: the input size, the
#: width, the depth, and what leaves the facts as they are (heads, MLP ratio, MAE's decoder).
SIZE_KWARGS = {"img_size": "input_size", "embed_dim": "embed_dim", "depth": "depth"}
NEUTRAL_KWARGS = frozenset({"num_heads", "mlp_ratio", "drop_path_rate", "decoder_embed_dim", "decoder_depth",
                            "decoder_num_heads"})


def derived_facts(base: "ModelSpec | None", user_kwargs: Mapping[str, Any] | None) -> dict[str, int] | None:
    """A built-in's facts under ``user_kwargs`` that only resize it (no timm import, no build); else None.

    The Snakefile resolves every model before any job: the demo's resized
    built-ins need no timm import (~5 s) there, nor in each cluster job's
    re-parse. Anything else (a new arch, a removed key, patch size, tokens) is
    built and read by :func:`describe_arch`; tests check both agree.
    """
    kwargs = dict(user_kwargs or {})
    if base is None or not kwargs.keys() <= SIZE_KWARGS.keys() | NEUTRAL_KWARGS:
        return None
    if any(not isinstance(kwargs[k], int) or isinstance(kwargs[k], bool) for k in SIZE_KWARGS if k in kwargs):
        return None
    facts = {name: getattr(base, name) for name in STRUCTURAL}
    facts.update({field: kwargs[k] for k, field in SIZE_KWARGS.items() if k in kwargs})
    return facts


def _build_and_describe(arch: str, model_kwargs: Mapping[str, Any] | None) -> dict[str, int]:
    import timm
    import torch

    register_custom_archs()
    name = arch.split(".", 1)[0]
    if not timm.is_model(name):
        raise ConfigError(f"unknown timm architecture {arch!r} (see timm.list_models())")
    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, **dict(model_kwargs or {}))
    except TypeError as err:
        raise ConfigError(f"arch {name!r} rejects model_kwargs {dict(model_kwargs or {})!r}: {err}") from err
    patch_embed = model.patch_embed
    ph, pw = _pair(patch_embed.patch_size)
    ih, iw = _pair(patch_embed.img_size)
    if ph != pw or ih != iw:
        raise ConfigError(f"arch {name!r}: only square patches and inputs are supported, got {ph}x{pw} / {ih}x{iw}")
    return {
        "patch_size": ph,
        "input_size": ih,
        "num_prefix_tokens": int(model.num_prefix_tokens),
        "embed_dim": int(model.embed_dim),
        "depth": len(model.blocks),
    }


def _pair(value: Any) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _timm_source(arch: str) -> dict[str, Any]:
    """Pretrained tag, hub id and normalisation timm records for ``arch`` (optionally ``arch.tag``)."""
    from timm.models import get_pretrained_cfg

    name = arch.split(".", 1)[0]
    try:
        cfg = get_pretrained_cfg(arch)
    except RuntimeError as err:
        raise ConfigError(f"{arch!r}: {err}") from err
    if cfg is None or not cfg.hf_hub_id:
        raise ConfigError(f"timm has no hub weights for {arch!r}; use weights: random or weights: url")
    return {
        "pretrained_tag": f"{name}.{cfg.tag}" if cfg.tag else name,
        "hf_hub_id": cfg.hf_hub_id,
        "mean": tuple(cfg.mean),
        "std": tuple(cfg.std),
    }


def _normalise_overrides(key: str, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    values = dict(overrides or {})
    unknown = sorted(name for name in values if name not in _FIELDS or name == "key")
    if unknown:
        valid = ", ".join(f for f in _FIELDS if f != "key")
        raise ConfigError(f"model {key!r}: unknown field(s) {unknown}; valid fields: {valid}")
    return values


def _merged_kwargs(base: Mapping[str, Any], update: Mapping[str, Any] | None) -> dict[str, Any]:
    """Merge config model_kwargs onto the built-in ones; a ``None`` value removes a key."""
    out = dict(base)
    for k, v in (update or {}).items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


#: The factory specs the workflow's main process checked (JSON), for its job processes: a cluster job
#: reads the Snakefile again (twice under SLURM), and would otherwise import and build every factory
#: model again before its own work (``share_checked_factories``, ``reuse_checked_factories``).
CHECKED_FACTORIES_ENV = "VITLOCAL_CHECKED_FACTORIES"
_checked_factories: dict[str, dict[str, Any]] = {}


def _entry_json(entry: Mapping[str, Any]) -> str:
    return json.dumps(dict(entry), sort_keys=True)


def share_checked_factories(entries: Mapping[str, Mapping[str, Any]]) -> None:
    """Main process: its checked spec of every factory entry of ``entries`` (``models:``), in the environment
    its jobs inherit (local jobs and, through sbatch, cluster jobs)."""
    shared = {key: {"entry": _entry_json(entry), "spec": dataclasses.asdict(resolve(key, entry))}
              for key, entry in entries.items() if entry and "factory" in entry}
    os.environ[CHECKED_FACTORIES_ENV] = json.dumps(shared, sort_keys=True)


def reuse_checked_factories() -> None:
    """Job process: resolve a factory entry to the main process's checked spec while the entry is the same
    (a different entry, or none shared, is resolved, imported and built as usual)."""
    _checked_factories.update(json.loads(os.environ.get(CHECKED_FACTORIES_ENV) or "{}"))


def resolve(key: str, overrides: Mapping[str, Any] | None = None) -> ModelSpec:
    """Spec for ``key``: a built-in with ``overrides`` applied, or a new model defined by them.

    ``model_kwargs`` overrides are merged into the built-in's (``None`` drops a
    key). A new ``arch`` or new ``model_kwargs`` re-derive the architecture
    facts; a new ``arch`` or ``pretrained_tag`` with hub weights re-derives the
    tag (timm's default for the arch unless ``arch`` carries one), hub id and
    normalisation; a new weights source re-derives ``hf_hub_id`` and
    ``filename``; fields given explicitly always win.
    """
    if overrides and "factory" in overrides:  # a user's own module: no timm arch to read facts off
        checked = _checked_factories.get(key)
        if checked is not None and checked["entry"] == _entry_json(overrides):
            return ModelSpec(**{**checked["spec"], "mean": tuple(checked["spec"]["mean"]),
                                "std": tuple(checked["spec"]["std"])})
        from vitlocal.models.factory import resolve_factory

        return resolve_factory(key, overrides)
    if overrides and str(overrides.get("arch", "")).startswith("hf-hub:"):  # timm hub name: its cached config.json
        from vitlocal.models.hub import hub_overrides

        overrides = hub_overrides(key, overrides)
    values = _normalise_overrides(key, overrides)
    base = MODELS.get(key)
    if base is None and "arch" not in values:
        raise ConfigError(
            f"unknown model {key!r}; known models: {', '.join(MODELS)}. "
            "To add a timm model, give at least its 'arch' (e.g. 'vit_small_patch16_224.augreg_in21k')."
        )
    fields: dict[str, Any] = dataclasses.asdict(base) if base is not None else {"key": key, "model_kwargs": {}}
    user_kwargs = values.pop("model_kwargs", None)
    fields["model_kwargs"] = _merged_kwargs(fields["model_kwargs"], user_kwargs)
    checks = {name: values.pop(name) for name in STRUCTURAL if name in values}
    new_arch = "arch" in values and (base is None or values["arch"] != base.arch)
    if "arch" in values and "." in values["arch"]:
        values.setdefault("pretrained_tag", values["arch"])
        values["arch"] = values["arch"].split(".", 1)[0]
    if new_arch:  # the built-in's tag and description describe its old arch
        fields.update(pretrained_tag=None, description=f"{key!r} with arch {values['arch']!r}")
    if values.keys() & {"arch", "pretrained_tag", "weights", "url"}:  # re-derive from the new source
        fields.update(hf_hub_id=None, filename=None)
    fields.update(values)
    if new_arch or user_kwargs is not None:
        derived = None if new_arch else derived_facts(base, user_kwargs)
        fields.update(derived if derived is not None else describe_arch(fields["arch"], fields["model_kwargs"]))
    if fields.get("weights", "timm") == "timm" and (new_arch or "pretrained_tag" in values):
        source = _timm_source(fields["pretrained_tag"] or fields["arch"])
        fields.update({name: v for name, v in source.items() if name not in values})
    for name, wanted in checks.items():
        if wanted != fields[name]:
            raise ConfigError(
                f"model {key!r}: {name}={wanted!r} contradicts arch {fields['arch']!r} "
                f"(which has {name}={fields[name]!r}); change 'arch' or 'model_kwargs' instead"
            )
    return ModelSpec(**fields)


def demo_variant(spec: ModelSpec, seed: int = 0, **model_kwargs: Any) -> ModelSpec:
    """Tiny random-weight stand-in for ``spec``: same arch, patch grid, prefix tokens and depth.

    Used by the demo preset and tests: the whole pipeline runs in seconds on a
    CPU while every layer index and token layout stays as in the real model.
    Width 48 with 3 heads unless ``model_kwargs`` say otherwise.
    """
    kwargs = _merged_kwargs(spec.model_kwargs, {"embed_dim": 48, "num_heads": 3, **model_kwargs})
    return dataclasses.replace(
        spec,
        weights="random",
        seed=seed,
        model_kwargs=kwargs,
        description=f"tiny random stand-in for {spec.key!r}",
        **describe_arch(spec.arch, kwargs),
    )
