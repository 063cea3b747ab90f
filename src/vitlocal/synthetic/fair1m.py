"""Seeded synthetic aerial scenes written in the exact FAIR1M layout (TIFF + XML).

Each image is textured ground with randomly rotated objects. Every fine class
has its own size range, aspect ratio, colour and stripe pattern; classes of one
super-class share a silhouette (pointed hulls for ships, plain boxes for
vehicles, cross-shaped planes, lined courts, rings / crossings / long decks for
roads), so fine and super-class retrieval both have something to find. Class
labels are dealt from repeated shuffles of the 37 classes, so every class
occurs about equally often. Demo size (the defaults): 24 + 24 train images
of 1000x1000 with 20 objects each give ~570 candidate crops of 224 px, and
``select_crops(per_class=8)`` finds 8 crops for every class (checked for
writer seeds 0-2 x selection seeds 0-9); 32 train images leave some classes
short. Content is for testing the pipeline, never a result.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..datasets.fair1m import CLASSES, SUPERCLASS_OF
from .textures import texture, value_noise


@dataclass(frozen=True)
class _Look:
    """A class's appearance: long-side range in px, length/width ratio, colour."""

    length: tuple[float, float]
    aspect: float
    rgb: tuple[int, int, int]


_LOOKS: dict[str, _Look] = {
    "Passenger Ship": _Look((80, 120), 4.5, (235, 235, 240)),
    "Motorboat": _Look((15, 28), 3.0, (245, 250, 255)),
    "Fishing Boat": _Look((20, 40), 3.5, (60, 110, 160)),
    "Tugboat": _Look((20, 34), 2.8, (200, 60, 40)),
    "other-ship": _Look((30, 60), 4.0, (150, 150, 150)),
    "Engineering Ship": _Look((50, 90), 3.5, (230, 190, 40)),
    "Liquid Cargo Ship": _Look((90, 150), 6.0, (160, 50, 50)),
    "Dry Cargo Ship": _Look((90, 150), 5.0, (70, 60, 50)),
    "Warship": _Look((70, 130), 5.5, (110, 120, 130)),
    "Small Car": _Look((9, 13), 2.0, (200, 30, 30)),
    "Bus": _Look((24, 34), 3.6, (240, 200, 30)),
    "Cargo Truck": _Look((18, 26), 2.8, (40, 90, 200)),
    "Dump Truck": _Look((16, 22), 2.3, (230, 130, 20)),
    "other-vehicle": _Look((12, 20), 2.2, (120, 120, 120)),
    "Van": _Look((12, 15), 2.1, (250, 250, 250)),
    "Trailer": _Look((28, 40), 4.0, (170, 170, 190)),
    "Tractor": _Look((10, 14), 1.6, (30, 140, 40)),
    "Excavator": _Look((14, 20), 1.5, (250, 220, 0)),
    "Truck Tractor": _Look((12, 16), 1.8, (20, 20, 60)),
    "Boeing737": _Look((35, 42), 1.05, (225, 225, 230)),
    "Boeing747": _Look((66, 75), 1.1, (240, 240, 245)),
    "Boeing777": _Look((60, 70), 1.0, (215, 220, 235)),
    "Boeing787": _Look((54, 60), 0.95, (230, 215, 215)),
    "ARJ21": _Look((30, 36), 1.1, (200, 210, 200)),
    "C919": _Look((36, 42), 1.0, (210, 230, 240)),
    "A220": _Look((33, 38), 1.05, (235, 235, 210)),
    "A321": _Look((42, 48), 1.2, (220, 220, 220)),
    "A330": _Look((56, 64), 1.0, (200, 200, 215)),
    "A350": _Look((60, 68), 0.95, (245, 235, 235)),
    "other-airplane": _Look((20, 40), 1.0, (170, 175, 180)),
    "Baseball Field": _Look((100, 140), 1.0, (170, 120, 80)),
    "Basketball Court": _Look((40, 56), 1.8, (210, 120, 60)),
    "Football Field": _Look((100, 150), 1.5, (60, 150, 60)),
    "Tennis Court": _Look((34, 44), 2.1, (50, 110, 160)),
    "Roundabout": _Look((60, 110), 1.0, (90, 90, 95)),
    "Intersection": _Look((60, 110), 1.0, (70, 70, 75)),
    "Bridge": _Look((100, 180), 5.0, (150, 145, 140)),
}
_WHITE = np.array([245, 245, 245], np.float32)
_ISLAND = np.array([70, 130, 60], np.float32)


