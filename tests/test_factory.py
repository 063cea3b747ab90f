"""Any backbone without a wrapper (issue 22 §1): a factory-built ViT with 4 registers, end to end."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from vitlocal.datasets import cityscapes
from vitlocal.errors import ConfigError
from vitlocal.studies.runner import run_experiment
from vitlocal.features.pipeline import extract_features
from vitlocal.features.store import read_attrs, read_features
from vitlocal.models.extractor import build_extractor
from vitlocal.models import registry
from vitlocal.models.registry import resolve
from vitlocal.synthetic import generate

REG = {"factory": "vitlocal.models.examples:tiny_reg_vit", "input_size": 48, "seed": 9,
       "kwargs": {"img_size": 48, "depth": 4}}
TIMM_REG = {"factory": "vitlocal.models.examples:timm_reg_vit", "patch_size": 16, "input_size": 48,
            "prefix_tokens": 5, "seed": 9, "kwargs": {"img_size": 48, "depth": 4}}


def test_factory_entry_resolves_with_facts_from_the_module():
    spec = resolve("mine", REG)
    assert (spec.patch_size, spec.input_size, spec.num_prefix_tokens, spec.depth, spec.embed_dim) == (16, 48, 5, 4, 48)
    assert spec.mean == (0.5, 0.5, 0.5) and spec.weights == "factory"
    assert spec.weights_label == "factory:vitlocal.models.examples:tiny_reg_vit(seed=9)"


@pytest.mark.parametrize("entry, message", [
    ({**REG, "prefix_tokens": 1}, "contradicts"),                      # the module says 5 (CLS + 4 registers)
    ({**TIMM_REG, "depth": 12}, "depth=12 but the built module has 4"),
    ({k: v for k, v in TIMM_REG.items() if k != "prefix_tokens"}, "must declare ['prefix_tokens']"),
    ({"factory": "vitlocal.models.examples", "patch_size": 16, "input_size": 48, "prefix_tokens": 0}, "pkg"),
    ({**REG, "arch": "vit_tiny_patch16_224"}, "unknown factory field"),
])
def test_bad_factory_entries_stop_at_resolve(entry, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("pkg", "package")):
        resolve("mine", entry)


def test_a_job_process_reuses_the_main_process_checked_factory_spec_for_the_same_entry(monkeypatch):
    """A cluster job reads the Snakefile again: it takes the spec its main process checked (no import,
    no build) while the entry is the same, and resolves any other entry itself; the main process never reuses."""
    monkeypatch.setattr(registry, "_checked_factories", {})
    monkeypatch.delenv(registry.CHECKED_FACTORIES_ENV, raising=False)
    registry.share_checked_factories({"mine": REG, "dino": {"weights": "random"}})
    shared = json.loads(os.environ[registry.CHECKED_FACTORIES_ENV])
    assert list(shared) == ["mine"]  # factory entries only
    # Plant a spec no build of REG gives: only the shared spec can answer with it.
    shared["mine"]["spec"]["description"] = "from the main process"
    monkeypatch.setenv(registry.CHECKED_FACTORIES_ENV, json.dumps(shared))
    fresh = resolve("mine", REG)
    assert fresh.description != "from the main process"  # main process: not reused
    registry.reuse_checked_factories()
    reused = resolve("mine", REG)
    assert reused.description == "from the main process"
    assert dataclasses.replace(reused, description=fresh.description) == fresh  # field by field, tuples included
    assert resolve("mine", {**REG, "seed": 10}).description != "from the main process"  # another entry: resolved
    assert resolve("other", REG).description != "from the main process"  # another key: resolved


def test_a_module_without_either_reader_is_refused_naming_the_contract():
    entry = {"factory": "torch.nn:Linear", "patch_size": 16, "input_size": 48, "prefix_tokens": 0,
             "kwargs": {"in_features": 4, "out_features": 4}, "depth": 1, "embed_dim": 4}
    with pytest.raises(ConfigError, match="get_intermediate_layers.*forward_intermediates|forward_intermediates.*get_intermediate_layers"):
        resolve("linear", entry)


def test_registers_are_dropped_like_cls_on_both_paths():
    """Patch tokens = the final-normed block outputs after CLS + 4 registers, in grid order, for either contract."""
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    timm_ext = build_extractor(resolve("t", TIMM_REG), "unused")
    patch, cls = timm_ext.forward_layers(x, [2, 4])
    with torch.no_grad():
        full = timm_ext.model.norm(_blocks(timm_ext.model, x))
    assert patch[4].shape == (2, 9, 48)
    torch.testing.assert_close(patch[4], full[:, 5:])
    torch.testing.assert_close(cls[4], full[:, 0])
    reg_ext = build_extractor(resolve("r", REG), "unused")
    patch, cls = reg_ext.forward_layers(x, [4])
    model = reg_ext.model
    with torch.no_grad():
        tokens = model._tokens(x)
        for block in model.blocks:
            tokens = block(tokens)
        tokens = model.norm(tokens)
    torch.testing.assert_close(patch[4], tokens[:, 5:])
    torch.testing.assert_close(cls[4], tokens[:, 0])
    # the same seed builds the same weights; another seed others
    again = build_extractor(resolve("r", REG), "unused").forward_layers(x, [4])[0][4]
    other = build_extractor(resolve("r", {**REG, "seed": 10}), "unused").forward_layers(x, [4])[0][4]
    torch.testing.assert_close(again, patch[4])
    assert not torch.allclose(other, patch[4])


def _blocks(model, x):
    """timm ViT tokens after all blocks, before the final norm (written out, not via forward_intermediates)."""
    tokens = model._pos_embed(model.patch_embed(x))
    tokens = model.norm_pre(model.patch_drop(tokens))
    for block in model.blocks:
        tokens = block(tokens)
    return tokens


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """Factory model -> Cityscapes train/val feature files of the tiny synthetic layout."""
    tmp = tmp_path_factory.mktemp("factory")
    root = generate("cityscapes", tmp / "cityscapes", size="tiny", seed=0)
    manifests = {"train": cityscapes.list_images(root, "train").head(4), "val": cityscapes.list_images(root, "val").head(3)}
    paths = {}
    for split, table in manifests.items():
        table.to_csv(tmp / f"{split}.csv", index=False)
        paths[split] = tmp / f"{split}.parquet"
        extract_features(dataset="cityscapes", root=root, manifest=table, subset=split, out_path=paths[split],
                         preset="test", weights_dir=tmp / "weights", device="cpu", batch_size=16, dtype="float32",
                         autocast="none", seed=0, data_source="synthetic", progress=False, model_key="tiny_reg4",
                         model_overrides=REG, layers=[2, 4], variant="clean")
    return {"root": root, "tmp": tmp, **paths, "train_manifest": tmp / "train.csv", "val_manifest": tmp / "val.csv"}


def test_factory_model_goes_through_extraction_a_knn_experiment_and_the_card(extracted):
    meta, layers = read_features(extracted["val"])
    attrs = read_attrs(extracted["val"])
    assert attrs["weights"].startswith("factory:") and sorted(layers) == [2, 4]
    assert layers[4].shape == (len(meta), 48)
    assert meta.groupby(["sample_id", "tile_id"]).size().eq(9).all()  # 3x3 patches: the 5 prefix tokens dropped
    config = {"seed": 0, "device": "cpu", "variance": {"removed_dims": [0, 10]}, "card": {"resamples": 200}}
    inputs = {"train": str(extracted["train"]), "val": str(extracted["val"]), "val_manifest": str(extracted["val_manifest"]),
              "train_manifest": str(extracted["train_manifest"])}
    params = {"roots": {"cityscapes": str(extracted["root"])}, "layers": [2, 4]}
    units: list[pd.DataFrame] = []
    knn = run_experiment("layerwise", "tiny_reg4", inputs, params, config, units)
    miou = knn[(knn["metric"] == "miou") & (knn["probe"] == "knn")]
    assert sorted(miou["layer"]) == [2, 4] and miou["value"].between(0, 1).all()
    card = run_experiment("card", "tiny_reg4", inputs, params, config)
    raw = card[(card["probe"] == "knn") & (card["level"] == "raw")].iloc[0]
    assert raw["value"] == pytest.approx(miou.loc[miou["layer"] == 4, "value"].iloc[0])  # the same probe, same layer
    assert raw["lo"] <= raw["value"] <= raw["hi"] or np.isclose(raw["lo"], raw["hi"])
    assert set(card["metric"]) >= {"miou", "variance_share_top10", "high_norm_share", "position_r2"}
    linear = card[card["probe"] == "linear"].iloc[0]
    assert linear["level"] == "raw" and linear["lo"] <= linear["hi"]
    tmp = extracted["tmp"]
    for name, rows in (("layerwise", knn), ("card", card)):
        rows.to_csv(tmp / f"{name}.csv", index=False)
    from vitlocal.evaluation.units import write_units
    from vitlocal.studies.card.figures import write_card_files

    write_units(units, tmp / "layerwise.units.parquet")
    out = {s: tmp / f"card.{s}" for s in ("pdf", "png", "json", "csv")}
    shown = write_card_files([tmp / "card.csv", tmp / "layerwise.csv", tmp / "layerwise.units.parquet"], "tiny_reg4",
                             ["tiny_reg4"], out, resamples=200, seed=0)
    assert all(path.stat().st_size > 0 for path in out.values())
    record = json.loads(out["json"].read_text())
    assert record["model"] == "tiny_reg4" and record["demo"]
    assert "best k-NN layer" in set(shown["name"]) and len(pd.read_csv(out["csv"])) == len(shown)
    layers = shown[shown["section"] == "layers"]  # each layer's k-NN mIoU with its interval from the sidecar
    assert len(layers) == 2 and ((layers["lo"] <= layers["value"]) & (layers["value"] <= layers["hi"])).all()


def _cached_repo(cache, repo: str, config: dict) -> None:
    """A Hugging Face cache entry as huggingface_hub lays it out: refs/main -> snapshots/<rev>/config.json."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    snapshot = folder / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(config))


