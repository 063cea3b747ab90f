"""Where the workflow keeps each file, computed from the config alone.

The rules and the study registry (``vitlocal.studies``) both name files
through this one object, so a path is spelled in one place and a test can
ask which files an experiment reads without Snakemake.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from .config import dataset_names


def fmt(value: float) -> str:
    """Numbers as they appear in variant names: 4, 0.9, 12.5."""
    return f"{value:g}"


@dataclasses.dataclass(frozen=True)
class Layout:
    """Paths of one preset's outputs under ``results`` (``results/<preset>``)."""

    config: Mapping[str, Any]
    results: str

    @property
    def datasets(self) -> list[str]:
        return dataset_names(self.config)

    def has(self, *datasets: str) -> bool:
        """Are all ``datasets`` configured (a study whose data is absent is left out)."""
        return all(name in self.datasets for name in datasets)

    @property
    def main_train_set(self) -> str:
        return self.config["subsets"]["cityscapes"]["main_train_set"]

    def split(self, dataset: str) -> str:
        """The one split a single-split dataset (FAIR1M, BDD100K, MOT17) is read from."""
        return self.config["subsets"][dataset]["split"]

    def manifest(self, dataset: str, subset: str) -> str:
        return f"{self.results}/subsets/{dataset}/{subset}.csv"

    def feature_file(self, dataset: str, subset: str, model: str, variant: str = "clean") -> str:
        return f"{self.results}/features/{dataset}/{subset}/{model}/{variant}.parquet"

    @staticmethod
    def denoised(variant: str = "clean", method: str = "dvt") -> str:
        """The DVT-denoised counterpart of a feature variant: ``dvt`` (of ``clean``), ``dvt-blur-8``, ...

        ``method="dvt1"``: stage 1's F per tile instead of the stage-2 denoiser (``dvt1``, ``dvt1-...``).
        """
        return method if variant == "clean" else f"{method}-{variant}"

    def experiment_file(self, experiment: str, model: str) -> str:
        return f"{self.results}/experiments/{experiment}/{model}.csv"

    def experiment_units(self, experiment: str, model: str) -> str:
        """The per-unit statistics beside an experiment's CSV (``Experiment.units``; ``evaluation.units``)."""
        return f"{self.results}/experiments/{experiment}/{model}.units.parquet"

    def degradation_variants(self) -> list[str]:
        deg = self.config["degradations"]
        return (
            [f"blur-{fmt(k)}" for k in deg["blur_kernels"]]
            + [f"noise-{fmt(s)}" for s in deg["noise_sigmas"]]
            + [f"freqnoise-{i}" for i in range(1, len(deg["frequency_bands"]) + 1)]
        )

    def transform_variants(self) -> list[str]:
        tr = self.config["transforms"]
        return (
            [f"shift-{fmt(d)}" for d in tr["shifts"]]
            + [f"rotate-{fmt(a)}" for a in tr["rotations"]]
            + [f"scale-{fmt(s)}" for s in tr["scales"]]
        )
