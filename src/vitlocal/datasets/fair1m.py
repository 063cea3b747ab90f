"""FAIR1M in its official layout: listing, XML boxes, few-shot crop selection, rasterisation.

Geometry convention: pixel ``(row r, col c)`` covers the unit square
``[c, c+1) x [r, r+1)`` of the XML's pixel coordinates. A crop at ``(x0, y0)``
of side ``s`` is therefore the square ``[x0, x0+s] x [y0, y0+s]``; box areas
and crop overlaps are computed exactly on these continuous polygons, and
rasterisation labels a pixel by whether its centre ``(c+0.5, r+0.5)`` lies in
a box, so an axis-aligned box on integer corners fills exactly its area.

Bad input, by the rule "a missing part of the dataset is an error; a
documented, expected omission is counted": an image without its XML, or an
XML without its image, is an error naming the file (a broken unpack changes
the subset). A zero-area box (all corners on one line or point) covers no
pixel and no share of any crop: it is dropped, counted per crop in the
manifest column ``dropped_boxes``, and named in a ``DegenerateBoxWarning``
(the job's log); the retrieval rows record the total in their ``settings``.
"""

from __future__ import annotations

import os
import re
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from ..errors import ConfigError, CorruptFileError, DatasetNotFoundError, LabelError
from ..io import read_rgb
from .base import DatasetInfo, require_dir

INFO = DatasetInfo(
    name="FAIR1M",
    url="https://www.gaofen-challenge.com/benchmark",
    needs_account=True,
    licence="CC BY-NC-SA 3.0",
    layout=(
        "<root>/train/part1/images/<n>.tif   <root>/train/part1/labelXml/<n>.xml\n"
        "<root>/train/part2/images/<n>.tif   <root>/train/part2/labelXml(s)/<n>.xml\n"
        "<root>/validation/images/<n>.tif    <root>/validation/labelXml(s)/<n>.xml"
    ),
)

SUPERCLASSES: tuple[str, ...] = ("Ship", "Vehicle", "Airplane", "Court", "Road")
_MEMBERS: dict[str, tuple[str, ...]] = {
    "Ship": (
        "Passenger Ship", "Motorboat", "Fishing Boat", "Tugboat", "other-ship",
        "Engineering Ship", "Liquid Cargo Ship", "Dry Cargo Ship", "Warship",
    ),
    "Vehicle": (
        "Small Car", "Bus", "Cargo Truck", "Dump Truck", "other-vehicle", "Van",
        "Trailer", "Tractor", "Excavator", "Truck Tractor",
    ),
    "Airplane": (
        "Boeing737", "Boeing747", "Boeing777", "Boeing787", "ARJ21", "C919",
        "A220", "A321", "A330", "A350", "other-airplane",
    ),
    "Court": ("Baseball Field", "Basketball Court", "Football Field", "Tennis Court"),
    "Road": ("Roundabout", "Intersection", "Bridge"),
}

#: The 37 fine classes; index = label value in rasterised maps.
CLASSES: tuple[str, ...] = tuple(name for group in SUPERCLASSES for name in _MEMBERS[group])
CLASS_INDEX: dict[str, int] = {name: i for i, name in enumerate(CLASSES)}
#: Fine class name -> super-class name.
SUPERCLASS_OF: dict[str, str] = {name: group for group in SUPERCLASSES for name in _MEMBERS[group]}
#: Fine class index -> super-class index (into ``SUPERCLASSES``).
SUPERCLASS_INDEX: tuple[int, ...] = tuple(SUPERCLASSES.index(SUPERCLASS_OF[name]) for name in CLASSES)
BACKGROUND = len(CLASSES)  # 37: "no object" in rasterised label maps
IGNORE = 255

SPLITS = ("train", "validation")
XML_DIRNAMES = ("labelXml", "labelXmls")  # both spellings occur in the releases
_IMAGE_SUFFIXES = (".tif", ".tiff")
_TRAIN_PARTS = (("train", "part1"), ("train", "part2"), ("train",))
IMAGE_COLUMNS = ["sample_id", "image_path", "xml_path"]
MANIFEST_COLUMNS = ["sample_id", "image_path", "xml_path", "x0", "y0", "crop_size", "classes", "dropped_boxes",
                    "selected_for"]
