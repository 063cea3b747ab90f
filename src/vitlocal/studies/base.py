"""What a study registers: its experiments (one job per model) and its outputs.

An :class:`Experiment` says which files it reads, by role, right where it is
registered (``inputs``), which config keys it reads (``config_keys``), and how
to turn them into tidy rows (``run``). An :class:`Output` is a named figure or
table drawn from experiment CSVs (``write``), or made by a rule of its own
(``write`` None). The workflow only asks these objects; it knows no
experiment by name.

A job sees only the config keys it declares (:class:`ConfigView`: reading
any other key is an error), and its rule passes exactly that slice as a
param, so changing a setting reruns exactly the jobs that read it.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from ..errors import ConfigError
from ..layout import Layout

#: ``{role: path}`` or ``{role: {name: path}}``: the files one experiment job reads.
Inputs = dict[str, Any]

#: Dotted config keys a job reads: ``"probes"`` (a whole section), ``"tracking.gaps"``, ``"models.{model}"``.
ConfigKeys = tuple[str, ...]

#: Output kind -> files written under ``results/<preset>/figures/<id>/``.
SUFFIXES = {"figure": ("pdf", "png", "csv"), "table": ("csv", "tex"), "figure+table": ("csv", "tex", "pdf", "png")}


def _key_tree(keys: Sequence[str], model: str | None) -> dict[str, Any]:
    """``["a.b", "a.c", "d"]`` -> ``{"a": {"b": True, "c": True}, "d": True}`` (True: the whole value)."""
    tree: dict[str, Any] = {}
    for key in keys:
        if "{model}" in key and model is None:
            raise ConfigError(f"config key {key!r} names the model, but no model was given")
        parts = key.format(model=model).split(".")
        node = tree
        for part in parts[:-1]:
            if node.get(part) is True:
                break
            node = node.setdefault(part, {})
        else:
            node[parts[-1]] = True
    return tree


def _slice(config: Mapping[str, Any], tree: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, sub in tree.items():
        if key in config:
            value = config[key]
            out[key] = value if sub is True or not isinstance(value, Mapping) else _slice(value, sub)
    return out


def config_slice(config: Mapping[str, Any], keys: Sequence[str], model: str | None = None) -> dict[str, Any]:
    """The part of ``config`` that ``keys`` name (nested as in the config; keys absent from it left out).

    What a rule passes as a param: Snakemake reruns the job when it changes.
    """
    return _slice(config, _key_tree(keys, model))


class ConfigView(Mapping):
    """Read-only view of the declared ``keys`` of a config: reading any other key raises :class:`ConfigError`.

    Keeps each experiment's ``config_keys`` honest: a setting it reads but
    does not declare would not rerun it when changed.
    """

    def __init__(self, config: Mapping[str, Any], keys: Sequence[str] = (), model: str | None = None, *,
                 owner: str = "this job", _tree: Mapping[str, Any] | None = None, _path: str = ""):
        self._data = config
        self._tree = _key_tree(keys, model) if _tree is None else _tree
        self._path = _path
        self._owner = owner

    def _check(self, key: str) -> Any:
        if key not in self._tree:
            declared = ", ".join(sorted(self._tree)) or "none"
            raise ConfigError(f"{self._owner} reads config key {self._path}{key!r}, which it does not declare "
                              f"in its config_keys (declared here: {declared}); declare it where it is registered")
        return self._tree[key]

    def __getitem__(self, key: str) -> Any:
        sub = self._check(key)
        value = self._data[key]
        if sub is True or not isinstance(value, Mapping):
            return value
        return ConfigView(value, owner=self._owner, _tree=sub, _path=f"{self._path}{key}.")

    def get(self, key: str, default: Any = None) -> Any:
        self._check(key)
        return self[key] if key in self._data else default

    def __contains__(self, key: object) -> bool:
        self._check(key)  # type: ignore[arg-type]
        return key in self._data

    def __iter__(self):
        return (key for key in self._tree if key in self._data)

    def __len__(self) -> int:
        return sum(1 for _ in self)


@dataclasses.dataclass(frozen=True)
class ExperimentJob:
    """One experiment for one model: its files by role, the rule's settings, the config."""

    experiment: str
    model: str
    inputs: Mapping[str, Any]
    params: Mapping[str, Any]
    config: Mapping[str, Any]
    #: Where ``run`` appends its per-unit statistics (``evaluation.units``), if its experiment writes them.
    units: list[pd.DataFrame] = dataclasses.field(default_factory=list)

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
    """``run(job) -> rows``; ``inputs(layout, model) -> files by role``; ``gpu``: does the job want one;
    ``config_keys``: every config key ``run`` reads (through ``job.config``, ``job.params`` or ``job.probes``),
    or ``(config, model) -> keys`` where it depends on the model; ``units``: ``run`` also appends per-unit
    statistics to ``job.units``, written beside the CSV (``layout.experiment_units``, read by the card)."""

    run: Callable[[ExperimentJob], pd.DataFrame]
    inputs: Callable[[Layout, str], Inputs]
    gpu: bool = True
    config_keys: ConfigKeys | Callable[[Mapping[str, Any], str], ConfigKeys] = ()
    units: bool = False

    def keys(self, config: Mapping[str, Any], model: str) -> ConfigKeys:
        """The config keys the job of ``model`` reads."""
        return tuple(self.config_keys(config, model) if callable(self.config_keys) else self.config_keys)

    def config_of(self, config: Mapping[str, Any], model: str) -> dict[str, Any]:
        """The slice of ``config`` the job of ``model`` reads: its rule's ``config`` param."""
        return config_slice(config, self.keys(config, model), model)

    def params(self, config: Mapping[str, Any], model: str, *, root_of: Callable[[str], str],
               depth: int) -> dict[str, Any]:
        """The rule's ``settings`` of one job, from the declared keys only: ``roots`` of the datasets it
        reads (``datasets.<name>``), ``layers`` (``extraction.layers`` up to the model's ``depth``),
        ``seed``, and the declared ``variance`` settings by name."""
        sliced = self.config_of(config, model)
        params: dict[str, Any] = {"roots": {d: root_of(d) for d in sliced.get("datasets", {})}}
        if "layers" in sliced.get("extraction", {}):
            params["layers"] = sorted(layer for layer in sliced["extraction"]["layers"] if layer <= depth)
        if "seed" in sliced:
            params["seed"] = sliced["seed"]
        return {**params, **sliced.get("variance", {})}


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
    #: Config keys ``write`` reads (its rule passes exactly these as a param).
    config_keys: ConfigKeys = ()

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


