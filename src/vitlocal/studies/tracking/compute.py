"""Tracking (Figs 8, 9) and tiled vs whole frames (Table 5 / Fig 12): the numbers.

One function per experiment, called once per model; each returns tidy rows
(``segmentation.RESULT_COLUMNS``). Conventions (``vitlocal.published.EXPERIMENTS``):

- ``tracking`` (BDD100K) and ``tracking_mot17``: probe ``none``, class
  ``all``, level ``delta=<gap>``, metrics ``acc_same_instance`` and
  ``acc_same_category`` (mean over frame pairs, see ``matching``); the
  ``knn_metric`` column is the similarity used; ``settings`` holds the
  pooled per-query accuracy and the pair / query counts.
- ``tracking_full_vs_tile``: the same on BDD100K for the tiled (``clean``)
  and whole-frame (``full``) features, level ``tiled:delta=<gap>`` /
  ``full:delta=<gap>``.
- ``cityscapes_full_vs_tile``: k-NN and linear probe on Cityscapes, level
  ``tiled`` / ``full`` (``segmentation.score_rows``: per-class IoU, ``mean``
  mIoU, ``all`` pixel accuracy), both modes trained and scored alike.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch

from vitlocal.datasets import bdd100k, mot17
from vitlocal.errors import ConfigError, LabelError
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
    resolve_device,
    score_rows,
)
from vitlocal.evaluation.units import unit_frame
from vitlocal.features.store import read_attrs

from . import MODES
from .matching import GapCounts, canonical_order, check_gaps, match_video
from .roi import ALIGNED, SAMPLING_RATIO, boxes_on_grid, iter_frames, roi_features

log = logging.getLogger(__name__)

PathLike = str | os.PathLike
#: Datasets the study reads (``read_tracks(root, split, video)`` of each).
TRACK_DATASETS = ("bdd100k", "mot17")


@dataclasses.dataclass(frozen=True)
class TrackingSettings:
    """``tracking.gaps``, ``tracking.roi_size``, the similarity (``probes.knn_metric``), the device and
    ``tracking.roi_aligned`` (torchvision's ``aligned``; False as the authors called it)."""

    gaps: tuple[int, ...]
    roi_size: int = 7
    metric: str = "dot"
    device: str | None = "auto"
    aligned: bool = ALIGNED

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TrackingSettings:
        tracking = config["tracking"]
        return cls(tuple(int(g) for g in check_gaps(tracking["gaps"])), int(tracking["roi_size"]),
                   str(config.get("probes", {}).get("knn_metric", "dot")), config.get("device", "auto"),
                   bool(tracking.get("roi_aligned", ALIGNED)))


@dataclasses.dataclass
class _Frame:
    """The kept (not ignored) boxes of one frame, as the matcher wants them."""

    video: str
    number: int
    boxes: np.ndarray  #: (N, 4) original pixels
    track: np.ndarray  #: (N,) codes within the video
    category: np.ndarray  #: (N,) codes


def _read_tracks(dataset: str, root: PathLike, split: str, video: str, synthetic: bool) -> pd.DataFrame:
    """The video's track table; real MOT17 is checked against the release's row counts, synthetic is not."""
    if dataset == "mot17":
        return mot17.read_tracks(root, split, video, synthetic=synthetic)
    return bdd100k.read_tracks(root, split, video)


def _frames(dataset: str, root: PathLike, split: str, manifest: pd.DataFrame, *,
            synthetic: bool = False) -> tuple[dict[str, _Frame], list[str]]:
    """sample id -> its frame's kept boxes, from the dataset's own track files; and the videos with none.

    A video whose boxes are all ignored (crowds, distractors, non-pedestrians)
    has no query: a counted omission, logged and recorded in the rows.
    """
    if dataset not in TRACK_DATASETS:
        raise ConfigError(f"tracking reads {list(TRACK_DATASETS)}, not {dataset!r}")
    for column in ("sample_id", "video", "frame"):
        if column not in manifest.columns:
            raise ConfigError(f"{dataset} manifest has no {column!r} column (columns: {list(manifest.columns)})")
    sample_of = {(str(v), int(f)): str(s) for s, v, f in manifest[["sample_id", "video", "frame"]].itertuples(index=False)}
    out = {s: _Frame(v, f, np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0, np.int64))
           for (v, f), s in sample_of.items()}
    categories: dict[str, int] = {}
    empty = []
    for video in sorted(set(manifest["video"].astype(str))):
        tracks = _read_tracks(dataset, root, split, video, synthetic)
        kept = tracks[~tracks["ignore"].to_numpy(bool)]
        if len(kept) == 0:
            log.warning("%s %s: all %d boxes are ignored; the video has no query (omitted)", dataset, video,
                        len(tracks))
            empty.append(video)
        numbers = kept["frame"].to_numpy(np.int64)
        _, track = np.unique(kept["track_id"].to_numpy(str), return_inverse=True)
        names, category = np.unique(kept["category"].to_numpy(str), return_inverse=True)
        category = np.array([categories.setdefault(str(n), len(categories)) for n in names], np.int64)[category]
        boxes = kept[["x1", "y1", "x2", "y2"]].to_numpy(np.float64)
        order = np.argsort(numbers, kind="stable")
        firsts, starts = np.unique(numbers[order], return_index=True)
        for number, rows in zip(firsts.tolist(), np.split(order, starts[1:])):
            sample = sample_of.get((video, number))
            if sample is None:
                raise LabelError(f"{dataset} {video}: frame {number} has boxes but is not in the manifest")
            out[sample] = _Frame(video, number, boxes[rows], track[rows].astype(np.int64), category[rows])
    return out, empty