#: A box of at most this area (px^2) is degenerate: no pixel centre can lie inside it.
DEGENERATE_AREA = 1e-6


class FewCropsWarning(UserWarning):
    """A class has fewer candidate crops left than asked for (the paper's bus had 7 of 8)."""


class DegenerateBoxWarning(UserWarning):
    """Zero-area boxes were dropped (counted in the manifest's ``dropped_boxes``)."""


@dataclass(frozen=True)
class FairObject:
    """One annotated rotated box: class name, class index and its 4 corners ``(x, y)`` as written."""

    name: str
    class_index: int
    points: np.ndarray  # float (4, 2), file order (not necessarily cyclic-consistent)


@dataclass(frozen=True)
class Annotation:
    """An XML file's content; ``width``/``height`` are None when ``<size>`` is absent."""

    filename: str | None
    width: int | None
    height: int | None
    objects: tuple[FairObject, ...]


# --------------------------------------------------------------------------- listing


def _natural_key(path: Path) -> tuple:
    """Numeric stems in numeric order (2.tif before 10.tif), others after, by name."""
    return (0, int(path.stem), "") if path.stem.isdigit() else (1, 0, path.stem)


def _part_dirs(root: Path, split: str) -> list[tuple[str, ...]]:
    """The directories of ``split`` that hold an ``images/`` folder."""
    if split not in SPLITS:
        raise ConfigError(f"FAIR1M split {split!r} unknown; expected one of {SPLITS}")
    require_dir(INFO, root, split)
    candidates = _TRAIN_PARTS if split == "train" else ((split,),)
    parts = [p for p in candidates if (root.joinpath(*p) / "images").is_dir()]
    if not parts:
        raise INFO.missing(root, " or ".join("/".join(p) + "/images" for p in candidates))
    return parts


def _xml_for(root: Path, part: tuple[str, ...], stem: str) -> str:
    """The XML of image ``stem`` (relative path), looked up under both folder spellings."""
    for dirname in XML_DIRNAMES:
        rel = "/".join((*part, dirname, f"{stem}.xml"))
        if (root / rel).is_file():
            return rel
    raise INFO.missing(root, "/".join((*part, "labelXml(s)", f"{stem}.xml")))


def list_images(root: str | os.PathLike, split: str) -> pd.DataFrame:
    """All images of ``split`` with their XML, sorted by part then number.

    ``train`` spans ``train/part1``, ``train/part2`` and a flat
    ``train/images`` if present. Every image must have its XML (in
    ``labelXml`` or ``labelXmls``): a missing one means a broken unpack.
    ``sample_id`` is the part path and stem joined by ``_`` (``train_part1_17``).
    """
    root = Path(root)
    rows = []
    for part in _part_dirs(root, split):
        images = root.joinpath(*part) / "images"
        files = [p for p in images.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file()]
        for image in sorted(files, key=_natural_key):
            rows.append(
                {
                    "sample_id": "_".join((*part, image.stem)),
                    "image_path": "/".join((*part, "images", image.name)),
                    "xml_path": _xml_for(root, part, image.stem),
                }
            )
        _refuse_orphan_xmls(root, part, {Path(f).stem for f in files})
    return pd.DataFrame(rows, columns=IMAGE_COLUMNS)


def _refuse_orphan_xmls(root: Path, part: tuple[str, ...], image_stems: set[str]) -> None:
    """An XML without its image: a broken unpack that would silently shrink the subset."""
    for dirname in XML_DIRNAMES:
        folder = root.joinpath(*part, dirname)
        orphans = sorted(x for x in folder.glob("*.xml") if x.stem not in image_stems) if folder.is_dir() else []
        if orphans:
            shown = ", ".join(str(x) for x in orphans[:3]) + (", ..." if len(orphans) > 3 else "")
            raise DatasetNotFoundError(
                f"FAIR1M: {len(orphans)} label file(s) without their image in {root.joinpath(*part, 'images')} "
                f"({shown}); expected <stem>.tif beside each XML: is the unpack complete?")


# --------------------------------------------------------------------------- XML


