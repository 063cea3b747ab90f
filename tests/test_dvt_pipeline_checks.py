"""DVT files of another model, layer or width are refused, unreadable ones named (issues 18 §5, 19 §2)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vitlocal.denoise.pipeline import RELEASED, denoise_feature_file, denoiser_record, read_stage1, run_stage2
from vitlocal.denoise.stage1_files import write_npz
from vitlocal.denoise.stage2 import Denoiser, Stage2Settings
from vitlocal.errors import ConfigError, CorruptFileError
from vitlocal.features.store import read_attrs

from test_dvt_study import _write_clean  # a 3-tile dino file, 2x3 grid, layers 6 and 12, 64 wide


def _stage1_file(path, model="dino", n=4, dim=8):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(n, 2, 3, dim)).astype(np.float16)
    attrs = {"model": model, "arch": "vit", "weights": "random", "preset": "test", "layer": 12, "grid": [2, 3],
             "settings": {}, "sources": []}
    write_npz(path, {"raw": feats, "denoised": feats, "artifact": feats, "dataset": np.array(["c"] * n),
                     "sample_id": np.array(["s"] * n), "tile_id": np.arange(n), "loss": np.zeros(n),
                     "seconds_views": np.zeros(n), "seconds_fit": np.zeros(n), "images": np.zeros((0, 4, 4, 3)),
                     "attrs": np.array(json.dumps(attrs))})
    return path


def test_unreadable_stage1_files_name_the_file_and_the_cause(tmp_path):
    good = _stage1_file(tmp_path / "dino.npz").read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(CorruptFileError, match=r"cut\.npz: cannot be read as a stage-1 \.npz \(BadZipFile"):
        read_stage1(cut)
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(CorruptFileError, match=r"empty\.npz: cannot be read as a stage-1 \.npz \(EOFError"):
        read_stage1(empty)
    write_npz(tmp_path / "keys.npz", {"raw": np.zeros(3), "attrs": np.array("{}")})
    with pytest.raises(CorruptFileError, match=r"keys\.npz: not a stage-1 file \(missing arrays \['denoised'"):
        read_stage1(tmp_path / "keys.npz")
    write_npz(tmp_path / "noattrs.npz", {"raw": np.zeros(3)})
    with pytest.raises(CorruptFileError, match=r"noattrs\.npz: not a stage-1 file"):
        read_stage1(tmp_path / "noattrs.npz")


def test_stage1_file_of_another_model_is_refused_naming_both_files_and_models(tmp_path):
    path = _stage1_file(tmp_path / "dino.npz")
    with pytest.raises(ConfigError, match=r"dino\.npz holds stage 1 of model 'dino'; the denoiser .*mae\.pt is for "
                                          r"model 'mae'"):
        run_stage2(stage1_path=path, settings=Stage2Settings(steps=2, batch_size=2), out_path=tmp_path / "mae.pt",
                   model_key="mae", device="cpu")
    with pytest.raises(ConfigError, match=r"dino\.npz holds stage 1 of model 'dino', read for model 'mae'"):
        read_stage1(path, "mae")
    assert not (tmp_path / "mae.pt").exists()


def test_stage2_removes_leftovers_of_an_interrupted_save(tmp_path):
    path = _stage1_file(tmp_path / "dino.npz")
    leftovers = [tmp_path / "dino.pt.tmp-4242", tmp_path / "dino.json.tmp-4242"]
    for leftover in leftovers:
        leftover.write_bytes(b"half")
    record = run_stage2(stage1_path=path, settings=Stage2Settings(steps=2, batch_size=2), out_path=tmp_path / "dino.pt",
                        model_key="dino", device="cpu")
    assert record["model"] == "dino" and record["layer"] == 12
    assert not any(p.exists() for p in leftovers) and (tmp_path / "dino.pt").is_file()


@pytest.mark.parametrize("record, match", [
    ({"model": "mae", "path": "ck/mae.pt"}, r"ck/mae\.pt is model 'mae''s denoiser; .*clean\.parquet holds model "
                                           r"'dino''s features"),
    ({"model": "dino", "layer": 6, "path": "ck/dino.pt"}, r"ck/dino\.pt denoises layer 6; the highest layer stored in "
                                                         r".*clean\.parquet is 12"),
])
def test_dvt_variant_refuses_a_denoiser_of_another_model_or_layer(tmp_path, record, match):
    _write_clean(tmp_path / "clean.parquet")
    with pytest.raises(ConfigError, match=match):
        denoise_feature_file(tmp_path / "clean.parquet", Denoiser(64, (2, 3)), tmp_path / "dvt.parquet",
                             checkpoint=record, device="cpu")
    assert not list(tmp_path.glob("dvt.parquet*"))


def test_dvt_variant_width_mismatch_names_both_files(tmp_path):
    _write_clean(tmp_path / "clean.parquet")
    with pytest.raises(ConfigError, match=r"ck/x\.pt denoises 32-wide features; layer 12 of .*clean\.parquet is 64"):
        denoise_feature_file(tmp_path / "clean.parquet", Denoiser(32, (2, 3)), tmp_path / "dvt.parquet",
                             checkpoint={"path": "ck/x.pt"}, device="cpu")


def test_released_denoiser_at_224_px_says_it_was_trained_at_518(tmp_path):
    """The authors' releases hold a 37x37 (patch 14) or 32x32 (patch 16) position grid: 518 / 512 px."""
    dinov2 = SimpleNamespace(key="dinov2", depth=12, patch_size=14)
    released = denoiser_record({"file": "v2.pth", "sha256": "0" * 64, "source": RELEASED}, "ck/v2.pth",
                               Denoiser(64, (37, 37)), dinov2)
    assert released["dvt_source"] == "released@518" and released["model"] == "dinov2" and released["layer"] == 12
    dino = SimpleNamespace(key="dino", depth=12, patch_size=16)
    assert denoiser_record({"source": RELEASED}, "p", Denoiser(64, (32, 32)), dino)["dvt_source"] == "released@512"
    ours = denoiser_record({"model": "dino", "layer": 12}, "r/dino.pt", Denoiser(64, (2, 3)), dino)
    assert ours["dvt_source"] == "ours@32" and ours["path"] == "r/dino.pt"
    _write_clean(tmp_path / "clean.parquet")
    torch.manual_seed(0)
    record = denoiser_record({"source": RELEASED}, "ck/dino.pth", Denoiser(64, (2, 3)), dino)
    denoise_feature_file(tmp_path / "clean.parquet", Denoiser(64, (2, 3)), tmp_path / "dvt.parquet",
                         checkpoint=record, device="cpu")
    assert read_attrs(tmp_path / "dvt.parquet")["denoiser"]["dvt_source"] == "released@32"


def test_rows_of_a_released_denoiser_say_released_at_518(tmp_path):
    import pandas as pd

    from vitlocal.studies.dvt.compute import _with_dvt_source

    _write_clean(tmp_path / "clean.parquet")
    dinov2 = SimpleNamespace(key="dino", depth=12, patch_size=14)  # the file's model, a patch-14 released grid
    record = denoiser_record({"source": RELEASED}, "ck/v2.pth", Denoiser(64, (37, 37)), dinov2)
    denoise_feature_file(tmp_path / "clean.parquet", Denoiser(64, (37, 37)), tmp_path / "dvt.parquet",
                         checkpoint=record, device="cpu")
    rows = pd.DataFrame({"level": ["raw", "dvt", "dvt:blur-4", "dvt1"], "settings": ['{"k":1}', '{"k":1}', "", ""]})
    out = _with_dvt_source(rows, {"raw": {}, "dvt": {"train": tmp_path / "dvt.parquet"}})
    assert [json.loads(s).get("dvt_source") if s else None for s in out["settings"]] == [
        None, "released@518", "released@518", None]
    assert json.loads(out["settings"][1])["k"] == 1
