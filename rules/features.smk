# One Parquet file per (dataset, subset, model, variant): every probe,
# figure and table reads these, so the ViT runs once per image and variant.
# One job per (dataset, model) makes its clean and whole-image files of every
# subset; one more its degraded, one its transformed variants; all in one job
# with `extraction.jobs: per_model`, every model of a dataset in one with
# `per_dataset` (the plan and why: src/vitlocal/features/plan.py). The jobs are
# planned from the files the experiments, DVT and Fig 13 read, so no job makes
# a file nobody reads.

from vitlocal.features.plan import extraction_jobs


EXTRACTION_JOBS = extraction_jobs(
    extraction_demand(), RESULTS, DATASETS, degradation_variants(), transform_variants(),
    cut=config["extraction"]["jobs"])


for _job in EXTRACTION_JOBS:

    rule:
        name:
            _job.name
        input:
            manifests=[LAYOUT.manifest(_job.dataset, s) for s in _job.subsets],
            **dataset_input(_job.dataset),
            weights=[path for path in map(weights_file, _job.models) if path],
        output:
            # CLS tokens go to the sibling <variant>.cls.parquet when the model has one.
            features=[f.path for f in _job.files],
        params:
            # One entry per output file, in order: its model, subset, variant and stored blocks.
            files=[{"model": f.model, "subset": f.subset, "variant": f.variant,
                    "layers": layers_for(_job.dataset, f.subset, f.model, f.variant)} for f in _job.files],
            manifests={s: LAYOUT.manifest(_job.dataset, s) for s in _job.subsets},
            **extract_params(_job),
        threads: config["extraction"]["threads"]
        resources:
            gpu=1,
            mem_mb=16000,
            runtime=240,  # minutes, on one GPU (paper preset)
        priority: extraction_priority(f.path for f in _job.files)
        log:
            f"{LOGS}/features/{_job.dataset}/{_job.name}.log",
        benchmark:
            f"{BENCHMARKS}/features/{_job.dataset}/{_job.name}.tsv"
        conda:
            "../envs/torch.yaml"
        script:
            "../scripts/extract_features.py"


rule features:
    input:
        feature_files(),