def _shape_mask(name: str, u: np.ndarray, v: np.ndarray, length: float, width: float) -> np.ndarray:
    """Pixels of the object's silhouette in box coordinates (``u`` along the long side)."""
    box = (np.abs(u) <= length / 2) & (np.abs(v) <= width / 2)
    group = SUPERCLASS_OF[name]
    if group == "Ship":  # pointed bow at +u
        taper = np.clip((length / 2 - u) / (0.25 * length), 0.0, 1.0)
        return box & (np.abs(v) <= width / 2 * taper)
    if group == "Airplane":  # fuselage, wings, tail plane
        fuselage = np.abs(v) <= 0.07 * length
        wings = np.abs(u - 0.05 * length) <= 0.09 * length
        tail = (np.abs(u + 0.42 * length) <= 0.05 * length) & (np.abs(v) <= 0.2 * width)
        return box & (fuselage | wings | tail)
    if name == "Roundabout":
        return np.hypot(u, v) <= length / 2
    return box


def _markings(name: str, u: np.ndarray, v: np.ndarray, length: float, width: float) -> np.ndarray:
    """Pixels painted white (court lines) or green (roundabout island), by class family."""
    if SUPERCLASS_OF[name] == "Court":
        line = max(1.0, 0.04 * width)
        return (length / 2 - np.abs(u) <= line) | (width / 2 - np.abs(v) <= line) | (np.abs(u) <= line / 2)
    if name == "Roundabout":
        return np.hypot(u, v) <= 0.28 * length
    if name == "Intersection":  # kerbs outside the two crossing roads
        return (np.abs(u) > 0.16 * length) & (np.abs(v) > 0.16 * width)
    return np.zeros(u.shape, dtype=bool)


def _corners(cx: float, cy: float, length: float, width: float, theta: float) -> np.ndarray:
    """The 4 corners of a box centred at ``(cx, cy)``, long side at angle ``theta`` (radians), cyclic."""
    du = np.array([np.cos(theta), np.sin(theta)]) * length / 2
    dv = np.array([-np.sin(theta), np.cos(theta)]) * width / 2
    c = np.array([cx, cy])
    return np.array([c + du + dv, c - du + dv, c - du - dv, c + du - dv])


