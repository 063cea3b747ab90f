"""DVT stage 1 as shards (issue 20 §3): same per-tile results as one job, resumable, gathered in a fixed order.

The protocol: tile ``i`` of the global selection (sources in order, each
source's picks sorted) is fitted with seed ``seed * 1_000_003 + i``, whichever
job runs it; a job killed mid-way and rerun ends with the file an uninterrupted
job writes.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vitlocal.denoise import shards
from vitlocal.denoise.settings import ShardSettings, shard_plan, split_stage1_config, stage1_shard_paths
from vitlocal.denoise.shards import last_layer_encoder, run_stage1_shard
from vitlocal.denoise.stage1_files import gather_stage1, read_npz, write_npz
from vitlocal.denoise.stage1 import Stage1Settings, denoise_image
from vitlocal.errors import ConfigError

TINY32 = {"arch": "vit_tiny_patch16_224", "weights": "random", "seed": 1,
          "model_kwargs": {"img_size": 32, "embed_dim": 16, "depth": 2, "num_heads": 2}}
SETTINGS = Stage1Settings(views=3, steps=4, tokens_per_step=16, levels=2, features_per_level=2, base_resolution=2,
                          max_resolution=4, batch_size=4)
SEED = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two training sources (synthetic Cityscapes, two manifests), 3 + 2 tiles, and the tiny ViT."""
    from vitlocal.datasets import cityscapes
    from vitlocal.models.registry import resolve
    from vitlocal.subsets import write_manifest
    from vitlocal.synthetic import generate

    tmp = tmp_path_factory.mktemp("dvt_shards")
    root = generate("cityscapes", tmp / "cityscapes", size="tiny", seed=0)
    images = cityscapes.list_images(root, "val")
    write_manifest(images.head(1), tmp / "a.csv")
    write_manifest(images.iloc[1:2], tmp / "b.csv")
    sources = [{"dataset": "cityscapes", "root": str(root), "manifest": str(tmp / "a.csv"), "max_tiles": 3},
               {"dataset": "cityscapes", "root": str(root), "manifest": str(tmp / "b.csv"), "max_tiles": 2}]
    torch.set_num_threads(1)
    spec = resolve("dino", TINY32)
    encoder = last_layer_encoder(spec, tmp / "w", torch.device("cpu"))
    return {"sources": sources, "spec": spec, "encoder": encoder, "weights": tmp / "w"}


def _run(data, out_dir, tiles_per_job, tiles_per_step=1, settings=SETTINGS, model="dino"):
    shard = ShardSettings(tiles_per_job=tiles_per_job, tiles_per_step=tiles_per_step)
    plan = shard_plan(data["sources"], shard)
    paths = stage1_shard_paths(str(out_dir), model, plan)
    for entry, path in zip(plan, paths):
        run_stage1_shard(model_key=model, model_overrides=TINY32, weights_dir=data["weights"],
                         sources=data["sources"], settings=settings, shard=shard, index=entry["index"],
                         out_path=path, preset="test", seed=SEED, device="cpu", figure_tiles=2,
                         encoder=data["encoder"])
    return paths


def _fixed_timings(monkeypatch):
    """The real fit, with constant timings: the only part of a file that may differ between two runs."""
    real = shards.fit_tiles
    calls = []

    def fit(tiles, *args, **kwargs):
        calls.append(list(kwargs["seeds"]))
        return [dataclasses.replace(r, seconds_views=1.0, seconds_fit=2.0) for r in real(tiles, *args, **kwargs)]

    monkeypatch.setattr(shards, "fit_tiles", fit)
    return calls


