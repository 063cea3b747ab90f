"""Tests a mutation analysis found missing: each fails on the bug its name says."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from vitlocal.datasets import cityscapes
from vitlocal.evaluation.segmentation import LINEAR_DEFAULTS, ProbeSettings, fit_linear
from vitlocal.features.sources import make_source
from vitlocal.models.registry import resolve
from vitlocal.probes.knn import majority_vote
from vitlocal.studies.variance.compute import central_patches, unique_images
from vitlocal.synthetic import generate

TINY = {"arch": "vit_tiny_patch16_224", "weights": "random", "seed": 1,
        "model_kwargs": {"embed_dim": 48, "depth": 2, "num_heads": 3}}


def test_noise_is_drawn_per_image_and_independent_of_manifest_order(tmp_path):
    generate("cityscapes", tmp_path, size="tiny", seed=0)
    manifest = cityscapes.list_images(tmp_path, "val").head(2)
    spec = resolve("dino", TINY)

    def noise(rows: pd.DataFrame) -> dict[str, np.ndarray]:
        clean = make_source("cityscapes", tmp_path, rows, spec, "clean", seed=7)
        noisy = make_source("cityscapes", tmp_path, rows, spec, "noise-40", seed=7)
        return {c.sample_id: n.tiles.astype(np.int16) - c.tiles for c, n in zip(clean, noisy)}

    forward, backward = noise(manifest), noise(manifest.iloc[::-1])
    a, b = manifest["sample_id"]
    assert np.mean(forward[a] != forward[b]) > 0.5  # not the same draw on every image
    for sample in (a, b):
        np.testing.assert_array_equal(forward[sample], backward[sample])


def test_every_linear_setting_reaches_the_probe_and_its_record():
    config = {"probes": {"linear_epochs": 3, "linear_lr": 0.05, "linear_batch_size": 16, "linear_weight_decay": 0.25}}
    probes = ProbeSettings.from_config(config)
    assert probes.linear == {"epochs": 3, "lr": 0.05, "batch_size": 16, "weight_decay": 0.25}
    rng = np.random.default_rng(0)
    train = SimpleNamespace(x=rng.standard_normal((64, 6)).astype(np.float32), labels=rng.integers(0, 3, 64))
    target = SimpleNamespace(num_classes=3)

    def fitted(settings: ProbeSettings):
        probe, record = fit_linear(train, "dino", target, settings)
        return np.concatenate([p.detach().numpy().ravel() for p in probe.parameters()]), record

    weights, record = fitted(probes)
    assert {key: record[key] for key in LINEAR_DEFAULTS} == probes.linear
    for key in LINEAR_DEFAULTS:  # each one changes the trained probe
        other = ProbeSettings(linear={**probes.linear, key: LINEAR_DEFAULTS[key]}, device="cpu")
        assert not np.allclose(fitted(other)[0], weights), f"linear_{key} has no effect on the probe"


@pytest.mark.parametrize("row,winner", [
    ([3, 7, 3, 7, 5], 3),  # 3 and 7 tie; the last tied member is a 7, the nearest a 3
    ([5, 3, 7, 3, 7], 3),  # the nearest neighbour is not tied: the nearer tied label wins
])
def test_vote_tie_goes_to_the_nearest_member_not_the_last(row, winner):
    assert majority_vote(np.array([row]))[0] == winner


def test_unique_images_drops_a_repeated_image_renamed_dup():
    manifest = pd.DataFrame({
        "sample_id": ["a", "b", "a__dup1"],
        "image_path": ["leftImg8bit/train/x/a.png", "leftImg8bit/train/x/b.png", "leftImg8bit/train/x/a.png"],
    })
    unique = unique_images(manifest)
    assert unique["sample_id"].tolist() == ["a", "b"]
    # The feature rows of the repeat are skipped, not counted as a third image.
    meta = pd.DataFrame({"sample_id": ["a", "b", "a__dup1"], "tile_id": 0, "patch_row": 0, "patch_col": 0})
    split = SimpleNamespace(meta=meta, name="train", attrs={"grid": [1, 1]})
    rows, position = central_patches(split, unique, n_tiles=1, skip={"a__dup1"})
    assert rows.tolist() == [0, 1] and position.tolist() == [0, 1]
