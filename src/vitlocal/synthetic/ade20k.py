"""Seeded synthetic ADEChallengeData2016: textured class regions in the official layout.

Each image is a background class plus a few regions (rectangles, ellipses,
convex blobs) of other classes and some "other" (0) area; each class has its
own fixed colour and texture, so patch classifiers have something to learn.
``objectInfo150.txt`` carries the real 150 names with Ratio/Train/Val
computed from the written masks. Content is for testing, never a result.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..datasets.ade20k import DATA_DIR, NUM_CLASSES
from ..errors import ConfigError
from ..io import write_png
from .textures import texture

#: The official objectInfo150.txt names, Idx 1..150 (CSAILVision/sceneparsing).
NAMES: tuple[str, ...] = tuple(
    """
wall
building, edifice
sky
floor, flooring
tree
ceiling
road, route
bed
windowpane, window
grass
cabinet
sidewalk, pavement
person, individual, someone, somebody, mortal, soul
earth, ground
door, double door
table
mountain, mount
plant, flora, plant life
curtain, drape, drapery, mantle, pall
chair
car, auto, automobile, machine, motorcar
water
painting, picture
sofa, couch, lounge
shelf
house
sea
mirror
rug, carpet, carpeting
field
armchair
seat
fence, fencing
desk
rock, stone
wardrobe, closet, press
lamp
bathtub, bathing tub, bath, tub
railing, rail
cushion
base, pedestal, stand
box
column, pillar
signboard, sign
chest of drawers, chest, bureau, dresser
counter
sand
sink
skyscraper
fireplace, hearth, open fireplace
refrigerator, icebox
grandstand, covered stand
path
stairs, steps
runway
case, display case, showcase, vitrine
pool table, billiard table, snooker table
pillow
screen door, screen
stairway, staircase
river
bridge, span
bookcase
blind, screen
coffee table, cocktail table
toilet, can, commode, crapper, pot, potty, stool, throne
flower
book
hill
bench
countertop
stove, kitchen stove, range, kitchen range, cooking stove
palm, palm tree
kitchen island
computer, computing machine, computing device, data processor, electronic computer, information processing system
swivel chair
boat
bar
arcade machine
hovel, hut, hutch, shack, shanty
bus, autobus, coach, charabanc, double-decker, jitney, motorbus, motorcoach, omnibus, passenger vehicle
towel
light, light source
truck, motortruck
tower
chandelier, pendant, pendent
awning, sunshade, sunblind
streetlight, street lamp
booth, cubicle, stall, kiosk
television, television receiver, television set, tv, tv set, idiot box, boob tube, telly, goggle box
airplane, aeroplane, plane
dirt track
apparel, wearing apparel, dress, clothes
pole
land, ground, soil
bannister, banister, balustrade, balusters, handrail
escalator, moving staircase, moving stairway
ottoman, pouf, pouffe, puff, hassock
bottle
buffet, counter, sideboard
poster, posting, placard, notice, bill, card
stage
van
ship
fountain
conveyer belt, conveyor belt, conveyer, conveyor, transporter
canopy
washer, automatic washer, washing machine
plaything, toy
swimming pool, swimming bath, natatorium
stool
barrel, cask
basket, handbasket
waterfall, falls
tent, collapsible shelter
bag
minibike, motorbike
cradle
oven
ball
food, solid food
step, stair
tank, storage tank
trade name, brand name, brand, marque
microwave, microwave oven
pot, flowerpot
animal, animate being, beast, brute, creature, fauna
bicycle, bike, wheel, cycle
lake
dishwasher, dish washer, dishwashing machine
screen, silver screen, projection screen
blanket, cover
sculpture
hood, exhaust hood
sconce
vase
traffic light, traffic signal, stoplight
tray
ashcan, trash can, garbage can, wastebin, ash bin, ash-bin, ashbin, dustbin, trash barrel, trash bin
fan
pier, wharf, wharfage, dock
crt screen
plate
monitor, monitoring device
bulletin board, notice board
shower
radiator
glass, drinking glass
clock
flag
""".strip().splitlines()
)

_SCENES = ("airport_terminal", "bathroom", "bedroom", "kitchen", "living_room",
           "street", "highway", "mountain_snowy", "office", "beach")
_APPEARANCE_SEED = 20160  # class looks are a property of the class, the same for every seed
_PREFIX = {"training": "ADE_train", "validation": "ADE_val"}


def class_look(idx: int) -> dict:
    """Fixed texture parameters of class ``idx`` (colour, grain, contrast, optional stripes)."""
    rng = np.random.default_rng([_APPEARANCE_SEED, idx])
    look = {
        "base_rgb": tuple(int(v) for v in rng.integers(30, 226, size=3)),
        "cell": float(rng.uniform(3, 24)),
        "amplitude": float(rng.uniform(20, 60)),
    }
    if rng.random() < 0.5:
        look.update(stripe_period=float(rng.uniform(6, 30)), stripe_angle_deg=float(rng.uniform(0, 180)))
    return look


def _region(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random rectangle, ellipse or convex blob as an int32 polygon."""
    cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
    rx, ry = rng.uniform(0.08, 0.3) * w, rng.uniform(0.08, 0.3) * h
    kind = rng.integers(3)
    if kind == 0:
        pts = [[cx - rx, cy - ry], [cx + rx, cy - ry], [cx + rx, cy + ry], [cx - rx, cy + ry]]
    elif kind == 1:
        a = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        pts = np.column_stack([cx + rx * np.cos(a), cy + ry * np.sin(a)])
    else:
        cloud = np.column_stack([cx + rx * rng.uniform(-1, 1, 8), cy + ry * rng.uniform(-1, 1, 8)])
        pts = cv2.convexHull(cloud.astype(np.float32))[:, 0]
    return np.rint(pts).astype(np.int32)