#: How experiment jobs are cut (config ``experiment_jobs``).
EXPERIMENT_JOB_MODES = ("per_experiment", "per_study", "per_study_all_models")


@dataclasses.dataclass(frozen=True)
class ExperimentGroup:
    """The ``(experiment, model)`` pairs one job runs, in order: one pair, a study's experiments for one model,
    or a study's experiments for every model (``model`` None)."""

    name: str  #: the experiment's name, or the study's
    model: str | None
    jobs: tuple[tuple[str, str], ...]
    per_study: bool = False

    @property
    def rule(self) -> str:
        """``experiment_<experiment>_<model>``, ``study_<study>_<model>`` or ``study_<study>``."""
        return f"{'study' if self.per_study else 'experiment'}_{self.name}" + (f"_{self.model}" if self.model else "")

    @property
    def log_name(self) -> str:
        """``experiments/<experiment>/<model>``, ``studies/<study>/<model>`` or ``studies/<study>`` (logs,
        benchmarks)."""
        return f"{'studies' if self.per_study else 'experiments'}/{self.name}" + (f"/{self.model}" if self.model else "")

    @property
    def experiments(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(e for e, _ in self.jobs))


def experiment_groups(jobs: Sequence[tuple[str, str]], study_of: Mapping[str, str], mode: str) -> list[ExperimentGroup]:
    """The workflow's experiment jobs for the ``(experiment, model)`` pairs the outputs draw.

    ``per_experiment``: one job each (a changed setting reruns only the
    experiments that read it; the most jobs for a cluster to spread).
    ``per_study``: one job per (study, model), running its experiments in
    registry order (each job pays torch's import once; a setting read by one
    experiment reruns the study's others for that model too).
    ``per_study_all_models``: one job per study for every model (fewest imports;
    any change reruns the study for every model, and its models run one after
    another).
    """
    if mode not in EXPERIMENT_JOB_MODES:
        raise ConfigError(f"experiment_jobs {mode!r}; expected one of {', '.join(EXPERIMENT_JOB_MODES)}")
    groups: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for experiment, model in jobs:
        if mode == "per_experiment":
            key = (experiment, model)
        else:
            key = (study_of[experiment], model if mode == "per_study" else "")
        if (experiment, model) not in groups.setdefault(key, []):
            groups[key].append((experiment, model))
    per_study = mode != "per_experiment"
    return [ExperimentGroup(name, model or None, tuple(pairs), per_study) for (name, model), pairs in sorted(groups.items())]