def _parse_points(points_el: ET.Element | None, where: str) -> np.ndarray:
    """4 corners from 5 ``x,y`` points (closing repeat dropped) or from 4."""
    texts = [] if points_el is None else [(p.text or "").strip() for p in points_el.findall("point")]
    try:
        pts = np.array([[float(v) for v in t.split(",")] for t in texts], dtype=np.float64)
    except ValueError as exc:
        raise CorruptFileError(f"{where}: point values {texts} are not 'x,y' floats") from exc
    if pts.ndim != 2 or pts.shape[1:] != (2,):
        raise CorruptFileError(f"{where}: points {texts} are not 'x,y' pairs")
    if len(pts) == 5 and np.allclose(pts[0], pts[4]):
        pts = pts[:4]
    if len(pts) != 4:
        raise CorruptFileError(
            f"{where}: {len(texts)} points {texts}; expected 4 corners, optionally followed by the first repeated"
        )
    if not np.isfinite(pts).all():
        raise CorruptFileError(f"{where}: points {texts} are not finite")
    return pts


def _parse_object(obj: ET.Element, where: str, xml_path: Path) -> FairObject:
    name_el = obj.find("possibleresult/name")
    if name_el is None or not (name_el.text or "").strip():
        raise CorruptFileError(f"{where}: no <possibleresult><name>")
    name = " ".join(name_el.text.split())
    if name not in CLASS_INDEX:
        raise LabelError(f"{xml_path}: unknown FAIR1M class {name!r}; expected one of {list(CLASSES)}")
    return FairObject(name, CLASS_INDEX[name], _parse_points(obj.find("points"), where))


def _parse_size(doc: ET.Element, xml_path: Path) -> tuple[int | None, int | None]:
    size = doc.find("size")
    if size is None:
        return None, None
    try:
        return int(size.findtext("width", "")), int(size.findtext("height", ""))
    except ValueError as exc:
        raise CorruptFileError(f"{xml_path}: <size> width/height are not integers") from exc


def read_annotation(xml_path: str | os.PathLike) -> Annotation:
    """Parse one FAIR1M XML (file name, optional size, objects in file order)."""
    xml_path = Path(xml_path)
    if not xml_path.is_file():
        raise DatasetNotFoundError(f"missing file: {xml_path}")
    try:
        doc = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        raise CorruptFileError(f"cannot parse FAIR1M XML {xml_path}: {exc}") from exc
    if doc.tag != "annotation":
        raise CorruptFileError(f"{xml_path}: root element is <{doc.tag}>, expected <annotation>")
    objects = tuple(
        _parse_object(obj, f"{xml_path}: object {i}", xml_path)
        for i, obj in enumerate(doc.findall("objects/object"))
    )
    width, height = _parse_size(doc, xml_path)
    return Annotation(doc.findtext("source/filename"), width, height, objects)