def test_hf_hub_name_resolves_from_the_local_cache_only(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    _cached_repo(tmp_path, "someone/tiny-vit", {
        "architecture": "vit_tiny_patch16_224", "num_classes": 0,
        "model_args": {"img_size": 48, "embed_dim": 48, "depth": 2, "num_heads": 3, "reg_tokens": 4},
        "pretrained_cfg": {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]},
    })
    spec = resolve("hubvit", {"arch": "hf-hub:someone/tiny-vit"})
    assert (spec.arch, spec.hf_hub_id, spec.weights, spec.filename) == (
        "vit_tiny_patch16_224", "someone/tiny-vit", "timm", "model.safetensors")
    assert (spec.input_size, spec.depth, spec.embed_dim, spec.num_prefix_tokens) == (48, 2, 48, 5)
    assert spec.mean == (0.1, 0.2, 0.3) and spec.model_kwargs["num_classes"] == 0
    with pytest.raises(ConfigError, match="no config.json in the local Hugging Face cache"):
        resolve("missing", {"arch": "hf-hub:someone/not-cached"})


def test_a_wrong_prefix_count_is_an_error_naming_it_not_shifted_tokens():
    """timm path, 5 prefix tokens declared as 1: four registers would pass as patches of a 13-token 'grid'."""
    extractor = build_extractor(resolve("t", {**TIMM_REG, "prefix_tokens": 1}), "unused")
    with pytest.raises(ConfigError, match="prefix_tokens"):
        extractor.forward_layers(torch.zeros(1, 3, 48, 48), [4])
