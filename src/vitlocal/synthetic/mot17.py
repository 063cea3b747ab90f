"""Seeded synthetic MOT17 train sequences in the exact MOTChallenge layout.

Writes ``<root>/train/MOT17-NN-<DET>/{img1/000001.jpg, gt/gt.txt, det/det.txt,
seqinfo.ini}`` (``<root>`` plays the ``MOT17/`` folder). As in the real
release, the detector copies share images and ground truth and differ in
``det.txt`` only. ``gt.txt`` rows are grouped by track and give the whole
box (it may extend past the frame, and stays annotated while fully occluded,
with visibility 0), ``consider`` = 1 only for most pedestrians, plus
non-pedestrian classes. Content is for testing, never a result.
"""

from __future__ import annotations

import os
import shutil
import zlib
from pathlib import Path

import numpy as np

from ..datasets.mot17 import CLASSES, DETECTORS, EVALUATED_CLASS, TRAIN_FRAME_RATES
from ._video import Box, Kind, synthesize, write_jpeg

KINDS: dict[str, Kind] = {
    "pedestrian": Kind((190, 110, 90), 2.6, (0.15, 0.45), 0.002, cell=6),
    "person_on_vehicle": Kind((210, 60, 60), 2.0, (0.15, 0.35), 0.004, cell=6, stripe_angle_deg=45),
    "car": Kind((30, 50, 140), 0.6, (0.15, 0.30), 0.005, cell=14),
    "bicycle": Kind((20, 160, 160), 1.0, (0.10, 0.20), 0.004, cell=4, stripe_angle_deg=135),
    "motorbike": Kind((140, 20, 140), 1.0, (0.10, 0.20), 0.005, cell=6),
    "non_mot_vehicle": Kind((60, 110, 60), 1.2, (0.10, 0.20), 0.002, cell=10),
    "static_person": Kind((200, 150, 110), 2.6, (0.15, 0.40), 0.0, cell=8),
    "distractor": Kind((220, 190, 150), 2.6, (0.10, 0.30), 0.002, cell=10, stripe_angle_deg=90),
    "occluder": Kind((110, 110, 110), 2.0, (0.30, 0.50), 0.0, cell=16, stripe_angle_deg=0),
    "occluder_on_ground": Kind((160, 140, 90), 0.5, (0.10, 0.20), 0.0, cell=12),
    "occluder_full": Kind((70, 70, 80), 1.0, (0.30, 0.50), 0.0, cell=20),
    "reflection": Kind((170, 170, 200), 2.6, (0.15, 0.40), 0.002, cell=6, stripe_angle_deg=60),
}
#: Class frequencies: mostly pedestrians, every other class now and then.
WEIGHTS: dict[str, float] = {
    "pedestrian": 0.6, "person_on_vehicle": 0.04, "car": 0.08, "bicycle": 0.04, "motorbike": 0.03,
    "non_mot_vehicle": 0.03, "static_person": 0.06, "distractor": 0.04, "occluder": 0.02,
    "occluder_on_ground": 0.02, "occluder_full": 0.02, "reflection": 0.02,
}
CLASS_ID = {name: cls for cls, name in CLASSES.items()}
NOT_CONSIDERED_FRACTION = 0.1  # of pedestrian tracks, written with consider = 0
DETECTED = ("pedestrian", "person_on_vehicle", "static_person")
#: Keyword sets of ``write`` matching the workflow's ``synthetic_size`` presets.
PRESETS: dict[str, dict] = {
    "tiny": {"sequences": ("MOT17-02", "MOT17-05"), "n_frames": 12, "size": (90, 160), "n_objects": 5},
    "demo": {"n_frames": 60, "size": (270, 480), "n_objects": 10},
    "full": {"n_frames": 200, "size": (540, 960), "n_objects": 16},
}


def seqinfo_text(name: str, frame_rate: int, n_frames: int, size: tuple[int, int]) -> str:
    """``seqinfo.ini`` content as MOTChallenge writes it."""
    return (
        f"[Sequence]\nname={name}\nimDir=img1\nframeRate={frame_rate}\nseqLength={n_frames}\n"
        f"imWidth={size[1]}\nimHeight={size[0]}\nimExt=.jpg\n\n"
    )


