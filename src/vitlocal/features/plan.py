"""Which extraction job makes which feature file: the workflow's jobs, planned from the files read.

One job per (dataset, model) makes the model's clean and whole-image files of
every subset of the dataset; one more makes its degraded variants, one its
transformed variants. Grouped by the settings they read (a new degradation
level reruns only the degraded job, not the clean files every probe reads), and
otherwise as large as the data: a job pays ~6 s of imports (torch, timm) and a
model build before its first image, which on the demo's tiny data was most of
its time (bench/RESULTS.md). ``extraction.jobs: per_model`` (the demo) makes
all three one job: fewer imports, but a changed degradation or transform then
reruns the model's clean files too.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence

#: Variants of the tiles kind: the fixed-size tiles and the whole image (``features.sources.FULL``).
TILE_VARIANTS = ("clean", "full")


@dataclasses.dataclass(frozen=True)
class FeatureFile:
    subset: str
    variant: str
    path: str


@dataclasses.dataclass(frozen=True)
class ExtractionJob:
    """The feature files one extraction job writes (one model, one dataset, one kind of variant)."""

    dataset: str
    model: str
    kind: str  # "tiles" | "degraded" | "transformed" | "all" (extraction.jobs: per_model)
    files: tuple[FeatureFile, ...]

    @property
    def name(self) -> str:
        """The rule's name: ``extract_<dataset>_<model>`` (``_degraded`` / ``_transformed``)."""
        suffix = "" if self.kind in ("tiles", "all") else f"_{self.kind}"
        return f"extract_{self.dataset}_{self.model}{suffix}"

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
    per_model: bool = False,
) -> list[ExtractionJob]:
    """The jobs that make every extracted file among ``paths`` (each file once; others ignored).

    ``per_model``: one job per (dataset, model) for every kind (``extraction.jobs: per_model``).

    A feature file is ``<results>/features/<dataset>/<subset>/<model>/<variant>.parquet``.
    Files keep their order within a subset (variants as listed in ``degraded``
    / ``transformed``); subsets and jobs are sorted, so the plan does not depend
    on the order the experiments were registered in.
    """
    pattern = re.compile(rf"^{re.escape(results)}/features/([^/]+)/([^/]+)/([^/]+)/([^/]+)\.parquet$")
    order = {v: i for i, v in enumerate([*TILE_VARIANTS, *degraded, *transformed])}
    groups: dict[tuple[str, str, str], dict[str, FeatureFile]] = {}
    for path in paths:
        match = pattern.match(path)
        if not match or match.group(1) not in datasets:
            continue
        dataset, subset, model, variant = match.groups()
        kind = variant_kind(variant, degraded, transformed)
        if kind is not None:
            kind = "all" if per_model else kind
            groups.setdefault((dataset, model, kind), {})[path] = FeatureFile(subset, variant, path)
    return [
        ExtractionJob(dataset, model, kind, tuple(sorted(files.values(), key=lambda f: (f.subset, order[f.variant]))))
        for (dataset, model, kind), files in sorted(groups.items())
    ]
