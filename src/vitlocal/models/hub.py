"""timm ``hf-hub:`` model names (``arch: "hf-hub:org/repo"``), read from the local Hugging Face cache.

A hub repository saved by timm holds ``config.json`` (the timm
``architecture``, its ``model_args`` and ``pretrained_cfg``: mean, std,
number of classes) and ``model.safetensors``. Resolving the entry reads only
the cached ``config.json`` (``huggingface_hub.try_to_load_from_cache``, no
network): the architecture facts come from the timm architecture it names,
normalisation from its ``pretrained_cfg``. The weights are the repository's
``model.safetensors``, fetched (or copied from the cache) by the
``download_weights`` rule like every timm checkpoint, or placed by hand at
``<weights_dir>/<key>/model.safetensors``; no compute job downloads anything.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from vitlocal.errors import ConfigError

PREFIX = "hf-hub:"


def is_hub_name(arch: Any) -> bool:
    return isinstance(arch, str) and arch.startswith(PREFIX)


def hub_overrides(key: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    """The entry with ``arch: hf-hub:<repo>[@revision]`` replaced by what the cached ``config.json`` says."""
    from huggingface_hub import constants, try_to_load_from_cache

    repo, _, revision = entry["arch"][len(PREFIX):].partition("@")
    revision = entry.get("revision") or revision or None
    path = try_to_load_from_cache(repo, "config.json", revision=revision)
    if not isinstance(path, str):
        raise ConfigError(
            f"model {key!r}: {entry['arch']!r} has no config.json in the local Hugging Face cache "
            f"({constants.HF_HUB_CACHE}); fetch it first (`hf download {repo} config.json model.safetensors`) "
            "or give a timm architecture name as 'arch'"
        )
    try:
        config = json.loads(open(path, encoding="utf-8").read())
        arch = str(config["architecture"])
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"model {key!r}: {path} is not a timm hub config (needs 'architecture'): {err}") from err
    pretrained = dict(config.get("pretrained_cfg") or {})
    kwargs = dict(config.get("model_args") or {})
    if "num_classes" in config:  # the checkpoint's head, so a strict load fits it
        kwargs.setdefault("num_classes", int(config["num_classes"]))
    out = {name: value for name, value in entry.items() if name != "arch"}
    out.update(arch=arch, hf_hub_id=repo, model_kwargs={**kwargs, **dict(entry.get("model_kwargs") or {})})
    out.setdefault("pretrained_tag", arch)
    out.setdefault("description", f"timm hub model {repo} ({arch})")
    if revision:
        out.setdefault("revision", revision)
    for name in ("mean", "std"):
        if name in pretrained:
            out.setdefault(name, list(pretrained[name]))
    return out
