"""Model registry: built-in facts, config resolution and its errors."""

from __future__ import annotations

import pytest
from timm.models import get_pretrained_cfg

from vitlocal.errors import ConfigError
from vitlocal.models.registry import (MODELS, STRUCTURAL, ModelSpec, demo_variant, derived_facts, describe_arch,
                                     grid_size, resolve)

PAPER_KEYS = {"supervised", "dino", "dinov2", "mae", "simmim", "ibot", "scalemae", "mae_decoder"}
DVT_KEYS = {"dinov2_reg4", "deit3", "clip", "eva02"}


def test_all_study_models_are_registered():
    assert PAPER_KEYS | DVT_KEYS <= set(MODELS)


@pytest.mark.parametrize("key", sorted(MODELS))
def test_builtin_facts_match_the_architecture(key):
    spec = MODELS[key]
    facts = describe_arch(spec.arch, spec.model_kwargs)
    assert {name: getattr(spec, name) for name in STRUCTURAL} == facts


#: img_size in patches (the demo's 3x3 grid; 4x4), width, depth, and keys that change no fact.
RESIZES = [{"img_size": 3, "embed_dim": 48, "depth": 12, "num_heads": 3}, {"img_size": 4, "depth": 2},
           {"embed_dim": 96, "num_heads": 4, "mlp_ratio": 2.0}]


@pytest.mark.parametrize("key", sorted(MODELS))
@pytest.mark.parametrize("resize", RESIZES, ids=["demo", "shallow", "wide"])
def test_resized_builtin_facts_without_a_build_match_the_built_model(key, resize):
    """The Snakefile's shortcut (derived_facts) gives what timm's built model says, or declines."""
    spec = MODELS[key]
    if "img_size" in resize:
        resize = {**resize, "img_size": resize["img_size"] * spec.patch_size}
    derived = derived_facts(spec, resize)
    assert derived is not None
    assert derived == describe_arch(spec.arch, {**spec.model_kwargs, **resize})
    assert resolve(key, {"model_kwargs": resize}).depth == derived["depth"]


def test_facts_shortcut_declines_what_it_cannot_know():
    dino = MODELS["dino"]
    assert derived_facts(dino, {"patch_size": 8}) is None      # changes the grid
    assert derived_facts(dino, {"reg_tokens": 4}) is None      # changes the prefix tokens
    assert derived_facts(dino, {"img_size": None}) is None     # back to the arch's default
    assert derived_facts(dino, {"img_size": (48, 64)}) is None
    assert derived_facts(None, {"depth": 2}) is None           # no built-in to start from
    assert resolve("dino", {"model_kwargs": {"reg_tokens": 4}}).num_prefix_tokens == 5  # built and read instead


@pytest.mark.parametrize("key", sorted(k for k, s in MODELS.items() if s.weights == "timm"))
def test_hub_models_use_timm_source_and_normalisation(key):
    spec = MODELS[key]
    cfg = get_pretrained_cfg(spec.pretrained_tag)
    assert spec.hf_hub_id == cfg.hf_hub_id
    assert spec.mean == pytest.approx(cfg.mean) and spec.std == pytest.approx(cfg.std)
    assert spec.filename == "model.safetensors"


def test_paper_grids_and_prefix_tokens():
    assert MODELS["dinov2"].grid == (16, 16) and MODELS["dinov2"].patch_size == 14
    assert MODELS["dino"].grid == (14, 14)
    assert MODELS["dinov2_reg4"].num_prefix_tokens == 5
    assert (MODELS["scalemae"].embed_dim, MODELS["scalemae"].depth) == (1024, 24)


def test_url_models_take_filename_from_url_and_label_it():
    spec = MODELS["ibot"]
    assert spec.filename == "checkpoint_teacher.pth"
    assert spec.weights_label == "url:checkpoint_teacher.pth"
    assert MODELS["dino"].weights_label == "timm:vit_base_patch16_224.dino"


def test_unknown_model_lists_known_keys():
    with pytest.raises(ConfigError) as err:
        resolve("dinov3")
    assert "'dinov3'" in str(err.value)
    assert all(key in str(err.value) for key in PAPER_KEYS)


def test_unknown_field_is_named():
    with pytest.raises(ConfigError, match=r"\['patchsize'\]"):
        resolve("dino", {"patchsize": 16})


def test_patch_size_contradicting_arch_is_rejected():
    with pytest.raises(ConfigError, match="patch_size=16 contradicts arch 'vit_base_patch14_dinov2'"):
        resolve("dinov2", {"patch_size": 16})
    assert resolve("dinov2", {"patch_size": 14}).patch_size == 14


