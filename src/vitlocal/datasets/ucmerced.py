"""UC Merced Land Use in its official layout, and the class-folder listing shared with RESISC45.

Both scene-classification sets are one folder per class holding
``<class><sep><number>.<ext>`` files; ``SceneLayout`` describes such a tree
and ``list_scene_images`` lists it strictly (unknown folders, stray files and
missing classes are errors), so that a wrong root cannot shrink or relabel
the k-NN experiment silently. Labels are indices into the *official* class
tuple even when a subset of classes is listed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import ConfigError, CorruptFileError, DatasetNotFoundError, LabelError
from .base import DatasetInfo, require_dir

COLUMNS = ["sample_id", "image_path", "class_name", "label"]


@dataclass(frozen=True)
class SceneLayout:
    """A class-per-folder image tree: ``<root>/<folder...>/<class>/<class><sep><digits>.<ext>``."""

    info: DatasetInfo
    folder: tuple[str, ...]
    classes: tuple[str, ...]
    sep: str
    digits: int
    ext: str

    def file_name(self, class_name: str, number: int) -> str:
        """The official file name of image ``number`` of ``class_name``."""
        return f"{class_name}{self.sep}{number:0{self.digits}d}{self.ext}"

    def template(self, class_name: str) -> str:
        """The file name pattern for messages, e.g. ``airplane_NNN.jpg``."""
        return f"{class_name}{self.sep}{'N' * self.digits}{self.ext}"

    def file_pattern(self, class_name: str) -> re.Pattern:
        """Regex matching exactly the official file names of ``class_name`` (number in group 1)."""
        return re.compile(rf"{re.escape(class_name + self.sep)}(\d{{{self.digits}}}){re.escape(self.ext)}")


def _checked_subset(layout: SceneLayout, classes) -> tuple[str, ...]:
    if classes is None:
        return layout.classes
    unknown = [c for c in classes if c not in layout.classes]
    if unknown:
        raise ConfigError(f"{layout.info.name}: unknown classes {unknown}; expected some of {list(layout.classes)}")
    return tuple(sorted(set(classes), key=layout.classes.index))


def _class_files(layout: SceneLayout, class_dir: Path, class_name: str) -> list[tuple[int, str]]:
    """``(number, file name)`` of a class folder's images; any other visible file is an error."""
    pattern = layout.file_pattern(class_name)
    found = []
    for path in class_dir.iterdir():
        if path.name.startswith("."):
            continue
        match = pattern.fullmatch(path.name)
        if match is None or not path.is_file():
            raise CorruptFileError(
                f"{path}: not an image of the official {layout.info.name} layout "
                f"(expected {layout.template(class_name)})"
            )
        found.append((int(match[1]), path.name))
    return sorted(found)


def list_scene_images(layout: SceneLayout, root: str | os.PathLike, classes=None) -> pd.DataFrame:
    """All images of ``classes`` (default: all official classes), sorted by label then number.

    Every class folder under the layout's folder must be an official class,
    and every requested class must be present and non-empty.
    """
    wanted = _checked_subset(layout, classes)
    base = require_dir(layout.info, root, *layout.folder)
    prefix = "/".join(layout.folder)
    folders = {p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")}
    strangers = sorted(folders - set(layout.classes))
    if strangers:
        raise LabelError(
            f"{base}: folders {strangers} are not {layout.info.name} classes; "
            f"expected only the official class folders {list(layout.classes)}"
        )
    missing = [c for c in wanted if c not in folders]
    if missing:
        shown = ", ".join(f"{prefix}/{c}" for c in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        present = [c for c in wanted if c in folders]
        error = layout.info.missing(root, f"{len(missing)} of {len(wanted)} class folders ({shown})")
        if classes is None and present:
            raise DatasetNotFoundError(f"{error}\nTo read only the {len(present)} classes present, pass "
                                       f"classes={present!r} to list_images.")
        raise error
    rows = []
    for class_name in wanted:
        files = _class_files(layout, base / class_name, class_name)
        if not files:
            raise layout.info.missing(root, f"images in {prefix}/{class_name}")
        for _, name in files:
            rows.append(
                {
                    "sample_id": Path(name).stem,
                    "image_path": f"{prefix}/{class_name}/{name}",
                    "class_name": class_name,
                    "label": layout.classes.index(class_name),
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)


INFO = DatasetInfo(
    name="UC Merced Land Use",
    url="http://weegee.vision.ucmerced.edu/datasets/landuse.html",
    needs_account=False,
    layout="<root>/UCMerced_LandUse/Images/<class>/<class>NN.tif   (NN = 00..99, 21 classes)",
)

CLASSES: tuple[str, ...] = (
    "agricultural", "airplane", "baseballdiamond", "beach", "buildings", "chaparral",
    "denseresidential", "forest", "freeway", "golfcourse", "harbor", "intersection",
    "mediumresidential", "mobilehomepark", "overpass", "parkinglot", "river", "runway",
    "sparseresidential", "storagetanks", "tenniscourt",
)

LAYOUT = SceneLayout(INFO, ("UCMerced_LandUse", "Images"), CLASSES, sep="", digits=2, ext=".tif")


def list_images(root: str | os.PathLike, classes=None) -> pd.DataFrame:
    """UC Merced images (``root`` holds ``UCMerced_LandUse/``); nominally 256x256, a few are not."""
    return list_scene_images(LAYOUT, root, classes)
