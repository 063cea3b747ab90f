"""Which extraction job makes which feature file: the workflow's jobs, planned from the files read.

One job per (dataset, model) makes the model's clean and whole-image files of
every subset of the dataset; one more makes its degraded variants, one its
transformed variants. Grouped by the settings they read (a new degradation
level reruns only the degraded job, not the clean files every probe reads), and
otherwise as large as the data: a job pays ~6 s of imports (torch, timm) and a
model build before its first image, which on the demo's tiny data was most of
its time (bench/RESULTS.md). ``extraction.jobs: per_model`` makes all three
one job, and ``per_dataset`` (the demo) one job for every model of a dataset,
the models in turn: fewer imports, but a changed degradation, transform or
model then reruns more files than it changes.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence

#: ``extraction.jobs``: how finely the extracted files are cut into jobs, finest first.
CUTS = ("per_kind", "per_model", "per_dataset")

#: Variants of the tiles kind: the fixed-size tiles and the whole image (``features.sources.FULL``).
TILE_VARIANTS = ("clean", "full")


@dataclasses.dataclass(frozen=True)
class FeatureFile:
    model: str
    subset: str
    variant: str
    path: str


@dataclasses.dataclass(frozen=True)
class ExtractionJob:
    """The feature files one extraction job writes (one dataset; one model and kind of variant unless cut coarser)."""

    dataset: str
    model: str | None  # None: every model of the dataset (extraction.jobs: per_dataset)
    kind: str  # "tiles" | "degraded" | "transformed" | "all" (extraction.jobs: per_model, per_dataset)
    files: tuple[FeatureFile, ...]

    @property
    def name(self) -> str:
        """The rule's name: ``extract_<dataset>_<model>`` (``_degraded`` / ``_transformed``); ``extract_<dataset>``."""
        if self.model is None:
            return f"extract_{self.dataset}"
        suffix = "" if self.kind in ("tiles", "all") else f"_{self.kind}"
        return f"extract_{self.dataset}_{self.model}{suffix}"

    @property
    def models(self) -> list[str]:
        """The models the job runs, in turn (sorted), each building its files before the next is built."""
        return list(dict.fromkeys(f.model for f in self.files))

    @property
    def reads_frequency_noise(self) -> bool:
        """Whether a file of the job is a ``freqnoise-<i>`` variant: the only files the frequency settings change."""
        return any(f.variant.startswith("freqnoise-") for f in self.files)

    @property
    def subsets(self) -> list[str]:
        return list(dict.fromkeys(f.subset for f in self.files))


def variant_kind(variant: str, degraded: Sequence[str], transformed: Sequence[str]) -> str | None:
    """``tiles``, ``degraded`` or ``transformed``; None for a file no extraction job makes (DVT's)."""
    if variant in TILE_VARIANTS:
        return "tiles"
    if variant in degraded:
        return "degraded"
    if variant in transformed:
        return "transformed"
    return None


def extraction_jobs(
    paths: Iterable[str],
    results: str,
    datasets: Sequence[str],
    degraded: Sequence[str],
    transformed: Sequence[str],
    cut: str = "per_kind",
) -> list[ExtractionJob]:
    """The jobs that make every extracted file among ``paths`` (each file once; others ignored).

    ``cut`` (``extraction.jobs``): ``per_kind``, one job per (dataset, model,
    kind); ``per_model``, one per (dataset, model) for every kind;
    ``per_dataset``, one per dataset for every model and kind.

    A feature file is ``<results>/features/<dataset>/<subset>/<model>/<variant>.parquet``.
    Files keep their order within a subset (variants as listed in ``degraded``
    / ``transformed``); subsets and jobs are sorted, so the plan does not depend
    on the order the experiments were registered in.
    """
    if cut not in CUTS:
        raise ValueError(f"extraction.jobs = {cut!r}: one of {', '.join(CUTS)}")
    pattern = re.compile(rf"^{re.escape(results)}/features/([^/]+)/([^/]+)/([^/]+)/([^/]+)\.parquet$")
    order = {v: i for i, v in enumerate([*TILE_VARIANTS, *degraded, *transformed])}
    groups: dict[tuple[str, str, str], dict[str, FeatureFile]] = {}  # model "": every model (per_dataset)
    for path in paths:
        match = pattern.match(path)
        if not match or match.group(1) not in datasets:
            continue
        dataset, subset, model, variant = match.groups()
        kind = variant_kind(variant, degraded, transformed)
        if kind is not None:
            key = (dataset, model, kind) if cut == "per_kind" else (dataset, model if cut == "per_model" else "", "all")
            groups.setdefault(key, {})[path] = FeatureFile(model, subset, variant, path)
    return [
        ExtractionJob(dataset, model or None, kind,
                      tuple(sorted(files.values(), key=lambda f: (f.model, f.subset, order[f.variant]))))
        for (dataset, model, kind), files in sorted(groups.items())
    ]
