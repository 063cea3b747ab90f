"""The track table both tracking readers (BDD100K, MOT17) return, and its checks.

One schema lets the tracking experiment (nearest object at ``t + delta``)
ignore which dataset it reads: one row per annotated box, ``frame`` 1-based
as in the image file names, boxes as float pixel corners ``x1 < x2``,
``y1 < y2``, and ``ignore`` marking boxes that are neither queried nor
matched (distractors, crowds, non-pedestrians).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DatasetNotFoundError, LabelError

TRACK_COLUMNS: tuple[str, ...] = (
    "frame", "image_path", "track_id", "category", "x1", "y1", "x2", "y2", "ignore",
)
MANIFEST_COLUMNS: tuple[str, ...] = ("sample_id", "video", "frame", "image_path")

_DTYPES = {
    "frame": "int64", "image_path": "str", "track_id": "str", "category": "str",
    "x1": "float64", "y1": "float64", "x2": "float64", "y2": "float64", "ignore": "bool",
}


def track_table(rows: Iterable[Mapping], source: str | os.PathLike) -> pd.DataFrame:
    """Build, type, sort (frame, track_id) and validate a track table from row dicts."""
    table = pd.DataFrame(list(rows), columns=list(TRACK_COLUMNS)).astype(_DTYPES)
    table = table.sort_values(["frame", "track_id"], kind="stable").reset_index(drop=True)
    validate_tracks(table, source)
    return table


def validate_tracks(tracks: pd.DataFrame, source: str | os.PathLike) -> None:
    """Raise ``LabelError`` naming ``source`` if ``tracks`` breaks the schema.

    Checked: the columns, frames >= 1, finite boxes with positive extent, and
    one box per (frame, track_id) -- a repeated id would make "same instance"
    ambiguous in the tracking experiment.
    """
    if tuple(tracks.columns) != TRACK_COLUMNS:
        raise LabelError(f"{source}: track table columns {list(tracks.columns)}, expected {list(TRACK_COLUMNS)}")
    if len(tracks) == 0:
        return
    bad_frame = tracks["frame"] < 1
    if bad_frame.any():
        row = tracks[bad_frame].iloc[0]
        raise LabelError(f"{source}: frame {row['frame']} of track {row['track_id']!r}; frames are 1-based")
    boxes = tracks[["x1", "y1", "x2", "y2"]].to_numpy(float)
    bad_box = ~np.isfinite(boxes).all(axis=1) | (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if bad_box.any():
        row = tracks[bad_box].iloc[0]
        raise LabelError(
            f"{source}: frame {row['frame']}, track {row['track_id']!r}: box "
            f"(x1={row['x1']}, y1={row['y1']}, x2={row['x2']}, y2={row['y2']}) needs finite "
            f"x2 > x1 and y2 > y1 ({int(bad_box.sum())} such boxes)"
        )
    repeated = tracks.duplicated(["frame", "track_id"])
    if repeated.any():
        row = tracks[repeated].iloc[0]
        raise LabelError(f"{source}: track {row['track_id']!r} has two boxes in frame {row['frame']}")


def check_inside(tracks: pd.DataFrame, image_hw: Mapping[int, tuple[int, int]], source: str | os.PathLike) -> None:
    """Raise ``LabelError`` naming ``source``, frame and track of the first box entirely outside its image.

    ``image_hw``: frame -> (height, width). Such a box pools nothing but
    ROIAlign's zeros and would tie with every other one; a box that is only
    partly outside is legitimate and kept as written: ROIAlign clamps sample
    points within one cell of the map to its border and gives zero beyond, as in
    the authors' call.
    """
    if len(tracks) == 0:
        return
    hw = np.array([image_hw[int(f)] for f in tracks["frame"]], dtype=np.float64).reshape(-1, 2)
    x1, y1, x2, y2 = (tracks[c].to_numpy(np.float64) for c in ("x1", "y1", "x2", "y2"))
    outside = (x2 <= 0) | (y2 <= 0) | (x1 >= hw[:, 1]) | (y1 >= hw[:, 0])
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        row = tracks.iloc[i]
        raise LabelError(
            f"{source}: frame {row['frame']}, track {row['track_id']!r}: box (x1={row['x1']}, y1={row['y1']}, "
            f"x2={row['x2']}, y2={row['y2']}) lies entirely outside the {int(hw[i, 1])}x{int(hw[i, 0])} image "
            f"({int(outside.sum())} such boxes)"
        )


def check_images(root: str | os.PathLike, image_paths: Iterable[str], source: str | os.PathLike) -> None:
    """Raise ``DatasetNotFoundError`` naming the first annotated frame whose image is absent."""
    root = Path(root)
    missing = [p for p in dict.fromkeys(image_paths) if not (root / p).is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"{source} annotates {len(missing)} frame(s) whose image is missing, "
            f"first: {root / missing[0]}"
        )


def frames_manifest(rows: Iterable[Mapping]) -> pd.DataFrame:
    """Manifest of frames (``sample_id, video, frame, image_path``) with unique sample ids."""
    manifest = pd.DataFrame(list(rows), columns=list(MANIFEST_COLUMNS))
    manifest = manifest.astype({"frame": "int64"})
    repeated = manifest["sample_id"][manifest["sample_id"].duplicated()]
    if len(repeated):
        raise LabelError(f"frame manifest repeats sample_id {repeated.iloc[0]!r}")
    return manifest
