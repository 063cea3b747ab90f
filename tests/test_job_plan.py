"""How the workflow cuts its work into jobs: each file made by exactly one job, grouped as documented,
and a grouped job writes exactly what the jobs it replaces wrote."""

from __future__ import annotations

import random
import warnings

import pytest

from vitlocal.datasets import cityscapes
from vitlocal.errors import ConfigError
from vitlocal.features.pipeline import extract_feature_files, extract_planned_files
from vitlocal.features.plan import extraction_jobs
from vitlocal.features.store import read_attrs, read_features
from vitlocal.studies.base import experiment_groups
from vitlocal.synthetic import generate

R = "results/x"
DEG = ["blur-2", "noise-10", "freqnoise-1"]
TRANS = ["shift-3", "rotate-10", "scale-0.8"]


def f(dataset, subset, model, variant):
    return f"{R}/features/{dataset}/{subset}/{model}/{variant}.parquet"


PATHS = [
    f("cityscapes", "val", "dino", "clean"), f("cityscapes", "set4", "dino", "clean"),
    f("cityscapes", "val", "dino", "full"), f("cityscapes", "val", "dino", "noise-10"),
    f("cityscapes", "val", "dino", "blur-2"), f("cityscapes", "val", "mae", "clean"),
    f("fair1m", "train", "dino", "clean"), f("fair1m", "train", "dino", "rotate-10"),
    f("fair1m", "train", "dino", "blur-2"),
    # Made by other rules, or of no configured dataset: no extraction job.
    f("cityscapes", "val", "dino", "dvt"), f("cityscapes", "val", "dino", "dvt-blur-2"),
    f("cityscapes", "val", "dino", "dvt1"), f"{R}/features/scene/dino.parquet", f("kitti", "val", "dino", "clean"),
    f"{R}/experiments/layerwise/dino.csv",
]


def plan(paths):
    return extraction_jobs(paths, R, ["cityscapes", "fair1m"], DEG, TRANS)


def test_each_extracted_file_has_one_job_of_its_kind():
    jobs = {job.name: [(x.subset, x.variant) for x in job.files] for job in plan(PATHS + PATHS[:3])}
    assert jobs == {
        # clean and whole-image files of every subset, subsets sorted, clean before full
        "extract_cityscapes_dino": [("set4", "clean"), ("val", "clean"), ("val", "full")],
        # degraded variants apart (a new level reruns them alone), in the configured order
        "extract_cityscapes_dino_degraded": [("val", "blur-2"), ("val", "noise-10")],
        "extract_cityscapes_mae": [("val", "clean")],
        "extract_fair1m_dino": [("train", "clean")],
        "extract_fair1m_dino_degraded": [("train", "blur-2")],
        "extract_fair1m_dino_transformed": [("train", "rotate-10")],
    }


def test_per_model_plan_makes_every_kind_in_one_job_per_dataset_and_model():
    per_model = extraction_jobs(PATHS, R, ["cityscapes", "fair1m"], DEG, TRANS, cut="per_model")
    assert {job.name: [(x.subset, x.variant) for x in job.files] for job in per_model} == {
        "extract_cityscapes_dino": [("set4", "clean"), ("val", "clean"), ("val", "full"), ("val", "blur-2"),
                                    ("val", "noise-10")],
        "extract_cityscapes_mae": [("val", "clean")],
        "extract_fair1m_dino": [("train", "clean"), ("train", "blur-2"), ("train", "rotate-10")],
    }
    # The same files as the per-kind plan, each once.
    assert sorted(x.path for job in per_model for x in job.files) == sorted(x.path for job in plan(PATHS)
                                                                           for x in job.files)


def test_per_dataset_plan_makes_every_model_and_kind_in_one_job_per_dataset():
    per_dataset = extraction_jobs(PATHS, R, ["cityscapes", "fair1m"], DEG, TRANS, cut="per_dataset")
    # Models in turn (sorted), each with its files in the per-model order.
    assert {job.name: [(x.model, x.subset, x.variant) for x in job.files] for job in per_dataset} == {
        "extract_cityscapes": [("dino", "set4", "clean"), ("dino", "val", "clean"), ("dino", "val", "full"),
                               ("dino", "val", "blur-2"), ("dino", "val", "noise-10"), ("mae", "val", "clean")],
        "extract_fair1m": [("dino", "train", "clean"), ("dino", "train", "blur-2"), ("dino", "train", "rotate-10")],
    }
    assert [job.models for job in per_dataset] == [["dino", "mae"], ["dino"]]
    assert sorted(x.path for job in per_dataset for x in job.files) == sorted(x.path for job in plan(PATHS)
                                                                             for x in job.files)
    with pytest.raises(ValueError, match="extraction.jobs"):
        extraction_jobs(PATHS, R, ["cityscapes"], DEG, TRANS, cut="per_subset")


