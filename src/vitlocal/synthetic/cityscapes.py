"""Seeded synthetic street scenes written in the exact Cityscapes gtFine layout.

Every scene is a list of labelled polygons painted back to front (as
Cityscapes' own polygons are), so ``_gtFine_polygons.json``, labelIds,
instanceIds and colour images agree by construction. Every image holds all 19
evaluation classes (so that even 2-images-per-city subsets score all of them)
plus void regions (ego vehicle, rectification border, static objects,
parking, ground), each with its own colour and texture, and the layout varies
per image with the seed. Content is for testing the pipeline, never a result.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..datasets.cityscapes import LABELS, TRAIN_CITIES, VAL_CITIES
from ..io import write_png
from .textures import texture

_ID = {label.name: label.id for label in LABELS}
_HAS_INSTANCES = {label.name: label.hasInstances for label in LABELS}
_COLOR_LUT = np.zeros((256, 4), np.uint8)
for _label in LABELS:
    _COLOR_LUT[_label.id] = (*_label.color, 255)


@dataclass(frozen=True)
class _Look:
    """A class's appearance at 1024 px image height (grain and stripes scale with size)."""

    rgb: tuple[int, int, int]
    cell: float = 8.0
    amplitude: float = 30.0
    stripe_period: float | None = None
    stripe_angle_deg: float = 0.0


_LOOKS: dict[str, _Look] = {
    "sky": _Look((140, 185, 235), cell=160, amplitude=25),
    "building": _Look((150, 120, 100), cell=24, amplitude=35, stripe_period=48, stripe_angle_deg=90),
    "wall": _Look((190, 180, 160), cell=12, amplitude=15),
    "fence": _Look((140, 115, 80), cell=8, amplitude=60, stripe_period=14, stripe_angle_deg=0),
    "vegetation": _Look((55, 110, 35), cell=5, amplitude=60),
    "terrain": _Look((150, 160, 80), cell=10, amplitude=35, stripe_period=20, stripe_angle_deg=60),
    "road": _Look((85, 85, 90), cell=6, amplitude=25),
    "sidewalk": _Look((170, 150, 140), cell=8, amplitude=20, stripe_period=28, stripe_angle_deg=0),
    "parking": _Look((115, 100, 110), cell=6, amplitude=20, stripe_period=60, stripe_angle_deg=30),
    "ground": _Look((120, 110, 70), cell=14, amplitude=30),
    "pole": _Look((120, 120, 128), cell=4, amplitude=10),
    "traffic light": _Look((35, 35, 30), cell=3, amplitude=30),
    "traffic sign": _Look((235, 210, 40), cell=6, amplitude=20),
    "person": _Look((190, 110, 90), cell=6, amplitude=40),
    "rider": _Look((210, 60, 60), cell=6, amplitude=40),
    "car": _Look((30, 50, 140), cell=12, amplitude=40),
    "truck": _Look((120, 80, 40), cell=20, amplitude=25),
    "bus": _Look((235, 160, 30), cell=20, amplitude=30, stripe_period=60, stripe_angle_deg=90),
    "train": _Look((185, 195, 205), cell=16, amplitude=30, stripe_period=18, stripe_angle_deg=0),
    "motorcycle": _Look((140, 20, 140), cell=6, amplitude=40),
    "bicycle": _Look((20, 160, 160), cell=4, amplitude=40),
    "static": _Look((100, 80, 60), cell=6, amplitude=30),
    "ego vehicle": _Look((20, 20, 25), cell=40, amplitude=10),
    "rectification border": _Look((0, 0, 0), amplitude=0),
}

Polygon = np.ndarray  # (N, 2) float, x then y
Scene = list[tuple[str, Polygon]]


def _rect(x0: float, y0: float, x1: float, y1: float) -> Polygon:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)


def _ellipse(cx: float, cy: float, rx: float, ry: float) -> Polygon:
    return np.array([[cx + rx * np.cos(a), cy + ry * np.sin(a)] for a in np.linspace(0, 2 * np.pi, 16, endpoint=False)])


def _person(cx: float, yb: float, height: float) -> Polygon:
    """A walking silhouette (legs, torso, shoulders, head) as one polygon."""
    u = 0.35 * height
    pts = [(-0.5, 0), (-0.4, -0.5), (-0.5, -0.82), (-0.2, -0.86), (-0.2, -1), (0.2, -1),
           (0.2, -0.86), (0.5, -0.82), (0.4, -0.5), (0.5, 0), (0.1, 0), (0, -0.4), (-0.1, 0)]
    return np.array([[cx + u * x, yb + height * y] for x, y in pts])


