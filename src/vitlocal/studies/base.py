"""What a study registers: its experiments (one job per model) and its outputs.

An :class:`Experiment` says which files it reads, by role, right where it is
registered (``inputs``), and how to turn them into tidy rows (``run``). An
:class:`Output` is a named figure or table drawn from experiment CSVs
(``write``), or made by a rule of its own (``write`` None). The workflow only
asks these objects; it knows no experiment by name.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from ..layout import Layout

#: ``{role: path}`` or ``{role: {name: path}}``: the files one experiment job reads.
Inputs = dict[str, Any]

#: Output kind -> files written under ``results/<preset>/figures/<id>/``.
SUFFIXES = {"figure": ("pdf", "png", "csv"), "table": ("csv", "tex"), "figure+table": ("csv", "tex", "pdf", "png")}


@dataclasses.dataclass(frozen=True)
class ExperimentJob:
    """One experiment for one model: its files by role, the rule's settings, the config."""

    experiment: str
    model: str
    inputs: Mapping[str, Any]
    params: Mapping[str, Any]
    config: Mapping[str, Any]

    @functools.cached_property
    def probes(self):
        """The probe settings of the config (k, metric, linear schedule, seed, device)."""
        from ..evaluation.segmentation import ProbeSettings

        return ProbeSettings.from_config(self.config)

    def target(self, dataset: str):
        """The validation images of ``dataset`` that score the probes (``val_manifest`` input)."""
        from ..evaluation.segmentation import EvalTarget

        return EvalTarget.load(dataset, self.params["roots"][dataset], self.inputs["val_manifest"])


@dataclasses.dataclass(frozen=True)
class Experiment:
    """``run(job) -> rows``; ``inputs(layout, model) -> files by role``; ``gpu``: does the job want one."""

    run: Callable[[ExperimentJob], pd.DataFrame]
    inputs: Callable[[Layout, str], Inputs]
    gpu: bool = True


def config_models(key: str) -> Callable[[Mapping[str, Any]], list[str]]:
    """The model list a config key names (``study_models``, ``retrieval_models``, ...)."""
    return lambda config: list(config.get(key, []))


#: ``(experiment, model)`` pairs whose CSVs an output draws.
Jobs = list[tuple[str, str]]


@dataclasses.dataclass(frozen=True)
class Output:
    """A named figure or table.

    ``jobs(layout)``: the ``(experiment, model)`` CSVs it draws (empty: not
    built with this config, e.g. its dataset or models are absent);
    ``write(rows, out, config)`` writes every file of ``out`` (suffix -> path)
    and returns the numbers shown. ``write`` None: the study's rules file has
    a rule of its own for it, and ``available(layout)`` says whether it is built.
    """

    kind: str
    write: Callable[[pd.DataFrame, Mapping[str, str], Mapping[str, Any]], pd.DataFrame] | None = None
    jobs: Callable[[Layout], Jobs] = lambda layout: []
    available: Callable[[Layout], bool] | None = None
    title: str = ""

    def __post_init__(self):
        if self.kind not in SUFFIXES:
            raise ValueError(f"output kind {self.kind!r}; known: {', '.join(SUFFIXES)}")

    def reads(self, layout: Layout) -> list[str]:
        """The experiment CSVs it draws."""
        return [layout.experiment_file(e, m) for e, m in self.jobs(layout)]

    def is_built(self, layout: Layout) -> bool:
        if self.available is not None:
            return self.available(layout)
        return bool(self.jobs(layout))


def figure_writer(
    package: str,
    name: str,
    *,
    whole_out: bool = False,
    options: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
) -> Callable[[pd.DataFrame, Mapping[str, str], Mapping[str, Any]], Any]:
    """``write(rows, out, config)`` calling ``<package>.figures.<name>``: the one writer every study registers.

    A table gets ``(rows, csv, tex)``, a figure ``(rows, pdf, png, csv)``, a
    figure+table ``(rows, csv, tex, pdf, png)``; ``whole_out``: the writer takes
    ``(rows, out, config)`` itself; ``options(config)``: keyword arguments
    drawn from the config. The figures module is imported on first use: the
    registry stays light (no matplotlib) for the Snakefile.
    """

    def write(rows, out, config):
        writer = getattr(importlib.import_module(f"{package}.figures"), name)
        if whole_out:
            return writer(rows, out, config)
        kwargs = options(config) if options else {}
        if "tex" in out and "pdf" in out:
            return writer(rows, out["csv"], out["tex"], out["pdf"], out["png"], **kwargs)
        if "tex" in out:
            return writer(rows, out["csv"], out["tex"], **kwargs)
        return writer(rows, out["pdf"], out["png"], out["csv"], **kwargs)

    return write


def rows_of(
    experiments: str | Sequence[str],
    models: Callable[[Mapping[str, Any]], list[str]] = config_models("study_models"),
    *,
    needs: Sequence[str] = (),
) -> Callable[[Layout], Jobs]:
    """``Output.jobs``: ``experiments`` × ``models`` (none unless the ``needs`` datasets are configured)."""
    names = [experiments] if isinstance(experiments, str) else list(experiments)

    def jobs(layout: Layout) -> Jobs:
        if not layout.has(*needs):
            return []
        return [(e, m) for e in names for m in models(layout.config)]

    return jobs


@dataclasses.dataclass(frozen=True)
class Study:
    """One study of the paper: its experiments and outputs by name, and its rules file."""

    name: str
    experiments: Mapping[str, Experiment]
    outputs: Mapping[str, Output]


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
