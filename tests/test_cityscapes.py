"""Cityscapes reader, subsets and synthetic writer against independent references.

References: cityscapesscripts' own label table and polygon rasteriser, cv2
decoding, and the authors' list files parsed with plain string operations.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from cityscapesscripts.helpers.annotation import Annotation
from cityscapesscripts.helpers.labels import id2label
from cityscapesscripts.preparation.json2labelImg import createLabelImage

from vitlocal.datasets import cityscapes as cs
from vitlocal.errors import ConfigError, CorruptFileError, DatasetNotFoundError, LabelError
from vitlocal.io import write_png
from vitlocal.synthetic import cityscapes as synth

SUBSETS = Path(__file__).resolve().parents[1] / "config" / "subsets" / "cityscapes"
TINY = (32, 64)


def _list_paths(name: str) -> list[str]:
    """The image paths of an authors' list, parsed independently of the module."""
    return [line.split(";")[1].lstrip("/") for line in (SUBSETS / name).read_text().splitlines() if line]


def _frames_of(paths: list[str]) -> dict:
    """``{split: {city: [(seq, frame)]}}`` naming exactly the given leftImg8bit paths."""
    frames: dict = {}
    for path in dict.fromkeys(paths):
        _, split, city, name = path.split("/")
        seq, frame = name.split("_")[1:3]
        frames.setdefault(split, {}).setdefault(city, []).append((int(seq), int(frame)))
    return frames


def _cv2_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cs_small")
    return synth.write(root, train_cities=["aachen", "zurich"], val_cities=["lindau"],
                       images_per_city={"train": 2, "val": 1}, size=(128, 256), seed=7)


@pytest.fixture(scope="module")
def set2_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cs_set2")
    return synth.write(root, frames=_frames_of(_list_paths("training_set2.csv")), size=TINY, seed=0)


# ----------------------------------------------------------------- label table


def test_classes_and_lut_follow_the_official_table():
    assert cs.CLASSES[0] == "road" and cs.CLASSES[10] == "sky" and cs.CLASSES[18] == "bicycle"
    assert len(cs.CLASSES) == 19 and len(cs.TRAIN_CITIES) == 18 and len(cs.VAL_CITIES) == 3
    for label_id in range(34):
        train_id = id2label[label_id].trainId
        assert cs.LABEL_TO_TRAIN[label_id] == (train_id if 0 <= train_id < 255 else 255)
    # hand-checked entries: road 7 -> 0, car 26 -> 13, caravan 29 -> ignore, bicycle 33 -> 18
    assert cs.LABEL_TO_TRAIN[[7, 26, 29, 33, 0]].tolist() == [0, 13, 255, 18, 255]


# ----------------------------------------------------------------- generator + reader round trip


def test_layout_and_listing(small):
    df = cs.list_images(small, "train")
    assert df["sample_id"].tolist() == [
        "aachen_000000_000000", "aachen_000001_000000", "zurich_000000_000000", "zurich_000001_000000"]
    assert df["city"].tolist() == ["aachen", "aachen", "zurich", "zurich"]
    assert df["label_path"].iloc[0] == "gtFine/train/aachen/aachen_000000_000000_gtFine_labelIds.png"
    assert cs.list_images(small, "train", cities=["zurich"])["city"].unique().tolist() == ["zurich"]
    gt = small / "gtFine" / "val" / "lindau"
    assert sorted(p.name for p in gt.iterdir()) == [
        f"lindau_000000_000000_gtFine_{kind}" for kind in
        ("color.png", "instanceIds.png", "labelIds.png", "polygons.json")]


def test_read_sample_matches_files(small):
    for _, row in cs.list_images(small, "train").iterrows():
        image, train_ids = cs.read_sample(small, row)
        np.testing.assert_array_equal(image, _cv2_rgb(small / row["image_path"]))
        label_ids = cv2.imread(str(small / row["label_path"]), cv2.IMREAD_UNCHANGED)
        expected = np.vectorize(lambda i: id2label[i].trainId if id2label[i].trainId < 255 else 255)(label_ids)
        assert train_ids.dtype == np.uint8 and train_ids.shape == (128, 256)
        np.testing.assert_array_equal(train_ids, expected)