def _vehicle(x0: float, yb: float, width: float, height: float, cabin: float) -> Polygon:
    """A box with a narrower cabin on top; ``cabin`` = cabin height fraction (0 = plain box)."""
    yc = yb - height * (1 - cabin)
    return np.array([[x0, yb], [x0 + width, yb], [x0 + width, yc], [x0 + 0.8 * width, yc],
                     [x0 + 0.7 * width, yb - height], [x0 + 0.25 * width, yb - height],
                     [x0 + 0.15 * width, yc], [x0, yc]])


def _two_wheeler(x0: float, yb: float, width: float) -> Polygon:
    h = 0.6 * width
    return np.array([[x0, yb - 0.2 * h], [x0 + 0.2 * width, yb], [x0 + 0.4 * width, yb - 0.3 * h],
                     [x0 + 0.6 * width, yb - 0.3 * h], [x0 + 0.8 * width, yb], [x0 + width, yb - 0.2 * h],
                     [x0 + 0.8 * width, yb - h], [x0 + 0.2 * width, yb - h]])


class _Street:
    """Ground geometry of one scene: horizon, vanishing point and road edges."""

    def __init__(self, rng: np.random.Generator, h: int, w: int):
        self.h, self.w = h, w
        self.y0 = h * rng.uniform(0.40, 0.50)
        vx = w * rng.uniform(0.42, 0.58)
        self.top = (vx - 0.03 * w, vx + 0.03 * w)
        self.bottom = (w * rng.uniform(0.02, 0.15), w * rng.uniform(0.85, 0.98))

    def depth(self, y: float) -> float:
        """0 at the horizon, 1 at the bottom row."""
        return (y - self.y0) / (self.h - self.y0)

    def road_edges(self, y: float) -> tuple[float, float]:
        t = self.depth(y)
        return tuple(a + (b - a) * t for a, b in zip(self.top, self.bottom, strict=True))

    def road(self) -> Polygon:
        (tl, tr), (bl, br) = self.top, self.bottom
        return np.array([[tl, self.y0], [tr, self.y0], [br, self.h], [bl, self.h]])


def _background(rng: np.random.Generator, s: _Street) -> Scene:
    h, w, y0 = s.h, s.w, s.y0
    scene: Scene = [("sky", _rect(0, 0, w, h)), ("sidewalk", _rect(0, y0, w, h))]
    x = -rng.uniform(0, 0.05) * w
    while x < w:
        bw = w * rng.uniform(0.08, 0.2)
        if rng.random() > 0.15:  # gaps show the sky between blocks
            top = h * rng.uniform(0.04, 0.3)
            scene.append(("building", _rect(x, top, x + bw, y0 + 0.01 * h)))
        x += bw
    for x0 in (0.0, w * rng.uniform(0.6, 0.75)):
        top, width = y0 - h * rng.uniform(0.04, 0.08), w * rng.uniform(0.1, 0.2)
        scene.append(("wall", _rect(x0, top, x0 + width, y0 + 0.01 * h)))
    for _ in range(rng.integers(2, 5)):
        cx, r = w * rng.uniform(0, 1), w * rng.uniform(0.04, 0.1)
        scene.append(("vegetation", _ellipse(cx, y0 - h * rng.uniform(0.1, 0.2), r, r * rng.uniform(0.8, 1.3))))
        scene.append(("vegetation", _rect(cx - 0.1 * r, y0 - h * 0.1, cx + 0.1 * r, y0 + 0.02 * h)))
    scene.append(("terrain", np.array([[0, y0], [s.top[0] - 0.06 * w, y0], [0, y0 + h * rng.uniform(0.1, 0.2)]])))
    scene.append(("fence", np.array([[s.top[1] + 0.04 * w, y0 - 0.015 * h], [w, y0 - 0.12 * h],
                                     [w, y0 + 0.02 * h], [s.top[1] + 0.04 * w, y0 + 0.003 * h]])))
    scene.append(("road", s.road()))
    yp = y0 + (h - y0) * rng.uniform(0.15, 0.3)
    yq = yp + 0.08 * h
    scene.append(("parking", np.array([[s.road_edges(yp)[1], yp], [w, yp], [w, yq], [s.road_edges(yq)[1], yq]])))
    scene.append(("ground", _rect(0.01 * w, h * 0.8, 0.01 * w + w * rng.uniform(0.03, 0.06), h * 0.86)))
    return scene


def _street_furniture(rng: np.random.Generator, s: _Street) -> Scene:
    """Poles carrying signs or lights on both sidewalks, plus static bins."""
    scene: Scene = []
    for k in range(rng.integers(3, 6)):
        yb = s.y0 + (s.h - s.y0) * rng.uniform(0.06, 0.3)
        t, (left, right) = s.depth(yb), s.road_edges(yb)
        pw = max(2.0, 0.012 * s.w * t)
        x = left - rng.uniform(2, 6) * pw if k % 2 == 0 else right + rng.uniform(2, 6) * pw
        top = yb - (s.h - s.y0) * t * rng.uniform(2.5, 3.5)
        scene.append(("pole", _rect(x, top, x + pw, yb)))
        if k % 2 == 0:
            scene.append(("traffic sign", _ellipse(x + pw / 2, top, 2.2 * pw, 2.2 * pw)))
        else:
            scene.append(("traffic light", _rect(x - pw, top - 3 * pw, x + 2 * pw, top + 3 * pw)))
        scene.append(("static", _rect(x + 3 * pw, yb - 3 * pw, x + 6 * pw, yb)))
    return scene


