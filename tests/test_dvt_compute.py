"""The dvt_* computations on real feature files: an identical 'denoised' file changes nothing, a cleaner one helps."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from test_segmentation_eval import tiny_cityscapes, write_dataset_features
from vitlocal.evaluation import segmentation as seg
from vitlocal.studies.dvt.compute import raw_vs_dvt_rows, robustness_raw_vs_dvt_rows
from vitlocal.studies.dvt.figures import table_dvt_data
from vitlocal.tiling import TilingSpec

TILING = TilingSpec(None, 4, 8)
GRID = (2, 2)
PROBES = seg.ProbeSettings(knn_metric="l2", linear={"epochs": 5, "lr": 0.05, "batch_size": 1024},
                           batchnorm_models=(), seed=0, device="cpu")


@pytest.fixture(scope="module")
def levels(tmp_path_factory):
    """raw (noisy) train / val / blur-4 files, ``dvt`` = byte copies of them, ``dvt1`` = the same patches, less noise."""
    tmp = tmp_path_factory.mktemp("dvt_compute")
    root = tmp / "cityscapes"
    manifests = tiny_cityscapes(root)
    files = {"raw": {}, "dvt": {}, "dvt1": {}}
    for seed, (name, manifest) in enumerate([("train", "set4"), ("val", "val"), ("blur-4", "val")]):
        for level, sigma in (("raw", 3.0), ("dvt1", 0.3)):
            path = tmp / f"{level}-{name}.parquet"
            write_dataset_features(path, "cityscapes", root, manifests[manifest], tiling=TILING, grid=GRID,
                                   layers={12: sigma}, num_classes=19, seed=seed, split=name)
            files[level][name] = path
        files["dvt"][name] = tmp / f"dvt-{name}.parquet"
        shutil.copyfile(files["raw"][name], files["dvt"][name])
    return seg.EvalTarget.load("cityscapes", root, manifests["val"]), files


def _by_level(rows: pd.DataFrame) -> pd.DataFrame:
    side = rows["level"].str.partition(":")[0]
    sub = rows["level"].str.partition(":")[2]
    return rows.assign(side=side, sub=sub).pivot_table(index=["probe", "sub", "class", "metric"], columns="side",
                                                       values="value", dropna=False)


def test_cityscapes_identical_dvt_file_gives_identical_scores(levels):
    target, files = levels
    rows = raw_vs_dvt_rows("dino", {lv: {"train": f["train"], "val": f["val"]} for lv, f in files.items()},
                           target=target, probes=PROBES)
    assert set(rows["level"]) == {"raw", "dvt", "dvt1"} and set(rows["experiment"]) == {"dvt_cityscapes"}
    wide = _by_level(rows)
    pd.testing.assert_series_equal(wide["raw"], wide["dvt"], check_names=False)
    miou = wide.xs("miou", level="metric").xs("mean", level="class")
    assert (miou["dvt1"] > miou["raw"] + 0.1).all()  # a tenth of the noise
    table = table_dvt_data(rows).set_index("probe")
    assert (table["diff"] == 0).all() and (table["dvt1_diff"] > 0.1).all()


def test_robustness_identical_dvt_files_give_identical_scores(levels):
    target, files = levels
    per_level = {lv: {"train": f["train"], "val_variants": {"clean": f["val"], "blur-4": f["blur-4"]}}
                 for lv, f in levels[1].items() if lv != "dvt1"}
    rows = robustness_raw_vs_dvt_rows("dino", per_level, target=target, probes=PROBES)
    assert set(rows["level"]) == {"raw:blur-0", "raw:blur-4", "dvt:blur-0", "dvt:blur-4"}
    wide = _by_level(rows)
    pd.testing.assert_series_equal(wide["raw"], wide["dvt"], check_names=False)
    miou = wide["raw"].xs(("mean", "miou"), level=("class", "metric"))
    assert len(miou) == 4 and np.isfinite(miou).all()  # k-NN and linear, clean and blurred