def test_field_overrides_and_kwargs_merge():
    spec = resolve("dinov2", {"revision": "abc", "sha256": "a" * 64, "model_kwargs": {"img_size": 448}})
    assert spec.revision == "abc" and spec.weights_label == "timm:vit_base_patch14_dinov2.lvd142m@abc"
    assert (spec.input_size, spec.grid) == (448, (32, 32))
    dropped = resolve("dinov2", {"model_kwargs": {"img_size": None}})  # None removes: timm default 518
    assert dropped.input_size == 518 and "img_size" not in dropped.model_kwargs
    assert MODELS["dinov2"].model_kwargs == {"img_size": 224}  # built-in untouched


def test_new_timm_model_from_one_entry():
    spec = resolve("vit_s", {"arch": "vit_small_patch16_224.augreg_in21k"})
    assert (spec.arch, spec.pretrained_tag) == ("vit_small_patch16_224", "vit_small_patch16_224.augreg_in21k")
    assert (spec.patch_size, spec.embed_dim, spec.depth, spec.num_prefix_tokens) == (16, 384, 12, 1)
    assert spec.hf_hub_id == "timm/vit_small_patch16_224.augreg_in21k"
    assert spec.mean == (0.5, 0.5, 0.5)
    default = resolve("vit_s", {"arch": "vit_small_patch16_224"})
    assert default.pretrained_tag == "vit_small_patch16_224.augreg_in21k_ft_in1k"


def test_overriding_arch_of_builtin_rederives_hub_source():
    spec = resolve("dino", {"arch": "vit_small_patch16_224.dino"})
    assert (spec.embed_dim, spec.hf_hub_id) == (384, "timm/vit_small_patch16_224.dino")


def test_bad_new_models_are_config_errors():
    with pytest.raises(ConfigError, match="unknown timm architecture 'not_a_vit'"):
        resolve("x", {"arch": "not_a_vit"})
    with pytest.raises(ConfigError, match="Invalid pretrained tag"):
        resolve("x", {"arch": "vit_small_patch16_224.nope"})
    with pytest.raises(ConfigError, match="rejects model_kwargs"):
        resolve("x", {"arch": "vit_small_patch16_224", "weights": "random", "model_kwargs": {"wings": 2}})


def test_spec_validation():
    with pytest.raises(ConfigError, match="weights='hub'"):
        ModelSpec(key="m", arch="vit_small_patch16_224", weights="hub")
    with pytest.raises(ConfigError, match="not a tag of arch"):
        ModelSpec(key="m", arch="vit_small_patch16_224", pretrained_tag="vit_base_patch16_224.dino")
    with pytest.raises(ConfigError, match="needs a 'url'"):
        ModelSpec(key="m", arch="vit_small_patch16_224", weights="url", checkpoint_format="ibot")
    with pytest.raises(ConfigError, match="64 lowercase hex"):
        resolve("dino", {"sha256": "ABC"})
    with pytest.raises(ConfigError, match="mean must have 3 values"):
        resolve("dino", {"mean": [0.5, 0.5]})
    assert resolve("dino", {"mean": [0.5, 0.5, 0.5]}).mean == (0.5, 0.5, 0.5)


def test_grid_size():
    assert grid_size(MODELS["dino"], (672, 1120)) == (42, 70)
    assert grid_size(MODELS["dinov2"], (224, 224)) == (16, 16)
    with pytest.raises(ConfigError, match="not a positive multiple of patch size 16"):
        grid_size(MODELS["dino"], (224, 230))


def test_random_override_and_demo_variant_keep_layout():
    spec = resolve("dino", {"weights": "random", "seed": 7})
    assert spec.weights_label == "random(seed=7)"
    for key in ("dinov2", "dinov2_reg4", "scalemae"):
        tiny = demo_variant(MODELS[key], seed=3)
        real = MODELS[key]
        assert (tiny.weights, tiny.seed, tiny.embed_dim) == ("random", 3, 48)
        assert (tiny.grid, tiny.num_prefix_tokens, tiny.depth, tiny.mean) == (
            real.grid, real.num_prefix_tokens, real.depth, real.mean
        )


def test_new_weight_source_rederives_file_and_hub_fields():
    mae_url = "https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_base.pth"
    spec = resolve("mae", {"weights": "url", "url": mae_url})
    assert (spec.filename, spec.weights_label) == ("mae_pretrain_vit_base.pth", "url:mae_pretrain_vit_base.pth")
    spec = resolve("supervised", {"pretrained_tag": "vit_base_patch16_224.augreg2_in21k_ft_in1k"})
    assert spec.hf_hub_id == "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k"
    assert spec.arch == "vit_base_patch16_224" and spec.filename == "model.safetensors"