def gt_lines(boxes: list[tuple[int, Box]], considered: np.ndarray) -> list[str]:
    """``frame,id,bb_left,bb_top,bb_width,bb_height,consider,class,visibility`` rows grouped by track.

    ``consider`` is 1 for pedestrians whose track is ``considered``, else 0.
    """
    lines = []
    for frame, box in sorted(boxes, key=lambda fb: (fb[1].track, fb[0])):
        x1, y1, x2, y2 = box.full
        cls = CLASS_ID[box.category]
        consider = int(cls == EVALUATED_CLASS and considered[box.track])
        lines.append(
            f"{frame},{box.track + 1},{x1},{y1},{x2 - x1},{y2 - y1},"
            f"{consider},{cls},{round(box.visibility, 5)}"
        )
    return lines


def det_lines(boxes: list[tuple[int, Box]], rng: np.random.Generator) -> list[str]:
    """Noisy person detections, ``frame,-1,left,top,width,height,score,-1,-1,-1`` sorted by frame."""
    lines = []
    for frame, box in sorted(boxes, key=lambda fb: (fb[0], fb[1].track)):
        if box.category not in DETECTED or box.visibility < 0.25 or rng.random() < 0.1:
            continue
        x1, y1, x2, y2 = box.full
        w, h = x2 - x1, y2 - y1
        left, top = x1 + rng.normal(0, 0.05 * w), y1 + rng.normal(0, 0.05 * h)
        width, height = w * rng.uniform(0.9, 1.1), h * rng.uniform(0.9, 1.1)
        score = box.visibility + rng.normal(0, 0.1)
        lines.append(f"{frame},-1,{left:.1f},{top:.1f},{width:.1f},{height:.1f},{score:.3f},-1,-1,-1")
    return lines


def write_sequence(
    root: Path, sequence: str, detectors: tuple[str, ...], *, n_frames: int, size: tuple[int, int],
    n_objects: int, seed: int,
) -> None:
    """Write all detector copies of one sequence; content depends on ``seed`` and its name only."""
    rng = np.random.default_rng([seed, zlib.crc32(sequence.encode())])
    considered = rng.random(n_objects) >= NOT_CONSIDERED_FRACTION
    copies = [root / "train" / f"{sequence}-{det}" for det in detectors]
    boxes: list[tuple[int, Box]] = []
    for frame in synthesize(rng, KINDS, WEIGHTS, n_objects=n_objects, n_frames=n_frames, size=size):
        write_jpeg(copies[0] / "img1" / f"{frame.number:06d}.jpg", frame.image)
        boxes += [(frame.number, box) for box in frame.boxes]
    gt = "\n".join(gt_lines(boxes, considered)) + "\n"
    frame_rate = TRAIN_FRAME_RATES.get(sequence, 30)
    for det, copy in zip(detectors, copies):
        if copy != copies[0]:
            shutil.copytree(copies[0] / "img1", copy / "img1", dirs_exist_ok=True)
        (copy / "gt").mkdir(parents=True, exist_ok=True)
        (copy / "gt" / "gt.txt").write_text(gt)
        det_rng = np.random.default_rng([seed, zlib.crc32(sequence.encode()), zlib.crc32(det.encode())])
        (copy / "det").mkdir(parents=True, exist_ok=True)
        (copy / "det" / "det.txt").write_text("\n".join(det_lines(boxes, det_rng)) + "\n")
        (copy / "seqinfo.ini").write_text(seqinfo_text(copy.name, frame_rate, n_frames, size))


def write(
    root: str | os.PathLike,
    *,
    sequences: tuple[str, ...] | list[str] = tuple(TRAIN_FRAME_RATES),
    detectors: tuple[str, ...] | list[str] = DETECTORS,
    n_frames: int = 60,
    size: tuple[int, int] = (270, 480),
    n_objects: int = 10,
    seed: int = 0,
) -> Path:
    """Write synthetic MOT17 train sequences (every detector copy) under ``root``; returns ``root``.

    ``size`` is ``(height, width)``; frame rates are the official ones.
    """
    root = Path(root)
    for sequence in sequences:
        write_sequence(root, sequence, tuple(detectors), n_frames=n_frames, size=size,
                       n_objects=n_objects, seed=seed)
    return root
