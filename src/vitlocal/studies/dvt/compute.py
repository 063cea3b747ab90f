"""Raw vs DVT-denoised features, each study's own computation run on both.

Every function takes ``files[level]`` for level ``raw`` (the ``clean`` or
degraded / transformed feature files), ``dvt`` (the stage-2 denoiser's
output on the same patches: ``Layout.denoised``) and, where configured,
``dvt1`` (stage 1's F of each tile), calls the computation of the study it
mirrors on each, and returns its tidy rows with experiment ``dvt_<task>`` and
the level (or ``raw:<level>``, ``dvt:<level>`` where the study's rows have
levels of their own). The layer
is the last block (the one DVT denoises); both levels are computed in one job
with the same settings, so a difference is DVT's alone.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import pandas as pd

from vitlocal.evaluation.segmentation import (
    RESULT_COLUMNS,
    EvalTarget,
    ProbeSettings,
    fit_linear,
    knn_result,
    labelled,
    linear_predictions,
    load_split,
    provenance,
    score_rows,
)
from vitlocal.features.store import read_attrs

log = logging.getLogger(__name__)
#: raw features, the stage-2 denoiser's output, stage 1's F per tile (only where configured).
LEVELS = ("raw", "dvt", "dvt1")
#: The experiments of this study, by the task they mirror.
EXPERIMENTS = {"cityscapes": "dvt_cityscapes", "ade20k": "dvt_ade20k", "robustness": "dvt_robustness",
               "retrieval": "dvt_retrieval", "tracking": "dvt_tracking"}

Files = Mapping[str, Any]


def denoised_layer(path) -> int:
    """The one layer a ``dvt`` file stores (the model's last block)."""
    return max(int(v) for v in read_attrs(path)["layers"])


def _first_path(files: Any) -> str:
    """The first file of a level's ``files`` (a path, or a nesting of dicts of paths)."""
    return str(files) if not isinstance(files, Mapping) else _first_path(next(iter(files.values())))


def _with_dvt_source(rows: pd.DataFrame, files: Mapping[str, Any]) -> pd.DataFrame:
    """``dvt`` rows name their denoiser in ``settings``: ``dvt_source`` ``ours@224`` or ``released@518``
    (the authors' denoisers, trained at 518 / 512 px, applied to this study's 224-px tiles)."""
    source = read_attrs(_first_path(files["dvt"])).get("denoiser", {}).get("dvt_source", "unrecorded")
    level = rows["level"].astype(str)
    mine = ((level == "dvt") | level.str.startswith("dvt:")).to_numpy()
    rows = rows.copy()
    rows.loc[mine, "settings"] = [
        json.dumps({**(json.loads(s) if isinstance(s, str) and s else dict(s or {})), "dvt_source": source},
                   sort_keys=True, separators=(",", ":")) for s in rows.loc[mine, "settings"]]
    return rows


def _relabel(rows: pd.DataFrame, experiment: str, level: str, *, keep_level: bool = False) -> pd.DataFrame:
    out = rows.copy()
    out["experiment"] = experiment
    out["level"] = [f"{level}:{v}" for v in out["level"]] if keep_level else level
    return out


def raw_vs_dvt_rows(model: str, files: Mapping[str, Files], *, target: EvalTarget,
                    probes: ProbeSettings) -> pd.DataFrame:
    """Cityscapes k-NN and linear probe (Figs 1-2 protocol, last layer): ``files[level] = {train, val}``."""
    layer = denoised_layer(files["dvt"]["val"])
    frames = []
    for level in files:
        val = load_split(files[level]["val"], layer)
        train = labelled(load_split(files[level]["train"], layer))
        common = dict(experiment=EXPERIMENTS["cityscapes"], dataset=target.dataset, model=model, layer=val.layer,
                      level=level, class_names=target.class_names)
        knn, record = knn_result(train, val, target, probes)
        frames.append(score_rows(knn, probe="knn", **common,
                                 provenance=provenance(val.attrs, probe="knn", knn_metric=probes.knn_metric,
                                                       settings=record)))
        probe, settings = fit_linear(train, model, target, probes)
        linear = target.score(val, linear_predictions(probe, val))
        frames.append(score_rows(linear, probe="linear", **common,
                                 provenance=provenance(val.attrs, probe="linear", knn_metric=probes.knn_metric,
                                                       settings=settings)))
        log.info("%s %s layer %d: k-NN mIoU %.3f, linear mIoU %.3f", model, level, layer, knn.miou, linear.miou)
    return _with_dvt_source(pd.concat(frames, ignore_index=True)[list(RESULT_COLUMNS)], files)


def ade20k_raw_vs_dvt_rows(model: str, files: Mapping[str, Files], *, target: EvalTarget,
                           probes: ProbeSettings) -> pd.DataFrame:
    """Table 2's probes (present classes only) on raw and denoised ADE20K features."""
    from ..probing.compute import ade20k_rows

    layer = denoised_layer(files["dvt"]["val"])
    frames = [_relabel(ade20k_rows(model, files[level]["train"], files[level]["val"], target=target, probes=probes,
                                   layer=layer), EXPERIMENTS["ade20k"], level) for level in files]
    return _with_dvt_source(pd.concat(frames, ignore_index=True)[list(RESULT_COLUMNS)], files)


def robustness_raw_vs_dvt_rows(model: str, files: Mapping[str, Files], *, target: EvalTarget,
                               probes: ProbeSettings) -> pd.DataFrame:
    """Fig 3 on raw and denoised features: ``files[level] = {train, val_variants: {variant: path}}``.

    Levels ``raw:blur-8``, ``dvt:noise-0`` (``-0``: the clean val set), as in Fig 3's rows.
    """
    from ..probing.compute import degradation_rows

    layer = denoised_layer(files["dvt"]["train"])
    frames = [_relabel(degradation_rows(model, files[level]["train"], dict(files[level]["val_variants"]),
                                        target=target, probes=probes, layer=layer),
                       EXPERIMENTS["robustness"], level, keep_level=True) for level in files]
    return _with_dvt_source(pd.concat(frames, ignore_index=True)[list(RESULT_COLUMNS)], files)


def retrieval_raw_vs_dvt_rows(model: str, files: Mapping[str, Files], manifest: pd.DataFrame,
                              **search: Any) -> pd.DataFrame:
    """Fig 6 on raw and denoised features: ``files[level] = {gallery, queries: {variant: path}}``.

    Only Fig 6's rows (own image kept, no dimensions removed); levels ``raw:rotate-5``.
    """
    from ..retrieval import EXPERIMENT
    from ..retrieval.compute import retrieval_rows

    frames = []
    for level in files:
        rows = retrieval_rows(model, files[level]["gallery"], dict(files[level]["queries"]), manifest, **search)
        rows = rows[(rows["experiment"] == EXPERIMENT) & (rows["model"] == model)]
        frames.append(_relabel(rows, EXPERIMENTS["retrieval"], level, keep_level=True))
    return _with_dvt_source(pd.concat(frames, ignore_index=True)[list(RESULT_COLUMNS)], files)


def tracking_raw_vs_dvt_rows(model: str, files: Mapping[str, str], manifest, **tracking: Any) -> pd.DataFrame:
    """Fig 8 on raw and denoised BDD100K features: ``files[level]`` one feature file; levels ``raw:delta=1``."""
    from ..tracking.compute import tracking_rows

    frames = [tracking_rows(model, files[level], manifest, experiment=EXPERIMENTS["tracking"],
                            variant="clean" if level == "raw" else level, level_prefix=f"{level}:", **tracking)
              for level in files]
    return _with_dvt_source(pd.concat(frames, ignore_index=True)[list(RESULT_COLUMNS)], files)
