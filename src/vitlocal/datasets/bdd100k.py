"""BDD100K MOT 2020 (``box_track_20``) in its official layout: videos, tracks, subsets.

``root`` is the ``bdd100k/`` folder of the download. Label files exist in two
spellings (``frameIndex`` + ``occluded/truncated/crowd`` of the current
toolkit, ``index`` + ``Occluded/Truncated/Crowd`` of the 2020 challenge);
both are read. Frames are paired with images by ``name`` only, because
``frameIndex`` may be 0-based while file names count from 1.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from ..errors import ConfigError, CorruptFileError, LabelError
from .base import DatasetInfo, require_dir
from .tracking import check_images, check_inside, frames_manifest, track_table

INFO = DatasetInfo(
    name="BDD100K MOT 2020 (box_track_20)",
    url="https://bdd-data.berkeley.edu/",
    needs_account=True,
    licence="BDD100K licence (research use)",
    layout=(
        "<root> = bdd100k/\n"
        "<root>/images/track/{train,val,test}/<video>/<video>-<NNNNNNN>.jpg  (7 digits, from 0000001)\n"
        "<root>/labels/box_track_20/{train,val}/<video>.json"
    ),
)

#: Categories evaluated by the BDD100K MOT benchmark.
CATEGORIES: tuple[str, ...] = (
    "pedestrian", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
#: Annotated but never evaluated: their boxes are kept with ``ignore=True``.
DISTRACTORS: tuple[str, ...] = ("other person", "other vehicle", "trailer")

LABEL_DIR = ("labels", "box_track_20")
IMAGE_DIR = ("images", "track")


def label_path(split: str, video: str) -> str:
    """Label file of ``video``, relative to the root."""
    return "/".join((*LABEL_DIR, split, f"{video}.json"))


def image_path(split: str, video: str, frame: int) -> str:
    """Image of 1-based ``frame`` of ``video``, relative to the root."""
    return "/".join((*IMAGE_DIR, split, video, f"{video}-{frame:07d}.jpg"))


def list_videos(root: str | os.PathLike, split: str) -> list[str]:
    """Sorted names of the videos that have a label file in ``split`` (and an image folder)."""
    labels = require_dir(INFO, root, *LABEL_DIR, split)
    videos = sorted(p.stem for p in labels.glob("*.json"))
    if not videos:
        raise INFO.missing(root, f"{'/'.join(LABEL_DIR)}/{split}/*.json")
    for video in videos:
        require_dir(INFO, root, *IMAGE_DIR, split, video)
    return videos


def _load_frames(root: Path, split: str, video: str) -> tuple[Path, list[dict]]:
    path = root / label_path(split, video)
    if not path.is_file():
        raise INFO.missing(root, label_path(split, video))
    try:
        frames = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(frames, list) or not all(isinstance(f, dict) for f in frames):
        raise CorruptFileError(f"{path}: expected a JSON list of frame objects")
    if not frames:
        raise CorruptFileError(f"{path}: lists no frames (every box_track_20 video is annotated)")
    return path, frames


def _frame_number(frame: dict, video: str, path: Path) -> int:
    """The 1-based frame number written in the frame's image ``name``."""
    name = frame.get("name")
    match = re.fullmatch(rf"{re.escape(video)}-(\d{{7}})\.jpg", Path(str(name)).name)
    if match is None or int(match[1]) < 1:
        raise CorruptFileError(f"{path}: frame name {name!r}, expected '{video}-NNNNNNN.jpg' (from 0000001)")
    video_name = frame.get("videoName", video)
    if video_name != video:
        raise CorruptFileError(f"{path}: frame {name!r} has videoName {video_name!r}, expected {video!r}")
    return int(match[1])


def _attribute(attributes: dict[str, Any], key: str) -> bool:
    """An attribute in either spelling (``crowd`` or the 2020 challenge's ``Crowd``)."""
    return bool(attributes.get(key, attributes.get(key.capitalize(), False)))


def _frame_labels(frame: dict, number: int, path: Path) -> list[dict]:
    """The frame's ``labels`` (absent or null: none), each a JSON object."""
    labels = frame.get("labels")
    if labels is None:
        return []
    if not isinstance(labels, list) or not all(isinstance(label, dict) for label in labels):
        raise CorruptFileError(f"{path}: frame {number}: 'labels' must be a list of label objects, got {labels!r}")
    return labels