def _road_users(rng: np.random.Generator, s: _Street) -> Scene:
    """Vehicles on the road, people on the sidewalks, two-wheelers with riders at the kerb.

    Each vehicle gets its own horizontal slot across the road, so nearer ones
    occlude farther ones only partly and every class stays visible; objects
    are painted far to near, two-wheelers and riders last.
    """
    vehicles = [("car", 0.22, 0.55, 0.4)] * int(rng.integers(2, 5)) + [
        ("truck", 0.3, 0.9, 0.0), ("bus", 0.35, 0.8, 0.0), ("train", 0.45, 0.6, 0.0)]
    slots = rng.permutation(len(vehicles))
    items: list[tuple[float, tuple[str, Polygon]]] = []
    for (name, size, aspect, cabin), slot in zip(vehicles, slots, strict=True):
        yb = s.y0 + (s.h - s.y0) * rng.uniform(0.08, 0.7)
        t, (left, right) = s.depth(yb), s.road_edges(yb)
        slot_w = (right - left) / len(vehicles)
        vw = max(4.0, min(size * s.w * t, 1.3 * slot_w))
        x0 = left + (slot + 0.5) * slot_w - vw / 2
        items.append((yb, (name, _vehicle(x0, yb, vw, aspect * vw, cabin))))
    for k in range(rng.integers(3, 6)):
        yb = s.y0 + (s.h - s.y0) * rng.uniform(0.1, 0.75)
        t, (left, right) = s.depth(yb), s.road_edges(yb)
        ph = max(6.0, 0.5 * (s.h - s.y0) * t * rng.uniform(0.8, 1.1))
        x = left - rng.uniform(0.2, 1.0) * ph if k % 2 == 0 else right + rng.uniform(0.2, 1.0) * ph
        items.append((yb, ("person", _person(x, yb, ph))))
    scene = [obj for _, obj in sorted(items, key=lambda item: item[0])]
    for name, side in (("bicycle", 0), ("motorcycle", 1)):
        yb = s.y0 + (s.h - s.y0) * rng.uniform(0.3, 0.6)
        bw = max(6.0, 0.1 * s.w * s.depth(yb))
        x0 = s.road_edges(yb)[side] - bw / 2
        scene += [(name, _two_wheeler(x0, yb, bw)), ("rider", _person(x0 + bw / 2, yb - 0.45 * bw, 1.3 * bw))]
    return scene


def _foreground(rng: np.random.Generator, s: _Street) -> Scene:
    h, w = s.h, s.w
    hood = h * rng.uniform(0.06, 0.1)
    scene: Scene = [("ego vehicle", np.vstack([[[0, h]], _ellipse(w / 2, h, 0.7 * w, hood)[8:], [[w, h]]]))]
    if rng.random() < 0.5:
        bw = max(1.0, 0.004 * w)
        scene += [("rectification border", _rect(0, 0, bw, h)), ("rectification border", _rect(w - bw, 0, w, h))]
    return scene


def make_scene(rng: np.random.Generator, h: int, w: int) -> Scene:
    """A street scene as back-to-front labelled polygons (integer pixel coordinates)."""
    s = _Street(rng, h, w)
    scene = _background(rng, s) + _street_furniture(rng, s) + _road_users(rng, s) + _foreground(rng, s)
    if rng.random() < 0.5:  # mirror: fence/terrain sides vary too
        scene = [(name, np.column_stack([w - poly[:, 0], poly[:, 1]])) for name, poly in scene]
    limits = np.array([w - 1, h - 1])
    return [(name, np.clip(np.rint(poly), 0, limits).astype(np.int32)) for name, poly in scene]


