"""Models: registry of specs, checkpoint files, and the multi-layer feature extractor."""

from vitlocal.models.extractor import FeatureExtractor, build_extractor, build_model, read_checkpoint
from vitlocal.models.registry import MODELS, ModelSpec, demo_variant, describe_arch, grid_size, resolve
from vitlocal.models.weights import download, ensure_weights, sha256_file, weights_path

__all__ = [
    "MODELS",
    "FeatureExtractor",
    "ModelSpec",
    "build_extractor",
    "build_model",
    "demo_variant",
    "describe_arch",
    "download",
    "ensure_weights",
    "grid_size",
    "read_checkpoint",
    "resolve",
    "sha256_file",
    "weights_path",
]