def read_objects(xml_path: str | os.PathLike) -> list[FairObject]:
    """The rotated boxes of one XML, in file order."""
    return list(read_annotation(xml_path).objects)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` from the image header, without decoding the pixels."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"missing file: {path}")
    try:
        with Image.open(path) as img:
            return img.size
    except (UnidentifiedImageError, OSError) as exc:
        raise CorruptFileError(f"cannot read image header of {path}: {exc}") from exc


def annotated_size(root: str | os.PathLike, row, annotation: Annotation) -> tuple[int, int]:
    """``(width, height)`` from ``<size>``, or from the image when the XML has none."""
    if annotation.width is not None and annotation.height is not None:
        return annotation.width, annotation.height
    return image_size(Path(root, row["image_path"]))


# --------------------------------------------------------------------------- geometry


def convex_corners(points: np.ndarray) -> np.ndarray:
    """The 4 corners in counter-clockwise order (math orientation), whatever order the file used."""
    points = np.asarray(points, dtype=np.float64)
    centre = points.mean(axis=0)
    angles = np.arctan2(points[:, 1] - centre[1], points[:, 0] - centre[0])
    return points[np.argsort(angles, kind="stable")]


def polygon_area(polygon: np.ndarray) -> float:
    """Shoelace area of a simple polygon (any orientation)."""
    if len(polygon) < 3:
        return 0.0
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _clip_half_plane(polygon: list, axis: int, bound: float, keep_above: bool) -> list:
    """One Sutherland-Hodgman step: keep the part with ``p[axis] >= bound`` (or ``<=``)."""

    def inside(p) -> bool:
        return p[axis] >= bound if keep_above else p[axis] <= bound

    out = []
    for i, cur in enumerate(polygon):
        prev = polygon[i - 1]
        if inside(cur) != inside(prev):
            t = (bound - prev[axis]) / (cur[axis] - prev[axis])
            out.append((prev[0] + t * (cur[0] - prev[0]), prev[1] + t * (cur[1] - prev[1])))
        if inside(cur):
            out.append(cur)
    return out


def clip_to_square(polygon: np.ndarray, x0: float, y0: float, size: float) -> np.ndarray:
    """The part of a convex polygon inside the square ``[x0, x0+size] x [y0, y0+size]``."""
    poly = [tuple(p) for p in np.asarray(polygon, dtype=np.float64)]
    for axis, bound, keep_above in ((0, x0, True), (0, x0 + size, False), (1, y0, True), (1, y0 + size, False)):
        poly = _clip_half_plane(poly, axis, bound, keep_above)
        if not poly:
            break
    return np.array(poly, dtype=np.float64).reshape(-1, 2)


def is_degenerate(points: np.ndarray) -> bool:
    """A box of (near) zero area: corners on one line or one point."""
    return polygon_area(convex_corners(points)) <= DEGENERATE_AREA


def inside_fraction(points: np.ndarray, x0: float, y0: float, size: float) -> float:
    """Share of a rotated box's area inside the crop square (0 for a degenerate box)."""
    corners = convex_corners(points)
    area = polygon_area(corners)
    if area <= DEGENERATE_AREA:
        return 0.0
    return polygon_area(clip_to_square(corners, x0, y0, size)) / area


# --------------------------------------------------------------------------- crops


def crop_grid(width: int, height: int, crop_size: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners ``(x0, y0)`` of the crops fully inside the image, row by row."""
    return [
        (x0, y0)
        for y0 in range(0, height - crop_size + 1, stride)
        for x0 in range(0, width - crop_size + 1, stride)
    ]


def classes_in_crops(
    objects: list[FairObject], grid: list[tuple[int, int]], crop_size: int, min_fraction: float
) -> dict[tuple[int, int], set[int]]:
    """For each crop corner, the fine classes with a box having ``>= min_fraction`` of its area inside."""
    present: dict[tuple[int, int], set[int]] = {corner: set() for corner in grid}
    corners = np.asarray(grid, dtype=np.float64).reshape(-1, 2)
    for obj in objects:
        lo, hi = obj.points.min(axis=0), obj.points.max(axis=0)
        overlaps = np.all((hi > corners) & (lo < corners + crop_size), axis=1)
        for g in np.flatnonzero(overlaps):
            x0, y0 = grid[g]
            # Tolerance: a box exactly on the 1/3 boundary counts as present.
            if obj.class_index not in present[(x0, y0)] and (
                inside_fraction(obj.points, x0, y0, crop_size) >= min_fraction - 1e-9
            ):
                present[(x0, y0)].add(obj.class_index)
    return present


def _touching(objects: list[FairObject], x0: float, y0: float, size: float) -> int:
    """How many of ``objects`` reach the closed crop square (their bounding box meets it)."""
    return sum(bool(np.all((o.points.max(axis=0) >= (x0, y0)) & (o.points.min(axis=0) <= (x0 + size, y0 + size))))
               for o in objects)


def candidate_crops(
    root: str | os.PathLike,
    split: str = "train",
    crop_size: int = 224,
    min_fraction: float = 1 / 3,
    stride: int | None = None,
) -> pd.DataFrame:
    """Every grid crop of ``split`` that contains at least one class, in image then grid order.

    Columns: sample_id, image_path, xml_path, x0, y0, crop_size, classes
    (a sorted tuple of fine-class indices present per the ``min_fraction`` rule),
    dropped_boxes (zero-area boxes reaching the crop, left out of its labels).
    ``attrs["too_small"]`` lists the images smaller than the crop (they give
    no crop), ``attrs["n_images"]`` counts the images read: the cause when
    classes come up short; ``attrs["degenerate"]`` maps each XML with
    zero-area boxes to their number.
    """
    stride = crop_size if stride is None else stride
    if crop_size <= 0 or stride <= 0:
        raise ConfigError(f"FAIR1M crops: crop_size={crop_size} and stride={stride} must be positive")
    rows, too_small, degenerate = [], [], {}
    images = list_images(root, split).to_dict("records")
    for image in images:
        annotation = read_annotation(Path(root, image["xml_path"]))
        dropped = [o for o in annotation.objects if is_degenerate(o.points)]
        if dropped:
            degenerate[image["xml_path"]] = len(dropped)
        width, height = annotated_size(root, image, annotation)
        if width < crop_size or height < crop_size:
            too_small.append(f"{image['sample_id']} ({width}x{height})")
        grid = crop_grid(width, height, crop_size, stride)
        for (x0, y0), classes in classes_in_crops(list(annotation.objects), grid, crop_size, min_fraction).items():
            if classes:
                rows.append(
                    {
                        **image,
                        "sample_id": f"{image['sample_id']}_x{x0}_y{y0}",
                        "x0": x0,
                        "y0": y0,
                        "crop_size": crop_size,
                        "classes": tuple(sorted(classes)),
                        "dropped_boxes": _touching(dropped, x0, y0, crop_size),
                    }
                )
    pool = pd.DataFrame(rows, columns=MANIFEST_COLUMNS[:-1])
    pool.attrs.update(too_small=too_small, n_images=len(images), crop_size=crop_size, degenerate=degenerate)
    return pool


def _too_small_note(pool: pd.DataFrame) -> str:
    """Why crops are missing when images are smaller than the crop, else ''."""
    small = pool.attrs.get("too_small", [])
    if not small:
        return ""
    shown = ", ".join(small[:3]) + (", ..." if len(small) > 3 else "")
    return (f"; {len(small)} of {pool.attrs['n_images']} images are smaller than the "
            f"{pool.attrs['crop_size']}-px crop and give no crop ({shown}): lower subsets.fair1m.crop_size")


def greedy_select(pool: pd.DataFrame, per_class: int, seed: int) -> pd.DataFrame:
    """For each fine class in ``CLASSES`` order, draw ``per_class`` not-yet-taken crops containing it.

    A class with fewer candidates left takes them all and a ``FewCropsWarning``
    names it. Output rows are grouped by ``selected_for``, in pool order within a class.
    """
    rng = np.random.default_rng(seed)
    taken = np.zeros(len(pool), dtype=bool)
    has = np.array([[c in classes for c in range(len(CLASSES))] for classes in pool["classes"]], dtype=bool)
    has = has.reshape(len(pool), len(CLASSES))
    picks, selected_for, short = [], [], []
    for c, name in enumerate(CLASSES):
        candidates = np.flatnonzero(has[:, c] & ~taken)
        n = min(per_class, len(candidates))
        if n < per_class:
            short.append(f"{name} ({n} of {per_class})")
        chosen = np.sort(rng.choice(candidates, size=n, replace=False)) if n else candidates[:0]
        taken[chosen] = True
        picks.extend(chosen.tolist())
        selected_for.extend([c] * n)
    if short:
        warnings.warn(
            "FAIR1M crop selection: too few crops left for " + ", ".join(short) + _too_small_note(pool),
            FewCropsWarning, stacklevel=3,
        )
    manifest = pool.iloc[picks].reset_index(drop=True)
    manifest["selected_for"] = selected_for
    return manifest


def select_crops(
    root: str | os.PathLike,
    split: str = "train",
    per_class: int = 8,
    crop_size: int = 224,
    min_fraction: float = 1 / 3,
    stride: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """The paper's few-shot crop subset as a manifest.

    Crops lie on a grid of step ``stride`` (default ``crop_size``:
    non-overlapping) fully inside each image; a class is present in a crop if
    one of its boxes has ``>= min_fraction`` of its area inside. Columns:
    sample_id, image_path, xml_path, x0, y0, crop_size, classes (``;``-joined
    fine-class indices present), selected_for (the class it was drawn for).
    """
    pool = candidate_crops(root, split, crop_size, min_fraction, stride)
    if pool.empty:
        raise ConfigError(
            f"FAIR1M {split} under {root}: no {crop_size}-px crop holds >= {min_fraction:.3g} of any box, "
            f"so the subset would be empty" + (_too_small_note(pool) or f" ({pool.attrs['n_images']} images read)")
        )
    manifest = greedy_select(pool, per_class, seed)
    manifest["classes"] = [";".join(map(str, classes)) for classes in manifest["classes"]]
    degenerate = pool.attrs["degenerate"]
    if degenerate:
        files = sorted(degenerate, key=lambda f: (-degenerate[f], f))
        shown = ", ".join(f"{f} ({degenerate[f]})" for f in files[:5]) + (", ..." if len(files) > 5 else "")
        warnings.warn(
            f"FAIR1M {split} under {root}: dropped {sum(degenerate.values())} zero-area box(es) in {len(files)} "
            f"label file(s): {shown}; {int(manifest['dropped_boxes'].sum())} of them reach the selected crops "
            f"(manifest column dropped_boxes)", DegenerateBoxWarning, stacklevel=2)
    return manifest[MANIFEST_COLUMNS]


# --------------------------------------------------------------------------- label maps


def _fill_convex(labels: np.ndarray, corners: np.ndarray, value: int) -> None:
    """Set ``value`` at pixels whose centre lies in the convex CCW polygon ``corners`` (crop coords)."""
    h, w = labels.shape
    c0, r0 = np.maximum(np.floor(corners.min(axis=0)).astype(int), 0)
    c1, r1 = np.minimum(np.ceil(corners.max(axis=0)).astype(int), (w, h))
    if c0 >= c1 or r0 >= r1:
        return
    ys, xs = np.mgrid[r0:r1, c0:c1].astype(np.float64) + 0.5
    inside = np.ones(xs.shape, dtype=bool)
    for a, b in zip(corners, np.roll(corners, -1, axis=0)):
        inside &= (b[0] - a[0]) * (ys - a[1]) - (b[1] - a[1]) * (xs - a[0]) >= -1e-9
    labels[r0:r1, c0:c1][inside] = value


def rasterize(objects, x0: float, y0: float, size: int) -> np.ndarray:
    """``uint8 (size, size)`` map of the crop at ``(x0, y0)``: class index in boxes, ``BACKGROUND`` elsewhere.

    A pixel belongs to a box if its centre is inside (exact half-plane tests).
    Larger boxes are drawn first so that small objects on top stay visible.
    """
    labels = np.full((size, size), BACKGROUND, dtype=np.uint8)
    shapes = [(convex_corners(obj.points) - (x0, y0), obj.class_index) for obj in objects]
    shapes = [(c, k, polygon_area(c)) for c, k in shapes]
    for corners, class_index, area in sorted(shapes, key=lambda s: -s[2]):
        if area > DEGENERATE_AREA:  # zero-area boxes: counted in the manifest (``dropped_boxes``)
            _fill_convex(labels, corners, class_index)
    return labels


def read_crop(root: str | os.PathLike, row, read=read_rgb) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The whole source image of a manifest row and its crop window ``(x0, y0, size)``, bounds-checked.

    Geometric transforms need the surroundings of the crop, hence the whole image.
    ``read``: how the image is decoded (a cache of decoded images: ``features.sources``).
    """
    image_path = Path(root, row["image_path"])
    image = read(str(image_path))
    x0, y0, size = int(row["x0"]), int(row["y0"]), int(row["crop_size"])
    h, w = image.shape[:2]
    if x0 < 0 or y0 < 0 or x0 + size > w or y0 + size > h:
        raise CorruptFileError(
            f"{image_path} is {w}x{h} (width x height) but the crop x0={x0}, y0={y0}, size={size} "
            f"needs {x0 + size}x{y0 + size}; does {row['xml_path']}'s <size> match the image?"
        )
    return image, (x0, y0, size)


def read_sample(root: str | os.PathLike, row) -> tuple[np.ndarray, np.ndarray]:
    """``(crop uint8 (s, s, 3), label map uint8 (s, s))`` of one manifest row.

    Single-channel (GF3) images come back as 3 equal RGB channels.
    """
    image, (x0, y0, size) = read_crop(root, row)
    labels = rasterize(read_objects(Path(root, row["xml_path"])), x0, y0, size)
    return image[y0 : y0 + size, x0 : x0 + size].copy(), labels


def parse_classes(value: str) -> list[int]:
    """Fine-class indices of a manifest ``classes`` cell (``"3;17"`` -> ``[3, 17]``)."""
    if not re.fullmatch(r"\d+(;\d+)*", str(value)):
        raise ConfigError(f"FAIR1M manifest classes cell {value!r}; expected ';'-joined class indices")
    return [int(v) for v in str(value).split(";")]