def _check_attrs(attrs: Mapping[str, Any], path: PathLike, *, model: str, dataset: str, variant: str) -> None:
    for key, wanted in (("model", model), ("dataset", dataset), ("variant", variant)):
        if attrs.get(key) != wanted:
            raise ConfigError(f"{path} holds features of {key} {attrs.get(key)!r}, not {wanted!r}")


#: Frames pooled per ``roi_align`` call (one call per frame pays the op's overhead each time).
ROI_FRAMES = 16


@dataclasses.dataclass
class _Video:
    """One video's object features, filled frame by frame in ``matching.canonical_order``."""

    x: torch.Tensor  #: (M, D)
    frame: np.ndarray
    track: np.ndarray
    category: np.ndarray
    row_of: dict[int, int]  #: frame number -> first row of its objects
    remaining: int  #: frames not yet pooled
    started: float


def _new_video(frames: list[_Frame], dim: int, gaps, device: torch.device) -> _Video:
    frame = np.concatenate([np.full(len(f.track), f.number) for f in frames]).astype(np.int64)
    track = np.concatenate([f.track for f in frames])
    category = np.concatenate([f.category for f in frames])
    order = canonical_order(frame, track, gaps)
    frame, track, category = frame[order], track[order], category[order]
    first = np.flatnonzero(np.r_[True, frame[1:] != frame[:-1]]) if len(frame) else np.zeros(0, np.int64)
    return _Video(torch.empty((len(frame), dim), device=device), frame, track, category,
                  dict(zip(frame[first].tolist(), first.tolist())), len(frames), time.perf_counter())


