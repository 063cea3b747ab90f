# The experiment CSVs: a tidy CSV of every number one experiment produces for
# one model. Which files it reads and what it computes: the study registry
# (src/vitlocal/studies/). Figures combine models.
#
# How they are cut into jobs is `experiment_jobs` (config.yaml): one job per
# (experiment, model), or one per (study, model) running the study's
# experiments one after another (studies.base.experiment_groups).

from vitlocal.studies.base import experiment_groups

EXPERIMENT_GROUPS = experiment_groups(experiment_jobs(), STUDY_OF, config["experiment_jobs"])


def group_params(group, what):
    """``{experiment: what(experiment, model)}`` over a group's experiments."""
    return {name: what(name, group.model) for name in group.experiments}


for _group in EXPERIMENT_GROUPS:

    rule:
        name:
            _group.rule
        input:
            [path for name in _group.experiments for path in flatten(experiment_inputs(name, _group.model))],
        output:
            tables=[experiment_file(name, _group.model) for name in _group.experiments],
            # Per-unit statistics beside the CSVs of the experiments that write them (the card's intervals).
            units=[experiment_units(name, _group.model) for name in _group.experiments if EXPERIMENTS[name].units],
        params:
            model=_group.model,
            experiments=list(_group.experiments),
            inputs=group_params(_group, experiment_inputs),
            settings=group_params(_group, experiment_settings),
            config=group_params(_group, experiment_config),
        threads: config["extraction"]["threads"]
        resources:
            gpu=int(any(EXPERIMENTS[name].gpu for name in _group.experiments)),
            mem_mb=16000,
            runtime=240,  # minutes (paper preset)
        log:
            f"{LOGS}/{_group.log_name}.log",
        benchmark:
            f"{BENCHMARKS}/{_group.log_name}.tsv"
        conda:
            "../envs/torch.yaml"
        script:
            "../scripts/run_experiment.py"
