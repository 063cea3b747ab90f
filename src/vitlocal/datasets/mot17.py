"""MOT17 in its official layout: sequences, ``seqinfo.ini``, ground-truth tracks, subsets.

``root`` is the ``MOT17/`` folder of the download. Every sequence comes in
three detector copies (DPM, FRCNN, SDP) that share images and ground truth;
one copy is read (FRCNN if present) so no frame is counted three times.
Boxes are taken as written (``x1 = bb_left``, ``x2 = bb_left + bb_width``),
as TrackEval does; only pedestrians (class 1) with ``consider = 1`` are
evaluated, every other box gets ``ignore=True``.
"""

from __future__ import annotations

import configparser
import os
import re
from pathlib import Path

import pandas as pd
from PIL import Image

from ..errors import ConfigError, CorruptFileError, DatasetNotFoundError, LabelError
from .base import DatasetInfo, require_dir
from .tracking import check_images, check_inside, frames_manifest, track_table

INFO = DatasetInfo(
    name="MOT17",
    url="https://motchallenge.net/data/MOT17/",
    needs_account=False,
    licence="CC BY-NC-SA 3.0",
    layout=(
        "<root> = MOT17/\n"
        "<root>/{train,test}/MOT17-NN-{DPM,FRCNN,SDP}/img1/000001.jpg  (6 digits, 1-based)\n"
        "<root>/{train,test}/MOT17-NN-{DPM,FRCNN,SDP}/{gt/gt.txt, det/det.txt, seqinfo.ini}"
    ),
)

#: MOTChallenge ground-truth classes (TrackEval's names).
CLASSES: dict[int, str] = {
    1: "pedestrian", 2: "person_on_vehicle", 3: "car", 4: "bicycle", 5: "motorbike",
    6: "non_mot_vehicle", 7: "static_person", 8: "distractor", 9: "occluder",
    10: "occluder_on_ground", 11: "occluder_full", 12: "reflection",
}
EVALUATED_CLASS = 1
DETECTORS: tuple[str, ...] = ("DPM", "FRCNN", "SDP")
PREFERRED_DETECTOR = "FRCNN"
#: The official train sequences and their frame rates (all others run at 30 fps).
TRAIN_FRAME_RATES: dict[str, int] = {
    "MOT17-02": 30, "MOT17-04": 30, "MOT17-05": 14, "MOT17-09": 30,
    "MOT17-10": 30, "MOT17-11": 30, "MOT17-13": 25,
}
#: Rows of each official train ``gt/gt.txt`` (112,297 in all) and ``seqLength``: a file cut at a line
#: boundary still parses, so real data are checked against these (synthetic data, which reuse the
#: sequence names, are not: ``read_tracks(..., synthetic=True)``). The lengths agree with the common
#: half splits; the row counts could not be checked against a public copy (docs/datasets.md).
TRAIN_GT_ROWS: dict[str, int] = {
    "MOT17-02": 18581, "MOT17-04": 47557, "MOT17-05": 6917, "MOT17-09": 5325,
    "MOT17-10": 12839, "MOT17-11": 9436, "MOT17-13": 11642,
}
TRAIN_LENGTHS: dict[str, int] = {
    "MOT17-02": 600, "MOT17-04": 1050, "MOT17-05": 837, "MOT17-09": 525,
    "MOT17-10": 654, "MOT17-11": 900, "MOT17-13": 750,
}
SEQINFO_KEYS: dict[str, type] = {
    "name": str, "imDir": str, "frameRate": int, "seqLength": int,
    "imWidth": int, "imHeight": int, "imExt": str,
}
_SEQUENCE_DIR = re.compile(r"(?P<sequence>MOT\d{2}-\d{2})(?:-(?P<detector>[A-Za-z0-9]+))?")
GT_COLUMNS = 9


def _copies(root: str | os.PathLike, split: str) -> dict[str, list[Path]]:
    """Sequence name -> its detector-copy folders, preferred copy first."""
    split_dir = require_dir(INFO, root, split)
    copies: dict[str, list[Path]] = {}
    for path in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        match = _SEQUENCE_DIR.fullmatch(path.name)
        if match:
            copies.setdefault(match["sequence"], []).append(path)
    for paths in copies.values():
        paths.sort(key=lambda p: not p.name.endswith(f"-{PREFERRED_DETECTOR}"))
    return copies


