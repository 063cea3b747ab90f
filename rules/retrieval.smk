# FAIR1M object-patch retrieval (paper Section 5): Figs 6, 7, 11, Table 3
# (src/vitlocal/studies/retrieval/). The search itself is one run_experiment
# job per retrieval model (rules/experiments.smk).

# One named target per figure and table (`snakemake --cores 8 fig6`).
for _figure in study_outputs("retrieval"):

    rule:
        name:
            _figure
        input:
            output_reads(_figure),
        output:
            **figure_files(_figure),
        params:
            figure=_figure,
        log:
            f"{LOGS}/figures/{_figure}.log",
        conda:
            "../envs/torch.yaml"
        script:
            "../scripts/make_figure.py"
