"""Run one experiment job, or read several experiments' rows back, without Snakemake.

The registry (``vitlocal.studies``) knows which files an experiment reads and
what to do with them; the rule ``run_experiment`` and tests both come here.
Inputs are paths keyed by role; the result is a tidy DataFrame (see
reproduction.py).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import pandas as pd

from . import ExperimentJob, experiment


def run_experiment(
    name: str, model: str, inputs: Mapping[str, Any], params: Mapping[str, Any], config: Mapping[str, Any]
) -> pd.DataFrame:
    """Tidy rows of experiment ``name`` for ``model``.

    ``inputs``: feature files / manifests by role (``Experiment.inputs``);
    ``params``: ``roots`` ({dataset: root}) plus the experiment's settings;
    ``config``: the validated workflow config (probe settings, seed, device).
    """
    return experiment(name).run(ExperimentJob(name, model, inputs, params, config))


NUMERIC_COLUMNS = ("value", "layer", "rank", "dim")


def concat_results(paths: Sequence[str]) -> pd.DataFrame:
    """All rows (and extra columns) of several experiment CSVs as one frame.

    Text columns stay text (an empty level is ``""``, not NaN); the numeric
    ones are parsed, an empty layer becoming ``<NA>``.
    """
    frames = []
    for path in paths:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        for column in NUMERIC_COLUMNS:
            if column in table:
                values = pd.to_numeric(table[column].replace("", None), errors="raise")
                table[column] = values if column == "value" else values.astype("Int64")
        frames.append(table)
    return pd.concat(frames, ignore_index=True)