def tracking_counts(
    features_path: PathLike, manifest: pd.DataFrame, *, dataset: str, root: PathLike, split: str,
    settings: TrackingSettings, model: str, variant: str = "clean",
) -> tuple[GapCounts, dict[str, Any], dict[str, GapCounts]]:
    """Counts per gap over every video of ``manifest``, a record of what was computed, and each video's counts.

    Frames are streamed from the feature file (``roi.iter_frames``) and pooled
    in batches; a video is matched as soon as its last frame is pooled, then freed.
    """
    attrs = read_attrs(features_path)
    _check_attrs(attrs, features_path, model=model, dataset=dataset, variant=variant)
    frames, empty = _frames(dataset, root, split, manifest, synthetic=attrs.get("data_source") == "synthetic")
    by_video: dict[str, list[_Frame]] = {}
    for frame in frames.values():
        by_video.setdefault(frame.video, []).append(frame)
    dim = int(attrs["dims"][str(_last_layer(attrs))]) * settings.roi_size**2
    device = resolve_device(settings.device)
    videos: dict[str, _Video] = {}
    counts = GapCounts.zeros(settings.gaps)
    per_video: dict[str, GapCounts] = {}
    seconds, n_objects = [], 0

    def pool(batch: list[tuple[_Frame, np.ndarray, tuple[int, int]]]) -> None:
        maps = torch.from_numpy(np.stack([fmap for _, fmap, _ in batch])).to(device)
        boxes = [torch.as_tensor(boxes_on_grid(f.boxes, hw, fmap.shape[1:]), dtype=maps.dtype, device=device)
                 for f, fmap, hw in batch]
        rois = roi_features(maps, boxes, settings.roi_size, aligned=settings.aligned)
        at = 0
        for frame, _, _ in batch:
            video = videos.get(frame.video) or videos.setdefault(
                frame.video, _new_video(by_video[frame.video], dim, settings.gaps, device))
            n = len(frame.track)
            if n:
                row = video.row_of[frame.number]
                video.x[row:row + n] = rois[at:at + n]
            at += n
            video.remaining -= 1
            if video.remaining == 0:
                finish(frame.video)

    def finish(name: str) -> None:
        nonlocal counts, n_objects
        video = videos.pop(name)
        per_video[name] = match_video(video.x, video.frame, video.track, video.category, settings.gaps,
                                      settings.metric)
        counts += per_video[name]
        seconds.append(time.perf_counter() - video.started)
        n_objects += len(video.x)
        log.info("%s %s: %d frames, %d objects, %.2f s", dataset, name, len(by_video[name]), len(video.x),
                 seconds[-1])

    with torch.inference_mode():
        batch = []
        for sample, fmap, image_hw in iter_frames(features_path, frames):
            batch.append((frames[sample], fmap, image_hw))
            if len(batch) == ROI_FRAMES:
                pool(batch)
                batch = []
        if batch:
            pool(batch)
    record = {"videos": len(seconds), "frames": len(frames), "objects": n_objects, "layer": _last_layer(attrs),
              "videos_without_objects": len(empty), "seconds_per_video": float(np.mean(seconds)) if seconds else 0.0}
    if counts.queries.sum() == 0:
        raise LabelError(
            f"{dataset} ({len(by_video)} videos, {len(empty)} without kept boxes): no object of any frame is "
            f"found again at any gap {list(settings.gaps)}; nothing to score ({features_path})"
        )
    return counts, record, per_video


#: A video's addends per gap in the sidecar (``GapCounts`` fields); ``pairs`` is written for every video.
VIDEO_STATS = ("pairs", "pair_acc_instance", "pair_acc_category", "queries", "correct_instance", "correct_category")


def video_units(per_video: Mapping[str, GapCounts], gaps, *, level_prefix: str = "", **keys: Any) -> list[pd.DataFrame]:
    """Sidecar rows (``evaluation.units``): per gap (level ``delta=<gap>``) and video (the unit), ``VIDEO_STATS``."""
    videos = sorted(per_video)
    out = []
    for i, gap in enumerate(gaps):
        values = np.array([[getattr(per_video[v], stat)[i] for stat in VIDEO_STATS] for v in videos], dtype=np.float64)
        out.append(unit_frame({**keys, "level": f"{level_prefix}delta={int(gap)}"}, videos,
                              [("all", stat) for stat in VIDEO_STATS], values.reshape(len(videos), -1), total=0))
    return out


def _last_layer(attrs: Mapping[str, Any]) -> int:
    return max(int(v) for v in attrs["layers"])


