"""Run one experiment job without Snakemake.

The registry (``vitlocal.studies``) knows which files an experiment reads and
what to do with them; the rule ``run_experiment`` and tests both come here.
Inputs are paths keyed by role; the result is a tidy DataFrame (see
reproduction.py).
"""

from __future__ import annotations

from typing import Any, Mapping

import pandas as pd

from . import ExperimentJob, experiment


def run_experiment(
    name: str, model: str, inputs: Mapping[str, Any], params: Mapping[str, Any], config: Mapping[str, Any],
    units: list[pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """Tidy rows of experiment ``name`` for ``model``.

    ``inputs``: feature files / manifests by role (``Experiment.inputs``);
    ``params``: ``roots`` ({dataset: root}) plus the experiment's settings;
    ``config``: the validated workflow config (probe settings, seed, device);
    ``units``: a list the experiment appends its per-unit statistics to (``Experiment.units``).
    """
    job = ExperimentJob(name, model, inputs, params, config, [] if units is None else units)
    return experiment(name).run(job)