def _paint(image: np.ndarray, name: str, box: tuple, rng: np.random.Generator) -> None:
    """Draw one object (silhouette, class colour, class stripes, markings) into ``image``."""
    cx, cy, length, width, theta = box
    h, w = image.shape[:2]
    corners = _corners(cx, cy, length, width, theta)
    x0, y0 = np.maximum(np.floor(corners.min(axis=0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(corners.max(axis=0)).astype(int), (w, h))
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
    u = (xs - cx) * np.cos(theta) + (ys - cy) * np.sin(theta)
    v = -(xs - cx) * np.sin(theta) + (ys - cy) * np.cos(theta)
    k = CLASSES.index(name)
    period = 3.0 + (k % 7)
    stripes = np.sin(2 * np.pi * (u * np.cos(k) + v * np.sin(k)) / period)
    grain = value_noise(y1 - y0, x1 - x0, rng, cell=3.0) - 0.5
    colour = np.asarray(_LOOKS[name].rgb, np.float32) + (18 * stripes + 30 * grain)[..., None]
    colour[_markings(name, u, v, length, width)] = _ISLAND if name == "Roundabout" else _WHITE
    mask = _shape_mask(name, u, v, length, width)
    image[y0:y1, x0:x1][mask] = np.clip(colour[mask], 0, 255).astype(np.uint8)


def _ground(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Fields and bare soil: coarse blotches plus fine grain, tinted per image."""
    tint = rng.integers(-15, 16, size=3)
    base = tuple(int(c) for c in np.array([110, 112, 96]) + tint)
    coarse = texture(h, w, base, rng, cell=64.0, amplitude=70.0).astype(np.int16)
    fine = (value_noise(h, w, rng, cell=4.0) - 0.5) * 24
    return np.clip(coarse + fine[..., None].astype(np.int16), 0, 255).astype(np.uint8)


def _place(
    rng: np.random.Generator, names: list[str], w: int, h: int, tries: int = 30
) -> list[tuple[str, tuple]]:
    """Random boxes ``(name, (cx, cy, length, width, theta))`` inside the image, avoiding overlaps."""
    placed: list[tuple[str, tuple, np.ndarray]] = []
    for name in names:
        look = _LOOKS[name]
        # Cap so that the rotated box fits the image whatever its angle.
        length = min(rng.uniform(*look.length), 0.9 * min(w, h) / np.hypot(1.0, 1.0 / look.aspect))
        width = length / look.aspect
        theta = rng.uniform(0, np.pi)
        radius = np.hypot(length, width) / 2 + 1
        for _ in range(tries):
            cx, cy = rng.uniform(radius, w - radius), rng.uniform(radius, h - radius)
            corners = _corners(cx, cy, length, width, theta)
            lo, hi = corners.min(axis=0) - 2, corners.max(axis=0) + 2
            if all(np.any(hi < p_lo) or np.any(lo > p_hi) for _, _, (p_lo, p_hi) in placed):
                break
        placed.append((name, (cx, cy, length, width, theta), (lo, hi)))
    return [(name, box) for name, box, _ in placed]


def _xml(
    filename: str, origin: str, w: int, h: int, depth: int, objects: list[np.ndarray], names: list[str]
) -> ET.ElementTree:
    """An annotation in the FAIR1M schema (5 points: the 4 corners and the first repeated)."""
    ann = ET.Element("annotation")
    source = ET.SubElement(ann, "source")
    ET.SubElement(source, "filename").text = filename
    ET.SubElement(source, "origin").text = origin
    research = ET.SubElement(ann, "research")
    for tag, text in (("version", "1.0"), ("provider", "vitlocal synthetic"), ("pluginname", "FAIR1M")):
        ET.SubElement(research, tag).text = text
    size = ET.SubElement(ann, "size")
    for tag, value in (("width", w), ("height", h), ("depth", depth)):
        ET.SubElement(size, tag).text = str(value)
    objs = ET.SubElement(ann, "objects")
    for points, name in zip(objects, names):
        obj = ET.SubElement(objs, "object")
        ET.SubElement(obj, "coordinate").text = "pixel"
        ET.SubElement(obj, "type").text = "rectangle"
        ET.SubElement(obj, "description").text = "None"
        ET.SubElement(ET.SubElement(obj, "possibleresult"), "name").text = name
        pts = ET.SubElement(obj, "points")
        for x, y in [*points, points[0]]:
            ET.SubElement(pts, "point").text = f"{x:.6f},{y:.6f}"
    tree = ET.ElementTree(ann)
    ET.indent(tree)
    return tree


def write_image(
    part_dir: Path,
    stem: str,
    names: list[str],
    size: tuple[int, int],
    xml_dirname: str,
    gray: bool,
    rng: np.random.Generator,
) -> None:
    """Write ``images/<stem>.tif`` and ``<xml_dirname>/<stem>.xml`` holding objects of ``names``."""
    w, h = size
    image = _ground(h, w, rng)
    boxes = _place(rng, names, w, h)
    # Large first so that small objects painted later stay visible, as in rasterisation.
    for name, box in sorted(boxes, key=lambda nb: -nb[1][2] * nb[1][3]):
        _paint(image, name, box, rng)
    points = []
    for _, box in boxes:  # cyclic corners, random start and direction: order is not guaranteed
        corners = np.roll(_corners(*box), -int(rng.integers(4)), axis=0)
        points.append(corners if rng.random() < 0.5 else corners[::-1])
    if gray:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    (part_dir / "images").mkdir(parents=True, exist_ok=True)
    (part_dir / xml_dirname).mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(part_dir / "images" / f"{stem}.tif", format="TIFF")
    tree = _xml(f"{stem}.tif", "GF3" if gray else "GF2", w, h, 1 if gray else 3, points, [n for n, _ in boxes])
    tree.write(part_dir / xml_dirname / f"{stem}.xml", encoding="utf-8", xml_declaration=True)


def write(
    root: str | os.PathLike,
    *,
    n_train_part1: int = 24,
    n_train_part2: int = 24,
    n_val: int = 4,
    min_size: int = 1000,
    max_size: int = 1000,
    objects_per_image: int = 20,
    gray_fraction: float = 0.1,
    xml_dirname: str = "labelXml",
    part2_xml_dirname: str = "labelXmls",
    seed: int = 0,
) -> Path:
    """Write a synthetic FAIR1M under ``root``; returns ``root``.

    Widths and heights are drawn in ``[min_size, max_size]``; a share
    ``gray_fraction`` of images is single-channel (like GF3 scenes).
    ``train/part2`` uses ``part2_xml_dirname`` so that both spellings of the
    XML folder occur. Images are numbered from 0 within each part.
    """
    root = Path(root)
    parts = (
        (root / "train" / "part1", n_train_part1, xml_dirname),
        (root / "train" / "part2", n_train_part2, part2_xml_dirname),
        (root / "validation", n_val, xml_dirname),
    )
    for k, (part_dir, n_images, dirname) in enumerate(parts):
        rng = np.random.default_rng([seed, k])
        n_objects = n_images * objects_per_image
        deals = [rng.permutation(len(CLASSES)) for _ in range(-(-n_objects // len(CLASSES)))]
        labels = np.concatenate(deals)[:n_objects] if deals else np.zeros(0, int)
        for i in range(n_images):
            names = [CLASSES[c] for c in labels[i * objects_per_image : (i + 1) * objects_per_image]]
            size = tuple(int(s) for s in rng.integers(min_size, max_size + 1, size=2))
            gray = bool(rng.random() < gray_fraction)
            write_image(part_dir, str(i), names, size, dirname, gray, np.random.default_rng([seed, k, i]))
    return root