def rasterize(scene: Scene, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """labelIds (uint8) and instanceIds (uint16, ``id*1000+k`` for instance classes)."""
    label_ids = np.zeros((h, w), np.uint8)
    instance_ids = np.zeros((h, w), np.uint16)
    counts: dict[str, int] = {}
    for name, poly in scene:
        lid = _ID[name]
        if _HAS_INSTANCES[name]:
            iid = lid * 1000 + counts.get(name, 0)
            counts[name] = counts.get(name, 0) + 1
        else:
            iid = lid
        cv2.fillPoly(label_ids, [poly], lid)
        cv2.fillPoly(instance_ids, [poly], iid)
    return label_ids, instance_ids


def _bbox(mask: np.ndarray) -> tuple[slice, slice]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def render(rng: np.random.Generator, label_ids: np.ndarray, instance_ids: np.ndarray) -> np.ndarray:
    """Paint each class with its texture, vary instances' brightness and the image's light."""
    h, w = label_ids.shape
    scale = h / 1024
    image = np.zeros((h, w, 3), np.float32)
    present = np.flatnonzero(np.bincount(label_ids.ravel(), minlength=256))
    for label in LABELS:
        if label.id not in present or label.name not in _LOOKS:
            continue
        look = _LOOKS[label.name]
        mask = label_ids == label.id
        rows, cols = _bbox(mask)
        tex = texture(
            rows.stop - rows.start, cols.stop - cols.start, look.rgb, rng,
            cell=max(2.0, look.cell * scale), amplitude=look.amplitude,
            stripe_period=max(3.0, look.stripe_period * scale) if look.stripe_period else None,
            stripe_angle_deg=look.stripe_angle_deg,
        )
        sub = mask[rows, cols]
        image[rows, cols][sub] = tex[sub]
    gain = np.ones(65536, np.float32)  # per-instance brightness, one gather for all instances
    instances = np.unique(instance_ids[instance_ids >= 1000])
    gain[instances] = rng.uniform(0.8, 1.2, size=instances.size)
    light = rng.uniform(0.85, 1.15) * rng.uniform(0.95, 1.05, size=3).astype(np.float32)
    image *= gain[instance_ids][..., None] * light
    return np.clip(image, 0, 255).astype(np.uint8)


def polygons_json(scene: Scene, h: int, w: int) -> dict:
    """The ``_gtFine_polygons.json`` content of a scene (objects in painting order)."""
    return {
        "imgHeight": h,
        "imgWidth": w,
        "objects": [{"label": name, "polygon": poly.tolist()} for name, poly in scene],
    }


def write_image(root: Path, split: str, city: str, seq: int, frame: int, size: tuple[int, int], seed: int) -> None:
    """Write one frame's leftImg8bit image and its four gtFine files."""
    stem = f"{city}_{seq:06d}_{frame:06d}"
    rng = np.random.default_rng([seed, zlib.crc32(f"{split}/{stem}".encode())])
    h, w = size
    scene = make_scene(rng, h, w)
    label_ids, instance_ids = rasterize(scene, h, w)
    gt = root / "gtFine" / split / city / stem
    write_png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", render(rng, label_ids, instance_ids))
    write_png(f"{gt}_gtFine_labelIds.png", label_ids)
    write_png(f"{gt}_gtFine_instanceIds.png", instance_ids)
    write_png(f"{gt}_gtFine_color.png", _COLOR_LUT[label_ids])
    Path(f"{gt}_gtFine_polygons.json").write_text(json.dumps(polygons_json(scene, h, w)))


def default_frames(
    train_cities: tuple[str, ...] | list[str],
    val_cities: tuple[str, ...] | list[str],
    images_per_city: int | dict[str, int],
) -> dict[str, dict[str, list[tuple[int, int]]]]:
    """Names ``<city>_<seq>_000000`` for ``images_per_city`` (int, or ``{split: n}``).

    Frame 000000 occurs in none of the authors' lists (real gtFine frames are
    mostly 000019), so a synthetic root is never mistaken for a partial copy
    of Cityscapes by ``select_subset``.
    """
    per_split = images_per_city
    if not isinstance(per_split, dict):
        per_split = {"train": images_per_city, "val": images_per_city}
    return {
        split: {city: [(k, 0) for k in range(per_split.get(split, 0))] for city in cities}
        for split, cities in (("train", train_cities), ("val", val_cities))
    }


def write(
    root: str | os.PathLike,
    *,
    train_cities: tuple[str, ...] | list[str] = TRAIN_CITIES,
    val_cities: tuple[str, ...] | list[str] = VAL_CITIES,
    images_per_city: int | dict[str, int] = 2,
    size: tuple[int, int] = (1024, 2048),
    seed: int = 0,
    frames: dict[str, dict[str, list[tuple[int, int]]]] | None = None,
) -> Path:
    """Write a synthetic Cityscapes under ``root``; returns ``root``.

    ``images_per_city`` is an int or ``{"train": n, "val": m}``; ``frames``
    (``{split: {city: [(seq, frame), ...]}}``) overrides the cities and counts
    to write exactly given names (e.g. those of an authors' list). Each
    image depends only on ``seed`` and its own name.
    """
    root = Path(root)
    frames = frames if frames is not None else default_frames(train_cities, val_cities, images_per_city)
    for split, cities in frames.items():
        for city, pairs in cities.items():
            for seq, frame in pairs:
                write_image(root, split, city, seq, frame, size, seed)
    return root