def test_sharded_stage1_equals_one_job_and_seeds_by_global_tile(data, tmp_path, monkeypatch):
    _fixed_timings(monkeypatch)
    one = gather_stage1(_run(data, tmp_path / "one", tiles_per_job=5), tmp_path / "one.npz", model_key="dino")
    paths = _run(data, tmp_path / "three", tiles_per_job=2)
    assert len(paths) == 3
    three = gather_stage1(paths, tmp_path / "three.npz", model_key="dino")
    a, b = read_npz(tmp_path / "one.npz"), read_npz(tmp_path / "three.npz")
    for key in ("raw", "denoised", "artifact", "dataset", "sample_id", "tile_id", "loss", "images"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert one["n_tiles"] == three["n_tiles"] == 5 and three["shards"] == 3
    assert len(a["images"]) == 2 and a["tile_id"].tolist()[:3] == sorted(a["tile_id"].tolist()[:3])
    # Global tile 3 (first tile of the second source, in the second shard) by hand: seed 3 * 1_000_003 + 3.
    from vitlocal.features.sources import base_tiling, make_source
    from vitlocal.features.pipeline import load_manifest

    src, spec = data["sources"][1], data["spec"]
    tiles = make_source("cityscapes", src["root"], load_manifest(src["manifest"]), spec, "clean",
                        tiling=base_tiling("cityscapes"), seed=SEED)
    tile_id = int(b["tile_id"][3])
    result = denoise_image(tiles[0].tiles[tile_id], data["encoder"], mean=spec.mean, std=spec.std,
                           input_size=spec.input_size, grid=tiles.grid, settings=SETTINGS,
                           seed=SEED * 1_000_003 + 3, device="cpu")
    np.testing.assert_array_equal(b["denoised"][3], result.denoised.astype(np.float16))
    assert b["sample_id"][3] == tiles[0].sample_id


def test_interrupted_shard_resumes_at_first_unfinished_step_and_writes_the_same_bytes(data, tmp_path, monkeypatch):
    calls = _fixed_timings(monkeypatch)
    whole = _run(data, tmp_path / "whole", tiles_per_job=5, tiles_per_step=2)[0]
    assert calls == [[SEED * 1_000_003 + i for i in (0, 1)], [SEED * 1_000_003 + i for i in (2, 3)],
                     [SEED * 1_000_003 + 4]]
    fitted = shards.fit_tiles

    def dies_on_third_step(*args, **kwargs):
        if len(calls) == 5:
            raise KeyboardInterrupt("killed")
        return fitted(*args, **kwargs)

    monkeypatch.setattr(shards, "fit_tiles", dies_on_third_step)
    with pytest.raises(KeyboardInterrupt):
        _run(data, tmp_path / "cut", tiles_per_job=5, tiles_per_step=2)
    cut = tmp_path / "cut/dvt/stage1/dino/shard-0000.npz"
    assert not cut.exists() and len(list((tmp_path / "cut/dvt/stage1/dino").glob("*.partial/group-*.npz"))) == 2
    (cut.parent / f"{cut.name}.tmp-4242").write_bytes(b"half a zip")  # what kill -9 during the final write leaves
    monkeypatch.setattr(shards, "fit_tiles", fitted)
    del calls[:]
    _run(data, tmp_path / "cut", tiles_per_job=5, tiles_per_step=2)
    assert calls == [[SEED * 1_000_003 + 4]]  # only the unfinished step ran again
    assert cut.read_bytes() == Path(whole).read_bytes()
    assert not list(cut.parent.glob("*.tmp-*")) and not list(cut.parent.glob("*.partial"))


def test_kept_steps_of_other_settings_or_unreadable_are_fitted_again(data, tmp_path, monkeypatch):
    calls = _fixed_timings(monkeypatch)
    fitted = shards.fit_tiles

    def dies(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return fitted(*args, **kwargs)

    monkeypatch.setattr(shards, "fit_tiles", dies)
    with pytest.raises(KeyboardInterrupt):
        _run(data, tmp_path, tiles_per_job=5, tiles_per_step=2)
    monkeypatch.setattr(shards, "fit_tiles", fitted)
    del calls[:]
    _run(data, tmp_path, tiles_per_job=5, tiles_per_step=2, settings=dataclasses.replace(SETTINGS, steps=5))
    assert len(calls) == 3  # the kept step was made with 4 steps a tile: not reused
    partial = tmp_path / "dvt/stage1/dino/shard-0000.npz.partial"
    partial.mkdir()
    (partial / "group-00000.npz").write_bytes(b"PK\x03\x04 truncated")
    del calls[:]
    _run(data, tmp_path, tiles_per_job=5, tiles_per_step=2)
    assert len(calls) == 3


def test_kept_steps_of_a_rewritten_manifest_are_fitted_again(data, tmp_path, monkeypatch):
    """Same settings and paths, other images behind the manifest: the kept step holds other tiles."""
    from vitlocal.features.pipeline import load_manifest
    from vitlocal.subsets import write_manifest

    first, second = (load_manifest(s["manifest"]) for s in data["sources"])
    manifest = tmp_path / "m.csv"
    write_manifest(first, manifest)
    mine = {**data, "sources": [{**data["sources"][0], "manifest": str(manifest)}]}  # 3 tiles: steps of 2 + 1
    calls = _fixed_timings(monkeypatch)
    fitted = shards.fit_tiles

    def dies(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt("killed")
        return fitted(*args, **kwargs)

    monkeypatch.setattr(shards, "fit_tiles", dies)
    with pytest.raises(KeyboardInterrupt):
        _run(mine, tmp_path / "out", tiles_per_job=5, tiles_per_step=2)
    monkeypatch.setattr(shards, "fit_tiles", fitted)
    write_manifest(second, manifest)
    del calls[:]
    _run(mine, tmp_path / "out", tiles_per_job=5, tiles_per_step=2)
    assert len(calls) == 2
    assert set(read_npz(tmp_path / "out/dvt/stage1/dino/shard-0000.npz")["sample_id"]) == set(second["sample_id"])


def test_gather_refuses_other_models_settings_and_missing_or_reordered_shards(data, tmp_path):
    paths = _run(data, tmp_path / "a", tiles_per_job=2)
    with pytest.raises(ConfigError, match=r"holds stage 1 of model 'dino', gathered into .*x.npz for model 'mae'"):
        gather_stage1(paths, tmp_path / "x.npz", model_key="mae")
    with pytest.raises(ConfigError, match="do not hold global tiles 0..4 once each"):
        gather_stage1([paths[0], paths[2], paths[1]], tmp_path / "x.npz", model_key="dino")
    with pytest.raises(ConfigError, match="do not hold global tiles"):
        gather_stage1(paths[:2], tmp_path / "x.npz", model_key="dino")
    other = _run(data, tmp_path / "b", tiles_per_job=2, settings=dataclasses.replace(SETTINGS, views=2))
    with pytest.raises(ConfigError, match=r"different settings \(\['settings'\]\)"):
        gather_stage1([paths[0], other[1], paths[2]], tmp_path / "x.npz", model_key="dino")
    assert not (tmp_path / "x.npz").exists()


def test_fewer_tiles_than_planned_leave_empty_shards_counted(data, tmp_path):
    sources = [{**data["sources"][0], "max_tiles": 200}]  # the image has 32 tiles
    big = {**data, "sources": sources}
    plan = shard_plan(sources, ShardSettings(tiles_per_job=30))
    assert [p["tiles"] for p in plan] == [30, 30, 30, 30, 30, 30, 20]
    shard = ShardSettings(tiles_per_job=30)
    path = tmp_path / "s6.npz"
    attrs = run_stage1_shard(model_key="dino", model_overrides=TINY32, weights_dir=data["weights"], sources=sources,
                             settings=SETTINGS, shard=shard, index=6, out_path=path, preset="test", seed=SEED,
                             device="cpu", encoder=big["encoder"])
    assert attrs["n_tiles"] == 0 and attrs["n_selected"] == 32
    assert read_npz(path)["raw"].shape == (0, 2, 2, 16)


def test_shard_plan_runtime_and_config_split():
    sources = [{"max_tiles": 500}, {"max_tiles": 500}]
    plan = shard_plan(sources, ShardSettings(tiles_per_job=100, seconds_per_tile=30))
    assert len(plan) == 10 and plan[0] == {"index": 0, "tiles": 100, "runtime": 77}  # (60 + 3000) s x 1.5 = 76.5 min
    assert [p["tiles"] for p in shard_plan(sources, ShardSettings(tiles_per_job=300))] == [300, 300, 300, 100]
    with pytest.raises(ConfigError, match="stage1_tiles: null"):
        shard_plan([{"max_tiles": None}], ShardSettings())
    fit, shard = split_stage1_config({"views": 7, "tiles_per_job": 4, "tiles_per_step": 2, "seconds_per_tile": 1.5})
    assert fit.views == 7 and shard == ShardSettings(4, 2, 1.5)
    with pytest.raises(ConfigError, match="unknown key"):
        split_stage1_config({"tiles_per_jobs": 4})
    with pytest.raises(ConfigError, match="tiles_per_job"):
        split_stage1_config({"tiles_per_job": 0})


@pytest.mark.parametrize("config_file, per_model", [("config.yaml", 10), ("config/demo.yaml", 2)])
def test_presets_run_stage1_as_several_shards_per_model(config_file, per_model):
    with open(config_file) as fh:
        dvt = yaml.safe_load(fh)["dvt"]
    sources = [{"max_tiles": dvt["stage1_tiles"]} for _ in dvt["stage1_subsets"]]
    plan = shard_plan(sources, split_stage1_config(dvt["stage1"])[1])
    assert len(plan) == per_model and all(p["runtime"] >= 1 for p in plan)


def test_write_npz_same_arrays_same_bytes_and_removes_leftovers(tmp_path):
    path = tmp_path / "x.npz"
    (tmp_path / "x.npz.tmp-77").write_bytes(b"junk")
    (tmp_path / "x.tmp-78.npz").write_bytes(b"junk")  # np.savez's naming, before this module
    write_npz(path, {"a": np.arange(3), "attrs": np.array(json.dumps({"k": 1}))})
    first = path.read_bytes()
    write_npz(path, {"a": np.arange(3), "attrs": np.array(json.dumps({"k": 1}))})
    assert path.read_bytes() == first and sorted(p.name for p in tmp_path.iterdir()) == ["x.npz"]
    with np.load(path) as loaded:
        assert loaded["a"].tolist() == [0, 1, 2]


KILLED_CHILD = """
import dataclasses, json, sys, time
import torch
from vitlocal.denoise import shards
from vitlocal.denoise.settings import ShardSettings, Stage1Settings
args = json.loads(sys.argv[1])
torch.set_num_threads(1)
real, calls = shards.fit_tiles, []
def fit(tiles, *a, **k):
    calls.append(1)
    if len(calls) == 3:
        print("two steps kept", flush=True)
        time.sleep(600)  # killed here, with -9
    return [dataclasses.replace(r, seconds_views=1.0, seconds_fit=2.0) for r in real(tiles, *a, **k)]
shards.fit_tiles = fit
shards.run_stage1_shard(settings=Stage1Settings(**args.pop("settings")), shard=ShardSettings(5, 2), **args)
"""


def test_shard_killed_with_sigkill_resumes_and_writes_the_same_bytes(data, tmp_path, monkeypatch):
    import os
    import signal
    import subprocess
    import sys

    calls = _fixed_timings(monkeypatch)
    whole = Path(_run(data, tmp_path / "whole", tiles_per_job=5, tiles_per_step=2)[0])
    out = tmp_path / "cut/dvt/stage1/dino/shard-0000.npz"
    args = dict(model_key="dino", model_overrides=TINY32, weights_dir=str(data["weights"]), sources=data["sources"],
                settings=dataclasses.asdict(SETTINGS), index=0, out_path=str(out), preset="test", seed=SEED,
                device="cpu", figure_tiles=2)
    args["settings"]["scale"], args["settings"]["ratio"] = list(SETTINGS.scale), list(SETTINGS.ratio)
    child = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, json.dumps(args)], stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert child.stdout.readline().strip() == "two steps kept"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert not out.exists() and len(list(out.parent.glob("*.partial/group-*.npz"))) == 2
    del calls[:]
    _run(data, tmp_path / "cut", tiles_per_job=5, tiles_per_step=2)
    assert calls == [[SEED * 1_000_003 + 4]]
    assert out.read_bytes() == whole.read_bytes()
