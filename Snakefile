# vitlocal: regenerate "Analyzing Local Representations of Self-supervised
# Vision Transformers" (arXiv 2401.00463), plus DVT, from raw data.
#
#   snakemake --cores 8 all                                  # paper preset (config.yaml)
#   snakemake --cores 2 all --configfile config/demo.yaml    # embedded demo
#   snakemake --cores 8 fig2                                 # one figure (see README)

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/subsets.smk"
include: "rules/weights.smk"
include: "rules/features.smk"
include: "rules/experiments.smk"
include: "rules/probing.smk"
include: "rules/variance.smk"
include: "rules/retrieval.smk"
include: "rules/scene.smk"
include: "rules/dvt.smk"
include: "rules/tracking.smk"
include: "rules/card.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        get_final_outputs(),


rule figures:
    input:
        figure_targets(),
