# Our numbers beside the published ones, and the regenerated paper.


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
        "../envs/torch.yaml"
    script:
        "../scripts/write_reproduction_report.py"


# Builds the PDF when LaTeX is installed; otherwise the job fails with the
# apt-get command that installs it. Not part of `all`.
rule paper:
    input:
        figure_targets(),
    output:
        pdf=f"{RESULTS}/paper/main.pdf",
    params:
        preset=PRESET,
        results=lambda wildcards, output: os.path.dirname(os.path.dirname(output.pdf)),  # results/<preset>
        data_source=data_source(),
        weights=weights_summary(),
        build_dir=lambda wildcards, output: os.path.dirname(output.pdf),
    log:
        f"{LOGS}/paper.log",
    conda:
        "../envs/torch.yaml"
    shell:
        "python -m vitlocal.paper --preset {params.preset} --data-source {params.data_source}"
        " --weights '{params.weights}' --results {params.results} --out {params.build_dir} > {log} 2>&1"