def make_mask(rng: np.random.Generator, h: int, w: int, classes: np.ndarray) -> np.ndarray:
    """Raw mask (0 = other, else class Idx): a background class and 2-5 regions on top."""
    mask = np.full((h, w), rng.choice(classes), np.uint8)
    for cls in rng.choice(classes, size=rng.integers(2, 6)):
        cv2.fillPoly(mask, [_region(rng, h, w)], int(cls))
    if rng.random() < 0.5:
        cv2.fillPoly(mask, [_region(rng, h // 3, w // 3)], 0)
    return mask


def render(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """Paint every raw value with its class texture (``other`` gets a random dull colour)."""
    h, w = mask.shape
    image = np.zeros((h, w, 3), np.uint8)
    for value in np.flatnonzero(np.bincount(mask.ravel())):
        look = class_look(int(value)) if value else {"base_rgb": tuple(rng.integers(60, 180, 3).tolist())}
        where = mask == value
        image[where] = texture(h, w, rng=rng, **look)[where]
    return image


def _write_object_info(path: Path, pixels: np.ndarray, images: dict[str, np.ndarray]) -> None:
    """objectInfo150.txt with the real names and statistics of the written masks."""
    lines = ["Idx\tRatio\tTrain\tVal\tName"]
    ratio = pixels / max(pixels.sum(), 1)
    for idx in range(1, NUM_CLASSES + 1):
        lines.append(
            f"{idx}\t{ratio[idx]:.4f}\t{images['training'][idx]}\t{images['validation'][idx]}\t{NAMES[idx - 1]}"
        )
    path.write_text("\n".join(lines) + "\n")


def write_sample(
    base: Path, split: str, index: int, size: tuple[int, int], classes: np.ndarray, seed: int
) -> tuple[np.ndarray, str]:
    """Write image and mask ``index`` (1-based) of ``split``; return its pixel counts and scene line."""
    rng = np.random.default_rng([seed, list(_PREFIX).index(split), index])
    h, w = (int(round(s * rng.uniform(0.75, 1.0))) for s in size)
    mask = make_mask(rng, h, w, classes)
    stem = f"{_PREFIX[split]}_{index:08d}"
    write_png(base / "annotations" / split / f"{stem}.png", mask)
    (base / "images" / split).mkdir(parents=True, exist_ok=True)
    Image.fromarray(render(rng, mask)).save(base / "images" / split / f"{stem}.jpg", quality=92)
    return np.bincount(mask.ravel(), minlength=NUM_CLASSES + 1), f"{stem} {_SCENES[rng.integers(len(_SCENES))]}"


def write(
    root: str | os.PathLike,
    *,
    n_train: int,
    n_val: int,
    size: tuple[int, int] = (192, 256),
    seed: int = 0,
    n_classes_used: int = 20,
) -> Path:
    """Write ``root/ADEChallengeData2016`` with ``n_train`` / ``n_val`` images; returns ``root``.

    ``n_classes_used`` class Idx values are drawn with ``seed`` from 1..150;
    each image's height and width are ``size`` scaled by a factor in
    [0.75, 1] (ADE20K sizes vary). Each image depends on ``seed``, its split
    and its index only.
    """
    if not 1 <= n_classes_used <= NUM_CLASSES:
        raise ConfigError(f"ADE20K synthetic: n_classes_used must be in 1..{NUM_CLASSES}, got {n_classes_used}")
    base = Path(root, DATA_DIR)
    classes = np.sort(np.random.default_rng(seed).choice(np.arange(1, NUM_CLASSES + 1), n_classes_used, replace=False))
    pixels = np.zeros(NUM_CLASSES + 1, np.int64)
    images = {split: np.zeros(NUM_CLASSES + 1, np.int64) for split in _PREFIX}
    scenes = []
    for split, count in (("training", n_train), ("validation", n_val)):
        for index in range(1, count + 1):
            counts, scene = write_sample(base, split, index, size, classes, seed)
            pixels += counts
            images[split] += counts > 0
            scenes.append(scene)
    _write_object_info(base / "objectInfo150.txt", pixels, images)
    (base / "sceneCategories.txt").write_text("\n".join(scenes) + "\n")
    return Path(root)
