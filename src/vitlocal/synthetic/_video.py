"""Seeded moving-object videos shared by the BDD100K and MOT17 generators.

A textured two-band background (far band, ground band) pans slowly; objects
are textured rectangles, one texture per track (so identity is visible in the
pixels) built around their category's colour, grain and stripe angle (so
category is visible too). They move with constant velocity plus one-pixel
jitter, enter from the sides, leave the frame and occlude each other (lower
in the frame = nearer, painted last). Every box is on whole pixels and an
ownership map records which track painted each pixel, so boxes, truncation,
occlusion and visibility are exact statements about the drawn frame.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .textures import texture

BACKGROUND = -1  # ownership value of pixels no object painted


@dataclass(frozen=True)
class Kind:
    """How objects of one category look and move (sizes relative to the frame)."""

    rgb: tuple[int, int, int]
    aspect: float  # box height / width
    height: tuple[float, float]  # range of box height / frame height
    speed: float  # max horizontal speed, frame widths per frame
    cell: float = 6.0  # texture grain at a 720-px frame height
    stripe_angle_deg: float | None = None


@dataclass(frozen=True)
class Track:
    """One object for its whole life: size, path and persistent appearance."""

    index: int
    category: str
    first: int  # 1-based frame of appearance
    start: tuple[float, float]  # top-left (x, y) at ``first``
    velocity: tuple[float, float]  # pixels per frame
    jitter: np.ndarray  # (n_frames - first + 1, 2) integer pixel offsets
    patch: np.ndarray  # (h, w, 3) uint8 texture

    def corner(self, frame: int) -> tuple[int, int]:
        """Integer top-left corner at ``frame`` (>= ``first``)."""
        t = frame - self.first
        dx, dy = self.jitter[t]
        return (int(round(self.start[0] + self.velocity[0] * t)) + int(dx),
                int(round(self.start[1] + self.velocity[1] * t)) + int(dy))


@dataclass(frozen=True)
class Box:
    """A track's state in one frame; boxes are ``(x1, y1, x2, y2)`` with exclusive ``x2, y2``."""

    track: int
    category: str
    full: tuple[int, int, int, int]  # whole object, may extend past the frame
    clipped: tuple[int, int, int, int]  # part inside the frame
    visible_pixels: int  # pixels of the frame this track painted

    @property
    def visibility(self) -> float:
        """Visible fraction of the whole object (MOT's ``visibility``)."""
        x1, y1, x2, y2 = self.full
        return self.visible_pixels / ((x2 - x1) * (y2 - y1))

    @property
    def truncated(self) -> bool:
        return self.clipped != self.full

    @property
    def occluded(self) -> bool:
        x1, y1, x2, y2 = self.clipped
        return self.visible_pixels < (x2 - x1) * (y2 - y1)


@dataclass(frozen=True)
class Frame:
    """One rendered frame: RGB image, ownership map and the boxes of tracks inside it."""

    number: int
    image: np.ndarray
    owner: np.ndarray  # (H, W) int32 track index, BACKGROUND elsewhere
    boxes: list[Box]


def _patch(rng: np.random.Generator, kind: Kind, h: int, w: int, frame_h: int) -> np.ndarray:
    """A track's own texture: its category's look with a per-track colour shift."""
    rgb = tuple(int(c) for c in np.clip(np.asarray(kind.rgb) + rng.integers(-20, 21, 3), 0, 255))
    scale = frame_h / 720
    stripes = kind.stripe_angle_deg is not None
    return texture(
        h, w, rgb, rng, cell=max(2.0, kind.cell * scale), amplitude=45.0,
        stripe_period=max(4.0, 16 * scale) if stripes else None,
        stripe_angle_deg=(kind.stripe_angle_deg or 0.0) + float(rng.uniform(-15, 15)),
    )