def list_sequences(root: str | os.PathLike, split: str = "train") -> list[str]:
    """Sorted sequence names (``MOT17-02``, ...), each once whatever its detector copies."""
    copies = _copies(root, split)
    if not copies:
        raise INFO.missing(root, f"{split}/MOT17-NN-<detector> sequence folders")
    return sorted(copies)


def sequence_dir(root: str | os.PathLike, split: str, sequence: str) -> Path:
    """The one detector copy of ``sequence`` that is read (FRCNN, else the first in sorted order)."""
    copies = _copies(root, split)
    if sequence not in copies:
        raise INFO.missing(root, f"{split}/{sequence}-<detector> (present: {sorted(copies)})")
    return copies[sequence][0]


def read_seqinfo(path: str | os.PathLike) -> dict[str, str | int]:
    """Parse ``seqinfo.ini`` (``[Sequence]`` section) into typed values; keys are case-insensitive."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"missing file: {path} (every MOT17 sequence folder holds seqinfo.ini)")
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(path.read_text(), source=str(path))
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise CorruptFileError(f"{path}: not a valid INI file ({exc})") from exc
    if not parser.has_section("Sequence"):
        raise CorruptFileError(f"{path}: no [Sequence] section")
    section = parser["Sequence"]
    info: dict[str, str | int] = {}
    for key, kind in SEQINFO_KEYS.items():
        if key not in section:  # configparser compares keys case-insensitively
            raise CorruptFileError(f"{path}: [Sequence] lacks key {key!r} (needs {list(SEQINFO_KEYS)})")
        try:
            info[key] = kind(section[key].strip())
        except ValueError as exc:
            raise CorruptFileError(f"{path}: {key}={section[key]!r} is not an integer") from exc
    return info


def _frame_image(split: str, seq_dir: Path, info: dict, frame: int) -> str:
    return f"{split}/{seq_dir.name}/{info['imDir']}/{frame:06d}{info['imExt']}"


def _checked_seqinfo(root: Path, split: str, seq_dir: Path) -> dict[str, str | int]:
    """``seqinfo.ini`` of a copy, checked against its image folder (count and first image size)."""
    ini = seq_dir / "seqinfo.ini"
    info = read_seqinfo(ini)
    image_dir = seq_dir / str(info["imDir"])
    if not image_dir.is_dir():
        raise INFO.missing(root, f"{split}/{seq_dir.name}/{info['imDir']} (imDir of {ini})")
    n_images = sum(1 for p in image_dir.iterdir() if p.suffix == info["imExt"])
    if n_images != info["seqLength"]:
        raise CorruptFileError(
            f"{ini}: seqLength={info['seqLength']} but {image_dir} holds {n_images} {info['imExt']} images"
        )
    first = _frame_image(split, seq_dir, info, 1)
    check_images(root, [first], ini)
    try:
        with Image.open(root / first) as img:  # reads the header only
            size = img.size
    except OSError as exc:
        raise CorruptFileError(f"cannot decode image {root / first}: {exc}") from exc
    if size != (info["imWidth"], info["imHeight"]):
        raise CorruptFileError(
            f"{ini}: imWidth x imHeight = {info['imWidth']}x{info['imHeight']} "
            f"but {root / first} is {size[0]}x{size[1]}"
        )
    return info


def _parse_gt_line(line: str, path: Path, lineno: int) -> tuple[int, int, float, float, float, float, int, int]:
    fields = line.split(",")
    if len(fields) != GT_COLUMNS:
        raise CorruptFileError(
            f"{path}:{lineno}: {len(fields)} columns, expected {GT_COLUMNS} "
            f"(frame,id,bb_left,bb_top,bb_width,bb_height,consider,class,visibility): {line!r}"
        )
    try:
        frame, track, consider, cls = (int(float(fields[i])) for i in (0, 1, 6, 7))
        left, top, width, height = (float(fields[i]) for i in (2, 3, 4, 5))
    except ValueError as exc:
        raise CorruptFileError(f"{path}:{lineno}: non-numeric field in {line!r}") from exc
    if cls not in CLASSES:
        raise LabelError(f"{path}:{lineno}: class {cls} is not a MOTChallenge class {sorted(CLASSES)}")
    return frame, track, left, top, width, height, consider, cls


def _check_official(path: Path, ini: Path, sequence: str, info: dict, n_rows: int) -> None:
    """Frame rate, length and gt row count of an official train sequence, as released."""
    if sequence not in TRAIN_GT_ROWS:
        raise CorruptFileError(f"{path}: {sequence} is not an official MOT17 train sequence {sorted(TRAIN_GT_ROWS)}")
    for what, got, official in (("frameRate", info["frameRate"], TRAIN_FRAME_RATES[sequence]),
                                ("seqLength", info["seqLength"], TRAIN_LENGTHS[sequence])):
        if got != official:
            raise CorruptFileError(f"{ini}: {what}={got}, the official {sequence} has {official}")
    if n_rows != TRAIN_GT_ROWS[sequence]:
        raise CorruptFileError(
            f"{path}: {n_rows} rows, the official {sequence} gt.txt has {TRAIN_GT_ROWS[sequence]} "
            "(a cut or altered file; synthetic data set datasets.mot17.source: synthetic)"
        )


def read_tracks(root: str | os.PathLike, split: str, sequence: str, *, synthetic: bool = False) -> pd.DataFrame:
    """The track table of ``sequence`` from its ``gt/gt.txt`` (see ``tracking.TRACK_COLUMNS``).

    Real train sequences (``synthetic=False``) must match the release's frame
    rate, length and row count; every box must overlap the ``imWidth x
    imHeight`` frame of ``seqinfo.ini``.
    """
    root = Path(root)
    seq_dir = sequence_dir(root, split, sequence)
    info = _checked_seqinfo(root, split, seq_dir)
    path = seq_dir / "gt" / "gt.txt"
    if not path.is_file():
        raise INFO.missing(root, f"{split}/{seq_dir.name}/gt/gt.txt")
    lines = [(n, line) for n, line in enumerate(path.read_text().splitlines(), start=1) if line.strip()]
    if not lines:
        raise CorruptFileError(f"{path}: no ground-truth rows (every MOT17 train sequence is annotated)")
    if not synthetic and split == "train":
        _check_official(path, seq_dir / "seqinfo.ini", sequence, info, len(lines))
    rows = []
    for lineno, line in lines:
        frame, track, left, top, width, height, consider, cls = _parse_gt_line(line.strip(), path, lineno)
        rows.append({
            "frame": frame, "image_path": _frame_image(split, seq_dir, info, frame),
            "track_id": str(track), "category": CLASSES[cls],
            "x1": left, "y1": top, "x2": left + width, "y2": top + height,
            "ignore": not (cls == EVALUATED_CLASS and consider == 1),
        })
    tracks = track_table(rows, path)
    check_images(root, tracks["image_path"], path)
    size = (int(info["imHeight"]), int(info["imWidth"]))
    check_inside(tracks, {int(f): size for f in tracks["frame"].unique()}, path)
    return tracks


def select_subset(root: str | os.PathLike, split: str = "train", sequences: list[str] | None = None) -> pd.DataFrame:
    """Manifest of every frame of ``sequences`` (None = all, sorted), one detector copy each."""
    root = Path(root)
    available = list_sequences(root, split)
    chosen = available if sequences is None else list(sequences)
    unknown = [s for s in chosen if s not in available]
    if unknown:
        raise ConfigError(f"mot17 sequences {unknown} are not under {root / split}; present: {available}")
    rows = []
    for sequence in chosen:
        seq_dir = sequence_dir(root, split, sequence)
        info = _checked_seqinfo(root, split, seq_dir)
        rows += [
            {"sample_id": f"{sequence}_{n:06d}", "video": sequence, "frame": n,
             "image_path": _frame_image(split, seq_dir, info, n)}
            for n in range(1, int(info["seqLength"]) + 1)
        ]
    manifest = frames_manifest(rows)
    check_images(root, manifest["image_path"], root / split)
    return manifest
