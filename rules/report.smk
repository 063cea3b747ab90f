# Our numbers beside the published ones, and the regenerated paper.


def report_inputs():
    """Every experiment CSV the figures use (each once)."""
    files = []
    for figure, (experiment, _) in FIGURE_OUTPUTS.items():
        files += [f for f in experiment_files(experiment, figure_models(figure)) if f not in files]
    return files


rule write_reproduction_report:
    input:
        report_inputs(),
    output:
        md=report(f"{RESULTS}/report/reproduction.md", category="Reproduction"),
        csv=f"{RESULTS}/report/reproduction.csv",
    params:
        preset=PRESET,
        data_source=data_source(),
        weights_summary=weights_summary(),
    log:
        f"{LOGS}/report/reproduction.log",
    conda:
        "../envs/plot.yaml"
    script:
        "../scripts/write_reproduction_report.py"


# Builds the PDF when LaTeX is installed; otherwise the job fails with the
# apt-get command that installs it. Not part of `all`.
rule paper:
    input:
        [path for figure in FIGURES for path in output_paths(figure, RESULTS).values()],
    output:
        pdf=f"{RESULTS}/paper/main.pdf",
    params:
        data_source=data_source(),
        weights=weights_summary(),
    log:
        f"{LOGS}/paper.log",
    conda:
        "../envs/plot.yaml"
    shell:
        "python -m vitlocal.paper --preset {PRESET} --data-source {params.data_source}"
        " --weights '{params.weights}' --results {RESULTS} --out {RESULTS}/paper > {log} 2>&1"
