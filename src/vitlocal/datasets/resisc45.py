"""NWPU-RESISC45 in its official layout (class folders listed by ``ucmerced.list_scene_images``)."""

from __future__ import annotations

import os

import pandas as pd

from .base import DatasetInfo
from .ucmerced import SceneLayout, list_scene_images

INFO = DatasetInfo(
    name="NWPU-RESISC45",
    url="https://gcheng-nwpu.github.io/",
    needs_account=False,
    licence="CC BY-NC 4.0",
    layout="<root>/NWPU-RESISC45/<class>/<class>_NNN.jpg   (NNN = 001..700, 45 classes)",
)

CLASSES: tuple[str, ...] = (
    "airplane", "airport", "baseball_diamond", "basketball_court", "beach", "bridge",
    "chaparral", "church", "circular_farmland", "cloud", "commercial_area",
    "dense_residential", "desert", "forest", "freeway", "golf_course",
    "ground_track_field", "harbor", "industrial_area", "intersection", "island", "lake",
    "meadow", "medium_residential", "mobile_home_park", "mountain", "overpass", "palace",
    "parking_lot", "railway", "railway_station", "rectangular_farmland", "river",
    "roundabout", "runway", "sea_ice", "ship", "snowberg", "sparse_residential",
    "stadium", "storage_tank", "tennis_court", "terrace", "thermal_power_station", "wetland",
)

LAYOUT = SceneLayout(INFO, ("NWPU-RESISC45",), CLASSES, sep="_", digits=3, ext=".jpg")


def list_images(root: str | os.PathLike, classes=None) -> pd.DataFrame:
    """RESISC45 images (``root`` holds ``NWPU-RESISC45/``), 256x256 JPEG."""
    return list_scene_images(LAYOUT, root, classes)