def _box_row(label: dict, frame: int, image: str, path: Path) -> dict:
    where = f"{path}: frame {frame}"
    if "id" not in label or "category" not in label:
        raise CorruptFileError(f"{where}: label {label!r} lacks 'id' or 'category'")
    attributes = label.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise CorruptFileError(f"{where}, id {label['id']!r}: 'attributes' must be an object, got {attributes!r}")
    category = label["category"]
    if category not in CATEGORIES and category not in DISTRACTORS:
        raise LabelError(
            f"{where}, id {label['id']!r}: unknown category {category!r}; expected one of "
            f"{list(CATEGORIES) + list(DISTRACTORS)}"
        )
    try:
        box = {k: float(label["box2d"][k]) for k in ("x1", "y1", "x2", "y2")}
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptFileError(
            f"{where}, id {label['id']!r}: box2d {label['box2d']!r} needs numeric x1, y1, x2, y2"
        ) from exc
    crowd = _attribute(attributes, "crowd")
    return {
        "frame": frame, "image_path": image, "track_id": str(label["id"]), "category": category,
        **box, "ignore": crowd or category in DISTRACTORS,
    }


def _numbered_frames(root: Path, split: str, video: str) -> tuple[Path, list[tuple[int, dict]]]:
    """``(label file, [(frame number, frame object)])`` sorted by number, every image checked."""
    path, frames = _load_frames(root, split, video)
    numbered = sorted(((_frame_number(f, video, path), f) for f in frames), key=lambda nf: nf[0])
    numbers = [n for n, _ in numbered]
    if len(set(numbers)) != len(numbers):
        repeated = next(n for n in numbers if numbers.count(n) > 1)
        raise CorruptFileError(f"{path}: frame {image_path(split, video, repeated)} is listed twice")
    check_images(root, (image_path(split, video, n) for n in numbers), path)
    return path, numbered


def read_tracks(root: str | os.PathLike, split: str, video: str) -> pd.DataFrame:
    """The track table of one video (see ``tracking.TRACK_COLUMNS``).

    Labels without ``box2d`` are skipped; distractor categories and crowd
    boxes get ``ignore=True``. Every frame listed must have its image, a video
    must have a box, and every box must overlap its image (size read from it).
    """
    root = Path(root)
    path, numbered = _numbered_frames(root, split, video)
    rows = [
        _box_row(label, n, image_path(split, video, n), path)
        for n, frame in numbered
        for label in _frame_labels(frame, n, path)
        if label.get("box2d") is not None
    ]
    if not rows:
        raise CorruptFileError(f"{path}: none of its {len(numbered)} frames has a box2d label")
    tracks = track_table(rows, path)
    check_inside(tracks, {n: _image_hw(root / image_path(split, video, n)) for n in tracks["frame"].unique()}, path)
    return tracks


def _image_hw(path: Path) -> tuple[int, int]:
    """(height, width) from the image header."""
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except OSError as exc:
        raise CorruptFileError(f"cannot decode image {path}: {exc}") from exc


def list_frames(root: str | os.PathLike, split: str, video: str) -> list[int]:
    """Sorted 1-based frame numbers listed in a video's label file (images checked)."""
    return [n for n, _ in _numbered_frames(Path(root), split, video)[1]]


def select_subset(root: str | os.PathLike, split: str = "val", n_videos: int | None = 4) -> pd.DataFrame:
    """Manifest of every labelled frame of the first ``n_videos`` videos in sorted order (None = all).

    The authors used the first 4 val videos in sorted order; sorting keeps the
    choice independent of file-system order.
    """
    videos = list_videos(root, split)
    if n_videos is not None:
        if n_videos < 1 or n_videos > len(videos):
            raise ConfigError(
                f"bdd100k n_videos={n_videos}, but {Path(root, *LABEL_DIR, split)} holds "
                f"{len(videos)} videos (use 1..{len(videos)} or null for all)"
            )
        videos = videos[:n_videos]
    return frames_manifest(
        {"sample_id": f"{video}-{n:07d}", "video": video, "frame": n, "image_path": image_path(split, video, n)}
        for video in videos
        for n in list_frames(root, split, video)
    )