def test_only_a_job_with_a_frequency_noise_file_reads_the_frequency_settings():
    jobs = {job.name: job.reads_frequency_noise for job in plan(PATHS + [f("cityscapes", "val", "dino", "freqnoise-1")])}
    assert jobs["extract_cityscapes_dino_degraded"] and not jobs["extract_fair1m_dino_degraded"]
    assert not any(v for k, v in jobs.items() if not k.endswith("_degraded"))


def test_plan_does_not_depend_on_the_order_files_are_read_in():
    shuffled = PATHS[:]
    random.Random(3).shuffle(shuffled)
    assert plan(shuffled) == plan(PATHS)


def test_experiment_groups_per_experiment_per_study_and_per_study_all_models():
    study_of = {"layerwise": "probing", "ade20k": "probing", "r2": "variance"}
    jobs = [("layerwise", "dino"), ("ade20k", "dino"), ("r2", "dino"), ("layerwise", "mae"), ("layerwise", "dino")]
    per_experiment = experiment_groups(jobs, study_of, "per_experiment")
    assert [(g.name, g.model, g.experiments) for g in per_experiment] == [
        ("ade20k", "dino", ("ade20k",)), ("layerwise", "dino", ("layerwise",)), ("layerwise", "mae", ("layerwise",)),
        ("r2", "dino", ("r2",))]
    per_study = experiment_groups(jobs, study_of, "per_study")
    assert [(g.name, g.model, g.experiments) for g in per_study] == [
        ("probing", "dino", ("layerwise", "ade20k")), ("probing", "mae", ("layerwise",)),
        ("variance", "dino", ("r2",))]
    # Rule and log names say which cut made them: a study's log never takes an experiment's place.
    assert (per_experiment[1].rule, per_experiment[1].log_name) == ("experiment_layerwise_dino",
                                                                    "experiments/layerwise/dino")
    assert (per_study[0].rule, per_study[0].log_name) == ("study_probing_dino", "studies/probing/dino")
    # One job per study for every model: each (experiment, model) once, in the order the outputs drew them.
    all_models = experiment_groups(jobs, study_of, "per_study_all_models")
    assert [(g.rule, g.log_name, g.jobs) for g in all_models] == [
        ("study_probing", "studies/probing", (("layerwise", "dino"), ("ade20k", "dino"), ("layerwise", "mae"))),
        ("study_variance", "studies/variance", (("r2", "dino"),))]
    assert sorted(p for g in all_models for p in g.jobs) == sorted(p for g in per_experiment for p in g.jobs)
    with pytest.raises(ConfigError, match="experiment_jobs"):
        experiment_groups(jobs, study_of, "per_model")


TINY = {"arch": "vit_tiny_patch16_224", "weights": "random", "seed": 1,
        "model_kwargs": {"img_size": 48, "embed_dim": 24, "depth": 2, "num_heads": 2}}


def content(path):
    """Patch metadata, embeddings per layer, provenance (less its ``created`` time stamp)."""
    meta, layers = read_features(path)
    attrs = {k: v for k, v in read_attrs(path).items() if k != "created"}
    return meta, {layer: values.tobytes() for layer, values in layers.items()}, attrs


def test_planned_job_writes_the_files_of_separate_jobs(tmp_path):
    """One job over two subsets, clean + full + a degraded variant, vs one call per subset and variant."""
    root = tmp_path / "cityscapes"
    generate("cityscapes", root, size="tiny", seed=0)
    images = cityscapes.list_images(root, "val")
    manifests = {}
    for subset, rows in (("a", images.head(1)), ("b", images.tail(1))):
        manifests[subset] = tmp_path / f"{subset}.csv"
        rows.to_csv(manifests[subset], index=False)
    settings = dict(dataset="cityscapes", root=root, model_key="dino", model_overrides=TINY, preset="t",
                    weights_dir=tmp_path / "w", device="cpu", batch_size=8, dtype="float16", autocast="none",
                    seed=0, data_source="synthetic", progress=False)
    files = [{"subset": "a", "variant": "clean", "layers": [1, 2]}, {"subset": "a", "variant": "full", "layers": [2]},
             {"subset": "b", "variant": "clean", "layers": [2]}, {"subset": "b", "variant": "blur-2", "layers": [2]}]
    grouped = [{**entry, "path": tmp_path / f"g-{entry['subset']}-{entry['variant']}.parquet"} for entry in files]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extract_planned_files(files=grouped, manifests=manifests, **settings)
        for entry in files:
            alone = tmp_path / f"s-{entry['subset']}-{entry['variant']}.parquet"
            extract_feature_files(manifest=manifests[entry["subset"]], subset=entry["subset"], layers=entry["layers"],
                                  variants=[entry["variant"]], out_paths=[alone], **settings)
            grouped_file = tmp_path / f"g-{entry['subset']}-{entry['variant']}.parquet"
            (meta_g, emb_g, attrs_g), (meta_s, emb_s, attrs_s) = content(grouped_file), content(alone)
            assert meta_g.equals(meta_s) and emb_g == emb_s and attrs_g == attrs_s, entry
    assert sorted(read_features(tmp_path / "g-a-clean.parquet")[1]) == [1, 2]
