# FAIR1M object-patch retrieval (paper Section 5): Figs 6, 7, 11, Table 3
# (src/vitlocal/studies/retrieval/). The search itself is one run_experiment
# job per retrieval model (rules/experiments.smk).

# One named target per figure and table (`snakemake --cores 8 fig6`).
figure_rules("retrieval")
