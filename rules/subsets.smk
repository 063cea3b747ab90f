# Subsets are manifests (CSV) so every later stage reads the same images in
# the same order, and the choice itself is reviewable.


rule select_subset:
    input:
        unpack(get_dataset_input),
    output:
        manifest=f"{RESULTS}/subsets/{{dataset}}/{{subset}}.csv",
    params:
        root=lambda wildcards: dataset_root(wildcards.dataset),
        settings=lambda wildcards: config["subsets"].get(wildcards.dataset, {}),
        seed=config["seed"],
    priority: PRIORITY["data"]  # seconds-long jobs every later job waits for (rules/common.smk)
    log:
        f"{LOGS}/subsets/{{dataset}}/{{subset}}.log",
    conda:
        "../envs/data.yaml"
    script:
        "../scripts/select_subset.py"


rule subsets:
    input:
        subset_manifests(),