def test_instances_keep_16_bits(small):
    row = cs.list_images(small, "train").iloc[0]
    instances = cs.read_instances(small, row)
    raw = cv2.imread(str(small / row["label_path"]).replace("labelIds", "instanceIds"), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and instances.dtype == np.uint16
    np.testing.assert_array_equal(instances, raw)
    label_ids = cv2.imread(str(small / row["label_path"]), cv2.IMREAD_UNCHANGED)
    is_instance = instances >= 1000
    assert instances.max() >= 26000  # cars: 26*1000 + k
    np.testing.assert_array_equal(instances[is_instance] // 1000, label_ids[is_instance])
    np.testing.assert_array_equal(instances[~is_instance], label_ids[~is_instance])
    cars = np.unique(instances[label_ids == 26])
    assert cars.tolist() == list(range(26000, 26000 + len(cars)))  # k counts from 0 per class


def test_polygons_and_colour_agree_with_official_tools(small):
    stem = small / "gtFine" / "train" / "zurich" / "zurich_000001_000000_gtFine"
    annotation = Annotation()
    annotation.fromJsonFile(f"{stem}_polygons.json")
    assert (annotation.imgHeight, annotation.imgWidth) == (128, 256)
    official = np.asarray(createLabelImage(annotation, "ids"))
    label_ids = cv2.imread(f"{stem}_labelIds.png", cv2.IMREAD_UNCHANGED)
    assert (official == label_ids).mean() > 0.97  # PIL vs cv2 polygon edges may differ by a pixel
    colour = cv2.cvtColor(cv2.imread(f"{stem}_color.png", cv2.IMREAD_UNCHANGED), cv2.COLOR_BGRA2RGBA)
    for label_id in np.unique(label_ids):
        assert tuple(colour[label_ids == label_id][0]) == (*id2label[label_id].color, 255)


def test_every_class_appears_and_classes_differ_in_colour(small):
    seen, means = set(), {}
    for _, row in cs.list_images(small, "train").iterrows():
        image, train_ids = cs.read_sample(small, row)
        seen |= set(np.unique(train_ids).tolist())
        for c in (0, 2, 8, 10, 13):  # road, building, vegetation, sky, car
            means.setdefault(c, []).append(image[train_ids == c].mean(axis=0))
    assert seen == set(range(19)) | {255}
    centres = np.array([np.mean(v, axis=0) for v in means.values()])
    gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1)[np.triu_indices(len(centres), 1)]
    assert gaps.min() > 30


def test_generator_is_seeded(tmp_path):
    frames = {"train": {"ulm": [(3, 19)]}}
    paths = [synth.write(tmp_path / name, frames=frames, size=(64, 128), seed=seed)
             for name, seed in (("a", 1), ("b", 1), ("c", 2))]
    rel = "gtFine/train/ulm/ulm_000003_000019_gtFine_labelIds.png"
    a, b, c = (cv2.imread(str(p / rel), cv2.IMREAD_UNCHANGED) for p in paths)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


# ----------------------------------------------------------------- errors


def test_missing_root_names_path_and_url(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        cs.list_images(tmp_path / "nowhere", "train")
    assert str(tmp_path / "nowhere") in str(err.value)
    assert "https://www.cityscapes-dataset.com/downloads/" in str(err.value)


def _one_image(tmp_path) -> tuple[Path, pd.Series]:
    root = synth.write(tmp_path, frames={"val": {"munster": [(0, 19)]}}, size=TINY, seed=0)
    return root, cs.list_images(root, "val").iloc[0]


def test_missing_label_file_is_named(tmp_path):
    root, row = _one_image(tmp_path)
    (root / row["label_path"]).unlink()
    with pytest.raises(DatasetNotFoundError, match="munster_000000_000019_gtFine_labelIds.png"):
        cs.list_images(root, "val")


def test_corrupt_png_is_named(tmp_path):
    root, row = _one_image(tmp_path)
    (root / row["image_path"]).write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(CorruptFileError, match="munster_000000_000019_leftImg8bit.png"):
        cs.read_sample(root, row)


def test_out_of_range_label_id_is_named(tmp_path):
    root, row = _one_image(tmp_path)
    labels = cv2.imread(str(root / row["label_path"]), cv2.IMREAD_UNCHANGED)
    labels[0, 0] = 40
    write_png(root / row["label_path"], labels)
    with pytest.raises(LabelError, match=r"munster_000000_000019_gtFine_labelIds.png.*\[40\]"):
        cs.read_sample(root, row)


def test_size_mismatch_is_named(tmp_path):
    root, row = _one_image(tmp_path)
    write_png(root / row["label_path"], np.zeros((TINY[0], TINY[1] + 1), np.uint8))
    with pytest.raises(CorruptFileError, match="gtFine_labelIds.png is 65x32"):
        cs.read_sample(root, row)


def test_malformed_list_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("1;/leftImg8bit/train/ulm/ulm_000000_000019_leftImg8bit.png\n2;ulm.png\n")
    with pytest.raises(ConfigError, match="bad.csv:2"):
        cs.read_subset_list(bad)


# ----------------------------------------------------------------- subsets


def test_authors_list_is_used_exactly(set2_root):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no duplicates in set2, so no warning at all
        manifest = cs.select_subset(set2_root, SUBSETS / "training_set2.csv", seed=0)
    assert manifest.columns.tolist() == ["sample_id", "city", "image_path", "label_path", "source"]
    assert manifest["image_path"].tolist() == _list_paths("training_set2.csv")
    assert (manifest["source"] == "authors_list").all()
    assert manifest["city"].value_counts().to_dict() == {city: 2 for city in cs.TRAIN_CITIES}
    assert all((set2_root / p).is_file() for p in manifest["label_path"])


def test_set8_duplicates_are_kept_and_warned(tmp_path):
    paths = _list_paths("training_set8.csv")
    root = synth.write(tmp_path, frames=_frames_of(paths), size=(16, 32), seed=0)
    with pytest.warns(cs.DuplicateImagesWarning, match="144 rows but 142 distinct"):
        manifest = cs.select_subset(root, SUBSETS / "training_set8.csv", seed=0)
    assert manifest["image_path"].tolist() == paths
    assert manifest["sample_id"].is_unique and manifest["image_path"].nunique() == 142
    assert "krefeld_000000_012353__dup1" in set(manifest["sample_id"])


def test_partial_dataset_is_an_error(set2_root, tmp_path):
    listed = _list_paths("training_set2.csv")
    partial = tmp_path / "partial.csv"
    partial.write_text("1;/" + listed[0] + "\n2;/leftImg8bit/train/ulm/ulm_000123_000019_leftImg8bit.png\n")
    with pytest.raises(DatasetNotFoundError, match="1 of 2 listed images are missing.*ulm_000123_000019"):
        cs.select_subset(set2_root, partial, seed=0)


@pytest.fixture(scope="module")
def all_cities(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cs_all")
    return synth.write(root, images_per_city={"train": 4, "val": 12}, size=(16, 32), seed=5)


def test_fallback_matches_list_counts_and_is_seeded(all_cities):
    list_csv = SUBSETS / "training_set2.csv"
    with pytest.warns(cs.SubsetFallbackWarning, match="seeded per-city draw"):
        first = cs.select_subset(all_cities, list_csv, seed=3)
    with pytest.warns(cs.SubsetFallbackWarning):
        again = cs.select_subset(all_cities, list_csv, seed=3)
        other = cs.select_subset(all_cities, list_csv, seed=4)
    assert (first["source"] == "seeded_fallback").all()
    assert first["city"].value_counts().to_dict() == {city: 2 for city in cs.TRAIN_CITIES}
    assert first["sample_id"].is_unique
    assert set(first["image_path"]) <= set(cs.list_images(all_cities, "train")["image_path"])
    pd.testing.assert_frame_equal(first, again)
    assert first["sample_id"].tolist() != other["sample_id"].tolist()
    with pytest.warns(cs.SubsetFallbackWarning):
        val = cs.select_subset(all_cities, SUBSETS / "validation_set.csv", seed=0)
    assert val["city"].value_counts().to_dict() == {"frankfurt": 10, "lindau": 10, "munster": 10}


def test_fallback_spreads_absent_cities_over_present_ones(tmp_path):
    root = synth.write(tmp_path, train_cities=["aachen", "bochum"], val_cities=[],
                       images_per_city=6, size=(16, 32), seed=0)
    listing = tmp_path / "list.csv"
    names = ["aachen_000100_000019"] * 2 + ["bochum_000100_000019"] + [f"zurich_00010{k}_000019" for k in range(3)]
    listing.write_text("".join(
        f"{i};/leftImg8bit/train/{n.split('_')[0]}/{n}_leftImg8bit.png\n" for i, n in enumerate(names, 1)))
    with pytest.warns(cs.SubsetFallbackWarning):
        manifest = cs.select_subset(root, listing, seed=0)
    # 6 rows; zurich's 3 spread over 2 present cities: +2 for aachen (first in order), +1 for bochum
    assert manifest["city"].value_counts().to_dict() == {"aachen": 4, "bochum": 2}
