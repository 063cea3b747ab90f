"""A changed setting reruns exactly the jobs that read it (issue 19 §1).

A scratch copy of the workflow with the demo config is brought up to date
without computing anything: every planned output is created empty and
``--touch`` records each job's params. Then one setting of each study is
changed and a dry run (params trigger) must schedule, for that reason, exactly
the jobs whose computation reads the setting according to the protocol — the
rest follow only because their inputs are rebuilt. Before, most settings were
not job params at all ("Nothing to be done") or a whole section was a param
of every experiment.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, ResourceSettings

from conftest import PROJECT, load_config
from vitlocal.errors import ConfigError
from vitlocal.studies import EXPERIMENTS
from vitlocal.studies.base import ConfigView, config_slice

DEMO = load_config("config/demo.yaml")
STUDY = DEMO["study_models"]
DVT = DEMO["dvt"]["models"]
REMOVED = [m for m in DEMO["retrieval"].get("removed_models", load_config("config.yaml")["retrieval"]["removed_models"])
           if m in DEMO["retrieval_models"]]  # the demo extends config.yaml
assert REMOVED, "the demo must keep a retrieval model with a <model>-<m> row"
CARD = DEMO["card"]["models"]  # each card model's own k-NN / top-m probes, and the layerwise k-NN it reads


#: One job per (experiment, model), figure and extraction kind, as in the paper preset: the finest cut, so each
#: experiment's reruns show. (The demo's per_study and per_model jobs rerun their parts together:
#: ``experiment_groups`` and ``extraction_jobs``, tested apart.)
JOBS = {"experiment_jobs": "per_experiment", "figure_jobs": "per_figure", "extraction": {**DEMO["extraction"], "jobs": "per_kind"}}


def _workflow(api, workdir: Path, overrides: dict | None):
    configfiles = [PROJECT / "config" / "demo.yaml", workdir / "jobs.yaml"]
    (workdir / "jobs.yaml").write_text(yaml.safe_dump(JOBS))
    if overrides:
        extra = workdir / "override.yaml"
        extra.write_text(yaml.safe_dump(overrides))
        configfiles.append(extra)
    return api.workflow(
        resource_settings=ResourceSettings(cores=1),
        config_settings=ConfigSettings(configfiles=configfiles),
        snakefile=workdir / "Snakefile",
        workdir=workdir,
    )


def job_key(job) -> tuple[str, ...]:
    """``(rule, model)`` of a per-model job, else ``(rule,)`` (experiment and extraction rules are one per job)."""
    w = job.wildcards_dict
    fields = ("experiment", "dataset", "subset", "model", "variant")
    return (job.rule.name, *(w[f] for f in fields if f in w))


def params_triggered(workdir: Path, overrides: dict | None) -> tuple[set[tuple[str, ...]], set[tuple[str, ...]]]:
    """Dry-run ``all``: (jobs scheduled because their params changed, every scheduled job)."""
    with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
        dag_api = _workflow(api, workdir, overrides).dag(DAGSettings(targets={"all"}))
        dag_api.execute_workflow(executor="dryrun")
        dag = dag_api.workflow_api._workflow.dag
        reasons = {job_key(job): dag.reason(job) for job in dag.jobs if job.rule.name != "all"}
        return ({key for key, reason in reasons.items() if reason.params_changed},
                {key for key, reason in reasons.items() if reason.finished or reason})  # the dry run "finishes" them


@pytest.fixture(scope="module")
def up_to_date(tmp_path_factory) -> Path:
    """A scratch demo workflow whose every output exists, touched in order, with its params recorded."""
    workdir = tmp_path_factory.mktemp("rerun")
    for name in ("Snakefile", "rules", "scripts", "schemas", "config", "config.yaml", "envs", "report"):
        (workdir / name).symlink_to(PROJECT / name)
    with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
        dag_api = _workflow(api, workdir, None).dag(DAGSettings(targets={"all"}))
        dag_api.execute_workflow(executor="dryrun")
        for job in dag_api.workflow_api._workflow.dag.jobs:
            for out in job.output:
                path = workdir / str(out)
                if out.is_directory:
                    path.mkdir(parents=True, exist_ok=True)
                else:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.touch()
    with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
        # forceall: every job is touched in order and records its params (not only the out-of-date ones).
        _workflow(api, workdir, None).dag(DAGSettings(targets={"all"}, forceall=True)).execute_workflow(
            pseudo_executor="touch")
    return workdir


def runs(experiment: str, models) -> set[tuple[str, ...]]:
    return {(f"experiment_{experiment}_{m}",) for m in models}


# setting changed -> the jobs whose computation reads it (demo config: models as configured there).
CASES = {
    # k-NN of every segmentation probe (Figs 1-4, Table 2, Table 5's mIoU, Fig 13, DVT's probes);
    # not tracking, retrieval (probes.knn_metric only) or the scene k-NN (scene.knn_k).
    "probes.knn_k": ({"probes": {"knn_k": 3}}, {
        *runs("train_size", STUDY), *runs("layerwise", STUDY), *runs("degradation", STUDY), *runs("ade20k", STUDY),
        *runs("variance_removal", STUDY), *runs("cityscapes_full_vs_tile", ["dino"]),
        *runs("dvt_cityscapes", DVT), *runs("dvt_ade20k", DVT), *runs("dvt_robustness", DVT),
        *runs("card", CARD), *runs("layerwise", CARD), ("predict_qualitative",)}),
    # Fig 4b/4c and the cards' top-m rows: not Fig 4a's spectrum, Table 6's R², the top-dims overlap, or any other study.
    "variance.removed_dims": ({"variance": {"removed_dims": [0, 5]}},
                              {*runs("variance_removal", STUDY), *runs("card", CARD)}),
    # only the retrieval models with a <model>-<m> row (retrieval.removed_models); not DVT's retrieval.
    "retrieval.removed_dims": ({"retrieval": {"removed_dims": 8}}, runs("fair1m_retrieval", REMOVED)),
    # Fig 11's writer only.
    "retrieval.fig11_models": ({"retrieval": {"fig11_models": ["dino"]}}, {("fig11",)}),
    # every tracking experiment (Figs 8, 9, Table 5's tracking, DVT's tracking); not Table 5's Cityscapes mIoU.
    "tracking.gaps": ({"tracking": {"gaps": [1, 2]}}, {
        *runs("tracking", ["dino"]), *runs("tracking_mot17", ["dino"]), *runs("tracking_full_vs_tile", ["dino"]),
        *runs("dvt_tracking", DVT)}),
    # the scene k-NN of Fig 5 only: not its feature job, not Table 4.
    "scene.train_fraction": ({"scene": {"train_fraction": 0.75}}, runs("scene_knn", DEMO["scene"]["models"])),
    # frequency noise only: the degraded extraction jobs (Fig 3's, Fig 7's freqnoise-<i> files) and Fig 10's
    # illustration; not the clean or transformed extraction, which never add frequency noise.
    "degradations.frequency_noise_sigma": ({"degradations": {**DEMO["degradations"], "frequency_noise_sigma": 30}}, {
        *{(f"extract_cityscapes_{m}_degraded",) for m in STUDY},
        *{(f"extract_fair1m_{m}_degraded",) for m in DEMO["retrieval_models"]}, ("fig10",)}),
    # the DVT denoiser's training only.
    "dvt.stage2.lr": ({"dvt": {"stage2": {**DEMO["dvt"]["stage2"], "lr": 0.002}}},
                      {("dvt_stage2", m) for m in DVT}),
}


def test_unchanged_config_schedules_nothing(up_to_date):
    assert params_triggered(up_to_date, None) == (set(), set())


@pytest.mark.parametrize("setting", CASES)
def test_changed_setting_reruns_exactly_its_jobs(up_to_date, setting):
    overrides, expected = CASES[setting]
    triggered, scheduled = params_triggered(up_to_date, overrides)
    assert triggered == expected, (f"{setting}: missing {sorted(expected - triggered)}, "
                                   f"extra {sorted(triggered - expected)}")
    assert scheduled >= expected


def test_frame_size_reruns_only_video_extraction(up_to_date):
    """Only video frames are resized to tracking.frame_size: the BDD100K / MOT17 feature jobs, no other."""
    triggered, _ = params_triggered(up_to_date, {"tracking": {"frame_size": [96, 160]}})
    assert triggered, "changing tracking.frame_size reran nothing"
    assert {key[0] for key in triggered} == {f"extract_{d}_{m}" for d in ("bdd100k", "mot17")
                                             for m in DEMO["tracking_models"]}


def test_card_dvt_reruns_only_the_cards_that_read_dvt(up_to_date):
    """card.dvt changes what the card of a carded model of dvt.models reads (DVT's files), nothing else: its job
    reruns because its set of input files changed; the other cards' jobs keep their inputs and params."""
    assert DEMO["card"]["dvt"] and DVT == ["dino"] and "tiny_reg4" in CARD
    with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
        dag_api = _workflow(api, up_to_date, {"card": {**DEMO["card"], "dvt": False}}).dag(DAGSettings(targets={"all"}))
        dag_api.execute_workflow(executor="dryrun")
        dag = dag_api.workflow_api._workflow.dag
        reasons = {job_key(job): dag.reason(job) for job in dag.jobs if job.rule.name != "all"}
    assert {key for key, reason in reasons.items() if reason.input_changed} == {("experiment_card_dino",)}
    # (its params carry its inputs, so they change with them; no other job's do)
    assert {key for key, reason in reasons.items() if reason.params_changed} <= {("experiment_card_dino",)}


def test_config_view_refuses_undeclared_keys():
    config = {"seed": 3, "probes": {"knn_k": 1, "knn_metric": "dot"}, "models": {"mae": {"seed": 4}, "dino": {}}}
    view = ConfigView(config, ("probes.knn_metric", "models.{model}"), "mae", owner="experiment x")
    assert view["probes"]["knn_metric"] == "dot"
    assert view.get("models").get("mae") == {"seed": 4}
    for read in (lambda: view["seed"], lambda: view.get("seed", 0), lambda: view["probes"].get("knn_k", 1),
                 lambda: view["models"]["dino"]):
        with pytest.raises(ConfigError, match="experiment x reads config key"):
            read()
    assert config_slice(config, ("probes.knn_metric", "models.{model}", "absent.key"), "mae") == {
        "probes": {"knn_metric": "dot"}, "models": {"mae": {"seed": 4}}}


def test_every_experiment_declares_its_keys():
    """A declared key that the validated config does not have is a typo: the job would never rerun on it."""
    from snakemake.utils import validate

    config = load_config("config/demo.yaml")
    validate(config, str(PROJECT / "schemas" / "config.schema.yaml"))
    for name, spec in EXPERIMENTS.items():
        for key in spec.keys(config, "mae"):
            node = config
            for part in key.format(model="mae").split("."):
                assert isinstance(node, dict) and part in node, f"{name}: key {key!r} is not in the config"
                node = node[part]


ROW_MODULES = ("vitlocal.studies.probing.compute", "vitlocal.studies.variance.compute",
               "vitlocal.studies.retrieval.compute", "vitlocal.studies.tracking.compute",
               "vitlocal.studies.scene.gsd", "vitlocal.studies.scene.reconstruction", "vitlocal.studies.dvt.compute",
               "vitlocal.studies.card.compute")


def test_every_experiment_reads_only_its_declared_keys(monkeypatch):
    """Each experiment's ``run`` on a view of the demo config that holds only its declared keys.

    The computations (``*_rows``), file reads and the model build are stubbed: every config read of a job
    happens before them (settings, probes, roots, splits), and an undeclared one raises.
    """
    import importlib

    import pandas as pd
    from snakemake.utils import validate

    from vitlocal.evaluation.segmentation import EvalTarget
    from vitlocal.layout import Layout
    from vitlocal.studies.base import ExperimentJob

    config = load_config("config/demo.yaml")
    validate(config, str(PROJECT / "schemas" / "config.schema.yaml"))
    calls = []
    for name in ROW_MODULES:
        module = importlib.import_module(name)
        for attr in dir(module):
            if attr.endswith("_rows") and callable(getattr(module, attr)):
                monkeypatch.setattr(module, attr, lambda *a, _f=attr, **k: calls.append(_f) or pd.DataFrame())
    monkeypatch.setattr(EvalTarget, "load", classmethod(lambda cls, *a, **k: None))
    monkeypatch.setattr("vitlocal.subsets.read_manifest", lambda path: pd.DataFrame())
    monkeypatch.setattr("vitlocal.models.extractor.build_model", lambda spec, weights_dir: None)

    layout = Layout(config, "results/demo")
    models = {"reconstruction": "mae_decoder", "scene_knn": "scalemae"}
    for name, spec in EXPERIMENTS.items():
        for model in {models.get(name, "mae"), "dino"}:  # mae: a retrieval.removed_models model, dino: not
            if name == "reconstruction" and model == "dino":
                continue
            view = ConfigView(spec.config_of(config, model), spec.keys(config, model), model, owner=name)
            params = spec.params(config, model, root_of=lambda d: f"root/{d}", depth=12)
            before = len(calls)
            spec.run(ExperimentJob(name, model, spec.inputs(layout, model), params, view))
            assert len(calls) == before + 1, f"{name}: its computation was not reached"
