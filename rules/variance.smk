# Feature variance (paper Section 4): Fig 4a-c, the top-m overlap, Table 6
# (src/vitlocal/studies/variance/).

# One named target per figure and table (`snakemake --cores 8 fig4b`).
for _figure in study_outputs("variance"):

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
