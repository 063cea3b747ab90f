"""Models: registry of specs, checkpoint files, and the multi-layer feature extractor.

The names below are imported on first use (PEP 562): the registry and the
weights paths, which the Snakefile reads, do not need torch or timm.
"""

import importlib

_SOURCES = {
    "extractor": ("FeatureExtractor", "build_extractor", "build_model", "read_checkpoint"),
    "registry": ("MODELS", "ModelSpec", "demo_variant", "describe_arch", "grid_size", "resolve"),
    "weights": ("download", "ensure_weights", "sha256_file", "weights_path"),
}
_MODULE_OF = {name: module for module, names in _SOURCES.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
