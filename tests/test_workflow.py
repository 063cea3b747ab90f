"""The workflow parses, validates and plans every job for both presets
through Snakemake's Python API, without any dataset on disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, ResourceSettings

from conftest import PROJECT, load_config

#: The experiments whose numbers the card reads: each writes per-unit statistics beside its CSV (issue 22).
UNIT_EXPERIMENTS = ("train_size", "layerwise", "degradation", "ade20k", "fair1m_retrieval", "tracking")


def planned_jobs(configfiles: list[Path], targets: set[str], tmp_path: Path) -> dict[str, list[str]]:
    """Dry-run ``targets`` and return {rule: [outputs...]} of the jobs Snakemake would run.

    The working directory is a fresh temporary folder holding links to the
    project files, so nothing exists yet and every job is planned.
    """
    for name in ("Snakefile", "rules", "scripts", "schemas", "config", "config.yaml", "envs"):
        (tmp_path / name).symlink_to(PROJECT / name)
    with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
        workflow_api = api.workflow(
            resource_settings=ResourceSettings(cores=1),
            config_settings=ConfigSettings(configfiles=[Path(p) for p in configfiles]),
            snakefile=tmp_path / "Snakefile",
            workdir=tmp_path,
        )
        dag_api = workflow_api.dag(DAGSettings(targets=targets))
        dag_api.execute_workflow(executor="dryrun")
        dag = dag_api.workflow_api._workflow.dag
        jobs: dict[str, list[str]] = {}
        for job in dag.jobs:
            jobs.setdefault(job.rule.name, []).extend(str(f) for f in job.output)
    return jobs


def test_paper_dry_run_lists_every_subset_without_data(tmp_path):
    jobs = planned_jobs([PROJECT / "config.yaml"], {"all"}, tmp_path)
    manifests = sorted(jobs["select_subset"])
    assert "results/paper/subsets/cityscapes/set8.csv" in manifests
    assert "results/paper/subsets/ade20k/val.csv" in manifests
    assert "results/paper/subsets/mot17/train.csv" in manifests
    assert len(manifests) == 5 + 2 + 1 + 1 + 1 + 1 + 1
    assert "generate_synthetic_dataset" not in jobs  # real data are never synthesised
    # checkpoints are shared resources; everything else is namespaced by the preset
    assert all(path.startswith("resources/weights/") for path in jobs.pop("download_weights"))
    assert all(path.startswith("results/paper/") for outs in jobs.values() for path in outs)
    assert "results/paper/features/cityscapes/val/mae/blur-8.parquet" in jobs["extract_cityscapes_mae_degraded"]
    assert "results/paper/features/fair1m/train/dino/rotate-20.parquet" in jobs["extract_fair1m_dino_transformed"]
    # One job makes a model's clean and whole-image files of every subset of a dataset.
    assert {f"results/paper/features/cityscapes/{s}/dino/clean.parquet" for s in ("set2", "set4", "set8", "val")} <= set(
        jobs["extract_cityscapes_dino"])
    # The paper preset: one experiment job per (experiment, model), each writing its one CSV, and beside it the
    # per-unit statistics where the experiment writes them (Experiment.units: the card's intervals).
    experiment_jobs = {rule: outs for rule, outs in jobs.items() if rule.startswith("experiment_")}
    assert experiment_jobs["experiment_layerwise_dino"] == ["results/paper/experiments/layerwise/dino.csv",
                                                            "results/paper/experiments/layerwise/dino.units.parquet"]
    assert experiment_jobs["experiment_tracking_mot17_dino"] == ["results/paper/experiments/tracking_mot17/dino.csv"]
    assert all(len(outs) == 1 + outs[0].startswith(tuple(f"results/paper/experiments/{e}/" for e in UNIT_EXPERIMENTS))
               for outs in experiment_jobs.values())


def test_demo_dry_run_generates_its_data(tmp_path):
    jobs = planned_jobs([PROJECT / "config" / "demo.yaml"], {"all"}, tmp_path)
    assert sorted(jobs["generate_synthetic_dataset"]) == sorted(
        f"results/demo/data/{d}" for d in ("cityscapes", "ade20k", "fair1m", "bdd100k", "mot17", "ucmerced", "resisc45")
    )
    assert all(path.startswith("results/demo/") for outs in jobs.values() for path in outs)
    assert "download_weights" not in jobs  # random weights need no checkpoint
    # The demo: one experiment job per study, all of the study's CSVs for every model it runs.
    demo = load_config("config/demo.yaml")
    card_only = [m for m in demo["card"]["models"] if m not in demo["study_models"]]  # their layerwise k-NN
    assert sorted(jobs["study_probing"]) == sorted(
        [f"results/demo/experiments/{e}/{m}.{suffix}" for e in ("layerwise", "train_size", "degradation", "ade20k")
         for m in demo["study_models"] for suffix in ("csv", "units.parquet")]
        + [f"results/demo/experiments/layerwise/{m}.{suffix}" for m in card_only for suffix in ("csv", "units.parquet")])
    assert not any(rule.startswith(("experiment_", "study_probing_")) for rule in jobs)
    # figure_jobs: per_study: one job draws every output of the probing study drawn from CSVs, Fig 2's among them;
    # `fig2` itself is a target rule of those files, not a job.
    assert {"results/demo/figures/fig2/fig2.png", "results/demo/figures/table2/table2.csv"} <= set(jobs["figures_probing"])
    assert not {"fig2", "table2"} & set(jobs)


def test_bad_key_stops_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"probes": {"knn_metrc": "dot"}}))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(Exception, match="knn_metrc"):
        planned_jobs([bad], {"all"}, run_dir)
    assert not (run_dir / "results").exists()


def test_unknown_model_stops_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"study_models": ["dino", "no_such_model"]}))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(Exception, match="no_such_model"):
        planned_jobs([bad], {"all"}, run_dir)