def tracking_rows(
    model: str, features_path: PathLike, manifest: pd.DataFrame | PathLike, *, experiment: str, dataset: str,
    root: PathLike, split: str, settings: TrackingSettings, variant: str = "clean", level_prefix: str = "",
    units: list[pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """Same-instance / same-category accuracy per gap of ``model`` (one row per gap and metric); ``units``: a list
    to append each video's counts to (:func:`video_units`)."""
    table = manifest if isinstance(manifest, pd.DataFrame) else pd.read_csv(manifest, dtype={"sample_id": str, "video": str})
    counts, record, per_video = tracking_counts(features_path, table, dataset=dataset, root=root, split=split,
                                                settings=settings, model=model, variant=variant)
    if units is not None:
        units += video_units(per_video, counts.gaps, level_prefix=level_prefix, experiment=experiment, model=model,
                             probe="none", layer=record["layer"])
    attrs = read_attrs(features_path)
    prov = {**provenance(attrs, probe="none", knn_metric=""), "knn_metric": settings.metric}
    common = {"similarity": settings.metric, "roi_size": settings.roi_size, "sampling_ratio": SAMPLING_RATIO,
              "aligned": settings.aligned, "average": "frame pairs", "variant": variant,
              "frame_size": (attrs.get("tiling") or {}).get("resize_to"), "videos": record["videos"],
              "videos_without_objects": record["videos_without_objects"],
              "frames": record["frames"], "objects": record["objects"]}
    rows = []
    for what in ("instance", "category"):
        by_pairs, by_queries = counts.accuracy(what, "pairs"), counts.accuracy(what, "queries")
        for i, gap in enumerate(counts.gaps):
            settings_row = {**common, "n_pairs": int(counts.pairs[i]), "n_queries": int(counts.queries[i]),
                            "query_accuracy": None if np.isnan(by_queries[i]) else float(by_queries[i])}
            rows.append({
                "experiment": experiment, "dataset": dataset, "model": model, "probe": "none",
                "layer": record["layer"], "level": f"{level_prefix}delta={int(gap)}", "class": "all",
                "metric": f"acc_same_{what}", "value": float(by_pairs[i]),
                **{k: prov[k] for k in ("preset", "weights", "knn_metric", "patch_labels", "data")},
                "settings": json.dumps(settings_row, sort_keys=True, separators=(",", ":")),
            })
    out = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    out["layer"] = out["layer"].astype("Int64")
    return out


def full_vs_tile_rows(
    model: str, features: Mapping[str, PathLike], manifest: PathLike, *, dataset: str, root: PathLike, split: str,
    settings: TrackingSettings,
) -> pd.DataFrame:
    """``tracking_full_vs_tile``: :func:`tracking_rows` of the tiled and the whole-frame features."""
    unknown = sorted(set(features) - set(MODES))
    if unknown:
        raise ConfigError(f"tracking_full_vs_tile: unknown modes {unknown}; expected {sorted(MODES)}")
    return pd.concat([
        tracking_rows(model, features[mode], manifest, experiment="tracking_full_vs_tile", dataset=dataset,
                      root=root, split=split, settings=settings, variant=MODES[mode], level_prefix=f"{mode}:")
        for mode in MODES if mode in features
    ], ignore_index=True)


def cityscapes_full_vs_tile_rows(
    model: str, train: Mapping[str, PathLike], val: Mapping[str, PathLike], *, target: EvalTarget,
    probes: ProbeSettings,
) -> pd.DataFrame:
    """Table 5: k-NN and linear mIoU of ``model`` on tiled and on whole Cityscapes images (shared probing code)."""
    frames = []
    for mode, variant in MODES.items():
        if mode not in val:
            continue
        val_split = load_split(val[mode])
        if val_split.attrs.get("variant") != variant or val_split.attrs.get("model") != model:
            raise ConfigError(f"{val[mode]} holds {val_split.attrs.get('model')!r}/{val_split.attrs.get('variant')!r}"
                              f" features, not {model!r}/{variant!r}")
        train_split = labelled(load_split(train[mode], val_split.layer))
        common = {"experiment": "cityscapes_full_vs_tile", "dataset": target.dataset, "model": model,
                  "layer": val_split.layer, "level": mode, "class_names": target.class_names}
        knn, record = knn_result(train_split, val_split, target, probes)
        frames.append(score_rows(knn, probe="knn", **common, provenance=provenance(
            val_split.attrs, probe="knn", knn_metric=probes.knn_metric, settings={**record, "variant": variant})))
        probe, linear_settings = fit_linear(train_split, model, target, probes)
        linear = target.score(val_split, linear_predictions(probe, val_split))
        frames.append(score_rows(linear, probe="linear", **common, provenance=provenance(
            val_split.attrs, probe="linear", knn_metric="", settings={**linear_settings, "variant": variant})))
        log.info("%s %s: k-NN mIoU %.3f, linear mIoU %.3f", model, mode, knn.miou, linear.miou)
    return pd.concat(frames, ignore_index=True)[list(RESULT_COLUMNS)]
