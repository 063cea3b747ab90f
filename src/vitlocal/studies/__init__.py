"""The studies of the paper, one subpackage each, and the registry the workflow reads.

Each study (``probing``, ``variance``, ...) exposes ``STUDY``: its experiments,
with the files each one reads, and its named outputs. Its rules live in
``rules/<study>.smk``. Adding a study: a new subpackage here, one line in
``STUDIES``, one rules file included by the Snakefile.
"""

from __future__ import annotations

from ..errors import ConfigError
from .base import Experiment, ExperimentJob, Output, Study
from .card import STUDY as _card
from .dvt import STUDY as _dvt
from .probing import STUDY as _probing
from .retrieval import STUDY as _retrieval
from .scene import STUDY as _scene
from .tracking import STUDY as _tracking
from .variance import STUDY as _variance

STUDIES: dict[str, Study] = {s.name: s for s in (_probing, _variance, _retrieval, _scene, _dvt, _tracking, _card)}

EXPERIMENTS: dict[str, Experiment] = {}
OUTPUTS: dict[str, Output] = {}
#: experiment or output name -> the study that registers it.
STUDY_OF: dict[str, str] = {}
for _study in STUDIES.values():
    for _registry, _items in ((EXPERIMENTS, _study.experiments), (OUTPUTS, _study.outputs)):
        for _name, _item in _items.items():
            if _name in _registry:
                raise ValueError(f"{_name!r} is registered twice (studies {STUDY_OF[_name]!r}, {_study.name!r})")
            _registry[_name] = _item
            STUDY_OF[_name] = _study.name


def experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def output(name: str) -> Output:
    if name not in OUTPUTS:
        raise ConfigError(f"unknown figure or table {name!r}; known: {', '.join(OUTPUTS)}")
    return OUTPUTS[name]


__all__ = ["EXPERIMENTS", "OUTPUTS", "STUDIES", "STUDY_OF", "Experiment", "ExperimentJob", "Output", "Study",
           "experiment", "output"]
