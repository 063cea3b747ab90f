"""Snakemake entry point: results/<preset>/report/reproduction.md (rules/report.smk)."""

import sys
from pathlib import Path

# The workflow's own package, also inside `--sdm conda` environments.
sys.path.insert(0, str(Path(snakemake.scriptdir).parent / "src"))  # noqa: F821

from vitlocal.reproduction import write_report
from vitlocal.workflow import rule_logging

with rule_logging(snakemake.log[0]) as log:  # noqa: F821 (injected by Snakemake)
    sm = snakemake  # noqa: F821
    comparison = write_report(
        list(sm.input), sm.output.md, sm.params.preset, sm.params.data_source, sm.params.weights_summary,
        out_csv=sm.output.csv,
    )
    log.info("%d rows compared -> %s", len(comparison), sm.output.md)
