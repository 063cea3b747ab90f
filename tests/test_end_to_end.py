"""Synthetic Cityscapes -> features -> experiment rows -> figure, in one process:
what the workflow's jobs do, called the way its scripts call them."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vitlocal.studies.outputs import make_output, output_paths
from vitlocal.plotting.base import write_csv
from vitlocal.studies.base import concat_results
from vitlocal.studies.runner import run_experiment
from vitlocal.features.pipeline import extract_features
from vitlocal.reproduction import read_results
from vitlocal.subsets import select_subset, write_manifest
from vitlocal.synthetic import generate

PROJECT = Path(__file__).resolve().parents[1]
TINY = {"arch": "vit_tiny_patch16_224", "weights": "random", "seed": 1,
        "model_kwargs": {"img_size": 32, "embed_dim": 24, "depth": 2, "num_heads": 2}}
CONFIG = {"seed": 0, "device": "cpu", "probes": {"knn_k": 1, "knn_metric": "dot", "linear_epochs": 3,
                                                  "batchnorm_models": ["mae"]}}


@pytest.fixture(scope="module")
def layerwise_csv(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("e2e")
    root = generate("cityscapes", work / "data", size="tiny", seed=0)
    settings = {"lists_dir": str(PROJECT / "config/subsets/cityscapes"),
                "train_sets": {"set2": "training_set2.csv"}, "val_set": "validation_set.csv"}
    paths = {}
    for subset in ("set2", "val"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # seeded fallback + too few images per city: expected here
            manifest = select_subset("cityscapes", subset, root=root, settings=settings, seed=0)
        write_manifest(manifest, work / f"{subset}.csv")
        paths[subset] = work / f"{subset}.parquet"
        extract_features(
            dataset="cityscapes", root=root, manifest=manifest, subset=subset, model_key="dino", model_overrides=TINY,
            layers=[1, 2], out_path=paths[subset], preset="test", weights_dir=work / "weights", device="cpu",
            batch_size=64, dtype="float16", autocast="none", seed=0, data_source="synthetic", progress=False,
        )
    rows = run_experiment(
        "layerwise", "dino", {"train": paths["set2"], "val": paths["val"], "val_manifest": work / "val.csv"},
        {"roots": {"cityscapes": root}, "layers": [1, 2]}, CONFIG,
    )
    write_csv(rows, work / "layerwise.csv")
    return work / "layerwise.csv"


def test_experiment_rows_follow_the_tidy_contract(layerwise_csv):
    rows = read_results([layerwise_csv])  # raises on a broken contract
    miou = rows[rows["metric"] == "miou"]
    assert sorted(miou["layer"]) == [1, 2]
    assert miou["value"].between(0, 1).all() and (miou["value"] > 0).all()
    assert set(rows["weights"]) == {"random(seed=1)"} and set(rows["data"]) == {"synthetic"}
    assert set(rows["knn_metric"]) == {"dot"}
    # mIoU is the NaN-aware mean of the per-class IoUs it summarises
    for layer in (1, 2):
        iou = rows[(rows["metric"] == "iou") & (rows["layer"] == layer)]["value"]
        assert miou[miou["layer"] == layer]["value"].item() == pytest.approx(np.nanmean(iou), abs=1e-9)


def test_figure_from_experiment_csv_carries_its_provenance(layerwise_csv, tmp_path):
    out = output_paths("fig2", tmp_path)
    shown = make_output("fig2", [str(layerwise_csv)], out, {"subsets": {"cityscapes": {"main_train_set": "set2"}}})
    assert all(Path(p).stat().st_size > 0 for p in out.values())
    figure_csv = pd.read_csv(out["csv"])
    assert len(figure_csv) == len(shown) and set(figure_csv["layer"]) == {1, 2}
    assert set(figure_csv["data"]) == {"synthetic"} and set(figure_csv["weights"]) == {"random(seed=1)"}
    rows = concat_results([str(layerwise_csv)])
    all_classes = figure_csv[figure_csv["group"] == "all"].set_index("layer")["value"]
    miou = rows[rows["metric"] == "miou"].set_index("layer")["value"]
    assert np.allclose(all_classes.sort_index().to_numpy(), miou.sort_index().to_numpy())
