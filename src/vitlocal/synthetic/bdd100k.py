"""Seeded synthetic BDD100K MOT 2020 videos in the exact ``box_track_20`` layout.

Writes ``<root>/images/track/<split>/<video>/<video>-NNNNNNN.jpg`` and
``<root>/labels/box_track_20/<split>/<video>.json`` (``<root>`` plays the
``bdd100k/`` folder). Labels follow the official JSON: 0-based frame index,
8-digit string ids, clipped ``box2d``; ``key_style`` picks the current
(``frameIndex``, ``occluded``) or 2020 challenge (``index``, ``Occluded``)
spelling. A box is labelled while any of its pixels is visible. Some
pedestrian tracks are crowds and some objects are distractors, so the
readers' ``ignore`` logic has work to do. Content is for testing, never a result.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import numpy as np

from ..datasets.bdd100k import image_path, label_path
from ..errors import ConfigError
from ._video import Box, Kind, synthesize, write_jpeg

#: Looks and speeds at BDD's 5 Hz: vehicles cross the frame in a few seconds.
KINDS: dict[str, Kind] = {
    "pedestrian": Kind((190, 110, 90), 2.4, (0.12, 0.30), 0.004, cell=6),
    "rider": Kind((210, 60, 60), 2.0, (0.12, 0.25), 0.010, cell=6, stripe_angle_deg=45),
    "car": Kind((30, 50, 140), 0.6, (0.10, 0.25), 0.012, cell=14),
    "truck": Kind((120, 80, 40), 0.9, (0.20, 0.35), 0.008, cell=20),
    "bus": Kind((235, 160, 30), 0.8, (0.25, 0.40), 0.006, cell=20, stripe_angle_deg=90),
    "train": Kind((185, 195, 205), 0.5, (0.20, 0.30), 0.015, cell=16, stripe_angle_deg=0),
    "motorcycle": Kind((140, 20, 140), 1.0, (0.08, 0.15), 0.012, cell=6),
    "bicycle": Kind((20, 160, 160), 1.0, (0.08, 0.15), 0.008, cell=4, stripe_angle_deg=135),
    "other person": Kind((220, 190, 150), 2.4, (0.12, 0.25), 0.002, cell=10),
    "other vehicle": Kind((60, 110, 60), 0.8, (0.10, 0.20), 0.008, cell=10),
    "trailer": Kind((160, 160, 90), 0.7, (0.15, 0.25), 0.008, cell=12, stripe_angle_deg=0),
}
#: Category frequencies, roughly those of BDD100K MOT (cars and pedestrians dominate).
WEIGHTS: dict[str, float] = {
    "pedestrian": 0.25, "rider": 0.05, "car": 0.35, "truck": 0.07, "bus": 0.05, "train": 0.01,
    "motorcycle": 0.04, "bicycle": 0.05, "other person": 0.04, "other vehicle": 0.05, "trailer": 0.04,
}
CROWD_FRACTION = 0.2  # of pedestrian tracks
KEY_STYLES: dict[str, dict[str, str]] = {
    "current": {"index": "frameIndex", "occluded": "occluded", "truncated": "truncated", "crowd": "crowd"},
    "2020": {"index": "index", "occluded": "Occluded", "truncated": "Truncated", "crowd": "Crowd"},
}
#: Keyword sets of ``write`` matching the workflow's ``synthetic_size`` presets.
PRESETS: dict[str, dict] = {
    "tiny": {"n_videos": 2, "n_frames": 12, "size": (90, 160), "n_objects": 4},
    "demo": {"n_videos": 4, "n_frames": 60, "size": (360, 640), "n_objects": 8},
    "full": {"n_videos": 4, "n_frames": 200, "size": (720, 1280), "n_objects": 12},
}


def video_names(n_videos: int, rng: np.random.Generator) -> list[str]:
    """Distinct BDD-style video names (``b1c66a42-6f7d68ca``: two groups of 8 hex digits)."""
    names: list[str] = []
    while len(names) < n_videos:
        name = "-".join(f"{int(v):08x}" for v in rng.integers(0, 2**32, size=2))
        if name not in names:
            names.append(name)
    return names


def _label(box: Box, track_id: str, crowd: bool, keys: dict[str, str]) -> dict:
    x1, y1, x2, y2 = box.clipped
    return {
        "id": track_id,
        "category": box.category,
        "attributes": {keys["occluded"]: box.occluded, keys["truncated"]: box.truncated, keys["crowd"]: crowd},
        "box2d": {"x1": float(x1), "y1": float(y1), "x2": float(x2), "y2": float(y2)},
    }


def write_video(
    root: Path, split: str, video: str, *, n_frames: int, size: tuple[int, int], n_objects: int,
    seed: int, key_style: str,
) -> None:
    """Write one video's frames and label file; its content depends on ``seed`` and its name only."""
    keys = KEY_STYLES[key_style]
    rng = np.random.default_rng([seed, zlib.crc32(video.encode())])
    first_id = int(rng.integers(10**6, 9 * 10**7))
    crowd = rng.random(n_objects) < CROWD_FRACTION
    frames = []
    for frame in synthesize(rng, KINDS, WEIGHTS, n_objects=n_objects, n_frames=n_frames, size=size):
        write_jpeg(root / image_path(split, video, frame.number), frame.image)
        labels = [
            _label(box, f"{first_id + box.track:08d}", bool(crowd[box.track]) and box.category == "pedestrian", keys)
            for box in frame.boxes
            if box.visible_pixels > 0
        ]
        frames.append({
            "name": Path(image_path(split, video, frame.number)).name,
            "videoName": video,
            keys["index"]: frame.number - 1,
            "labels": labels,
        })
    out = root / label_path(split, video)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(frames, indent=1))


def write(
    root: str | os.PathLike,
    *,
    split: str = "val",
    n_videos: int = 4,
    n_frames: int = 60,
    size: tuple[int, int] = (720, 1280),
    n_objects: int = 8,
    seed: int = 0,
    key_style: str = "current",
) -> Path:
    """Write ``n_videos`` synthetic videos of ``split`` under ``root``; returns ``root``.

    ``size`` is ``(height, width)``; video names are drawn from ``seed`` and
    ``split``, so train and val written with one seed get different videos.
    """
    if key_style not in KEY_STYLES:
        raise ConfigError(f"key_style {key_style!r}: expected one of {sorted(KEY_STYLES)}")
    root = Path(root)
    names = video_names(n_videos, np.random.default_rng([seed, zlib.crc32(split.encode())]))
    for video in names:
        write_video(root, split, video, n_frames=n_frames, size=size, n_objects=n_objects,
                    seed=seed, key_style=key_style)
    return root