def make_track(
    rng: np.random.Generator, index: int, category: str, kind: Kind, n_frames: int, size: tuple[int, int]
) -> Track:
    """A track in the frame from frame 1 (60 %, and always if static) or entering from a side later."""
    frame_h, frame_w = size
    h = max(4, int(round(rng.uniform(*kind.height) * frame_h)))
    w = max(3, int(round(h / kind.aspect)))
    vx = float(rng.uniform(0.2, 1.0) * kind.speed * frame_w * rng.choice([-1, 1]))
    vy = float(rng.normal(0, 0.05) * abs(vx))
    y = float(rng.uniform(0.45 * frame_h, frame_h) - h)  # feet on the ground band
    if rng.random() < 0.6 or vx == 0:
        first, x = 1, float(rng.uniform(-0.3 * w, frame_w - 0.7 * w))
    else:
        first = int(rng.integers(1, max(2, n_frames // 2)))
        x = float(-w + 1 if vx > 0 else frame_w - 1)
    jitter = rng.integers(-1, 2, size=(n_frames - first + 1, 2))
    return Track(index, category, first, (x, y), (vx, vy), jitter, _patch(rng, kind, h, w, frame_h))


def make_tracks(
    rng: np.random.Generator,
    kinds: Mapping[str, Kind],
    weights: Mapping[str, float],
    n_objects: int,
    n_frames: int,
    size: tuple[int, int],
) -> list[Track]:
    """``n_objects`` tracks with categories drawn from ``weights`` (normalised)."""
    names = list(weights)
    p = np.asarray([weights[n] for n in names], float)
    categories = rng.choice(names, size=n_objects, p=p / p.sum())
    return [make_track(rng, i, str(c), kinds[str(c)], n_frames, size) for i, c in enumerate(categories)]


def make_background(rng: np.random.Generator, size: tuple[int, int], pan_pixels: int) -> np.ndarray:
    """A far band (vertical stripes) over a ground band, ``pan_pixels`` wider than the frame."""
    frame_h, frame_w = size
    horizon = int(0.4 * frame_h)
    scale = frame_h / 720
    width = frame_w + pan_pixels
    far = texture(horizon, width, (150, 135, 120), rng, cell=max(2.0, 30 * scale),
                  amplitude=40, stripe_period=max(6.0, 60 * scale), stripe_angle_deg=0)
    ground = texture(frame_h - horizon, width, (90, 90, 95), rng, cell=max(2.0, 8 * scale), amplitude=25)
    return np.concatenate([far, ground], axis=0)


def _clip(box: tuple[int, int, int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    frame_h, frame_w = size
    x1, y1, x2, y2 = box
    return max(x1, 0), max(y1, 0), min(x2, frame_w), min(y2, frame_h)


def render(
    tracks: list[Track], background: np.ndarray, frame: int, size: tuple[int, int], pan: float
) -> Frame:
    """Paint frame ``frame``: background window panned by ``pan`` px/frame, then tracks far to near."""
    frame_h, frame_w = size
    offset = int(round(pan * (frame - 1)))
    image = background[:, offset:offset + frame_w].copy()
    owner = np.full((frame_h, frame_w), BACKGROUND, np.int32)
    placed = []
    for track in tracks:
        if frame < track.first:
            continue
        x, y = track.corner(frame)
        h, w = track.patch.shape[:2]
        full = (x, y, x + w, y + h)
        cx1, cy1, cx2, cy2 = _clip(full, size)
        if cx2 > cx1 and cy2 > cy1:
            placed.append((full, (cx1, cy1, cx2, cy2), track))
    placed.sort(key=lambda item: (item[0][3], item[2].index))  # lower bottom edge = farther
    for (x, y, _, _), (cx1, cy1, cx2, cy2), track in placed:
        image[cy1:cy2, cx1:cx2] = track.patch[cy1 - y:cy2 - y, cx1 - x:cx2 - x]
        owner[cy1:cy2, cx1:cx2] = track.index
    counts = np.bincount(owner[owner != BACKGROUND], minlength=len(tracks))
    boxes = [
        Box(track.index, track.category, full, clipped, int(counts[track.index]))
        for full, clipped, track in sorted(placed, key=lambda item: item[2].index)
    ]
    return Frame(frame, image, owner, boxes)


def synthesize(
    rng: np.random.Generator,
    kinds: Mapping[str, Kind],
    weights: Mapping[str, float],
    *,
    n_objects: int,
    n_frames: int,
    size: tuple[int, int],
    pan: float | None = None,
) -> Iterator[Frame]:
    """Frames 1..``n_frames`` of one video; ``pan`` defaults to a random slow pan (<= 0.2 % width/frame)."""
    if pan is None:
        pan = float(rng.uniform(0.0, 0.002) * size[1])
    tracks = make_tracks(rng, kinds, weights, n_objects, n_frames, size)
    background = make_background(rng, size, int(np.ceil(pan * (n_frames - 1))) + 1)
    for frame in range(1, n_frames + 1):
        yield render(tracks, background, frame, size, pan)


def write_jpeg(path: str | os.PathLike, image: np.ndarray, quality: int = 90) -> None:
    """Write an RGB uint8 image as JPEG (the format of both tracking datasets)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="JPEG", quality=quality)
