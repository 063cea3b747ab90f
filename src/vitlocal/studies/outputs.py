"""Write a named figure or table from experiment CSVs (the rule of every registered output)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from ..errors import ConfigError
from . import output
from .base import SUFFIXES
from .base import concat_results


def output_paths(figure: str, results_dir: str | Path) -> dict[str, str]:
    """``{suffix: path}`` of a figure's files under ``results/<preset>/figures/<figure>/``."""
    return {s: f"{results_dir}/figures/{figure}/{figure}.{s}" for s in SUFFIXES[output(figure).kind]}


def make_output(
    figure: str, result_csvs: Sequence[str], out: Mapping[str, str], config: Mapping[str, Any]
) -> pd.DataFrame:
    """Write ``figure`` from the experiment CSVs (one per model and experiment); return the numbers it shows."""
    spec = output(figure)
    if spec.write is None:
        raise ConfigError(f"{figure} is made by a rule of its own, not from experiment CSVs")
    return spec.write(concat_results(result_csvs), out, config)
