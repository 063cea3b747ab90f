# The experiment CSVs: a tidy CSV of every number one experiment produces for
# one model. Which files it reads and what it computes: the study registry
# (src/vitlocal/studies/). Figures combine models.
#
# How they are cut into jobs is `experiment_jobs` (config.yaml): one job per
# (experiment, model), one per (study, model) running the study's experiments
# one after another, or one per study for every model
# (studies.base.experiment_groups).

from vitlocal.studies.base import experiment_groups

EXPERIMENT_GROUPS = experiment_groups(experiment_jobs(), STUDY_OF, config["experiment_jobs"])


for _group in EXPERIMENT_GROUPS:

    rule:
        name:
            _group.rule
        input:
            list(dict.fromkeys(path for e, m in _group.jobs for path in flatten(experiment_inputs(e, m)))),
        output:
            tables=[experiment_file(e, m) for e, m in _group.jobs],
            # Per-unit statistics beside the CSVs of the experiments that write them (the card's intervals).
            units=[experiment_units(e, m) for e, m in _group.jobs if EXPERIMENTS[e].units],
        params:
            # One entry per (experiment, model), in the order of output.tables.
            jobs=[{"experiment": e, "model": m, "inputs": experiment_inputs(e, m), "settings": experiment_settings(e, m),
                   "config": experiment_config(e, m)} for e, m in _group.jobs],
        threads: config["extraction"]["threads"]
        resources:
            gpu=int(any(EXPERIMENTS[name].gpu for name in _group.experiments)),
            mem_mb=16000,
            runtime=240,  # minutes (paper preset)
        priority: PRIORITY["experiments"]
        log:
            f"{LOGS}/{_group.log_name}.log",
        benchmark:
            f"{BENCHMARKS}/{_group.log_name}.tsv"
        conda:
            "../envs/torch.yaml"
        script:
            "../scripts/run_experiment.py"
