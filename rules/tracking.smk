# Object tracking (paper Section 6): Figs 8, 9, 12 and Table 5
# (src/vitlocal/studies/tracking/).

# One named target per figure and table (`snakemake --cores 8 fig8`).
for _figure in study_outputs("tracking"):

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
