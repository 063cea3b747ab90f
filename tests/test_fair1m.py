"""FAIR1M reader, crop geometry, greedy crop selection, rasterisation and synthetic writer."""

from __future__ import annotations

import collections
import re
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vitlocal.datasets import fair1m
from vitlocal.errors import ConfigError, CorruptFileError, DatasetNotFoundError, LabelError
from vitlocal.synthetic import fair1m as synth

XML = """<?xml version="1.0" encoding="utf-8"?>
<annotation>
  <source><filename>7.tif</filename><origin>GF2/GF3</origin></source>
  <size><width>600</width><height>500</height><depth>3</depth></size>
  <objects>
    <object><coordinate>pixel</coordinate><type>rectangle</type><description>None</description>
      <possibleresult><name>Liquid Cargo Ship</name></possibleresult>
      <points><point>10.5,20.25</point><point>110.0,20.25</point><point>110.0,40.125</point>
              <point>10.5,40.125</point><point>10.5,20.25</point></points>
    </object>
    <object><coordinate>pixel</coordinate><type>rectangle</type><description>None</description>
      <possibleresult><name> other-vehicle </name></possibleresult>
      <points><point>300.000000,300.000000</point><point>296.535898,302.000000</point>
              <point>298.535898,305.464102</point><point>302.000000,303.464102</point></points>
    </object>
  </objects>
</annotation>
"""

SMALL = dict(n_train_part1=3, n_train_part2=3, n_val=1, min_size=512, max_size=560, objects_per_image=24)


def _write_xml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return synth.write(tmp_path_factory.mktemp("fair1m"), gray_fraction=0.5, seed=3, **SMALL)


# --------------------------------------------------------------------------- reading


def test_classes_and_superclasses():
    assert len(fair1m.CLASSES) == 37 == fair1m.BACKGROUND
    assert fair1m.CLASSES[:2] == ("Passenger Ship", "Motorboat") and fair1m.CLASSES[-1] == "Bridge"
    counts = collections.Counter(fair1m.SUPERCLASS_OF.values())
    assert counts == {"Ship": 9, "Vehicle": 10, "Airplane": 11, "Court": 4, "Road": 3}
    assert fair1m.SUPERCLASS_INDEX[fair1m.CLASS_INDEX["A350"]] == fair1m.SUPERCLASSES.index("Airplane")


def test_read_annotation_exact_boxes(tmp_path):
    ann = fair1m.read_annotation(_write_xml(tmp_path / "7.xml", XML))
    assert (ann.filename, ann.width, ann.height) == ("7.tif", 600, 500)
    names = [o.name for o in ann.objects]
    assert names == ["Liquid Cargo Ship", "other-vehicle"]
    assert [o.class_index for o in ann.objects] == [6, 13]  # 9 ships, then Small Car, Bus, ..
    np.testing.assert_allclose(ann.objects[0].points, [[10.5, 20.25], [110, 20.25], [110, 40.125], [10.5, 40.125]])
    # 4-point list (no closing repeat) is kept as written
    np.testing.assert_allclose(ann.objects[1].points[2], [298.535898, 305.464102], atol=1e-6)
    assert ann.objects[1].points.shape == (4, 2)


def test_list_images_both_xml_spellings(root):
    train = fair1m.list_images(root, "train")
    assert len(train) == 6 and train["sample_id"].is_unique
    part1, part2 = train.iloc[:3], train.iloc[3:]
    assert part1["xml_path"].str.startswith("train/part1/labelXml/").all()
    assert part2["xml_path"].str.startswith("train/part2/labelXmls/").all()
    assert train["image_path"].tolist()[:3] == [f"train/part1/images/{i}.tif" for i in range(3)]
    assert train["sample_id"].iloc[3] == "train_part2_0"
    val = fair1m.list_images(root, "validation")
    assert val["image_path"].tolist() == ["validation/images/0.tif"]


def test_list_images_flat_train_layout_and_natural_order(tmp_path):
    (tmp_path / "train" / "images").mkdir(parents=True)
    for stem in ("10", "2"):
        Image.new("RGB", (8, 8)).save(tmp_path / "train" / "images" / f"{stem}.tif")
        _write_xml(tmp_path / "train" / "labelXmls" / f"{stem}.xml", XML)
    listing = fair1m.list_images(tmp_path, "train")
    assert listing["sample_id"].tolist() == ["train_2", "train_10"]
    assert listing["xml_path"].tolist() == ["train/labelXmls/2.xml", "train/labelXmls/10.xml"]


def test_synthetic_boxes_are_rectangles_inside_image_and_balanced(root):
    counts = collections.Counter()
    for row in fair1m.list_images(root, "train").iloc[:3].to_dict("records"):
        ann = fair1m.read_annotation(root / row["xml_path"])
        w, h = Image.open(root / row["image_path"]).size
        assert (ann.width, ann.height) == (w, h)
        for obj in ann.objects:
            p = fair1m.convex_corners(obj.points)
            edges = np.roll(p, -1, axis=0) - p
            dots = np.einsum("ij,ij->i", edges, np.roll(edges, -1, axis=0))
            np.testing.assert_allclose(dots, 0, atol=1e-3)  # right angles: a rotated rectangle
            assert p.min() >= 0 and p[:, 0].max() <= w and p[:, 1].max() <= h
            counts[obj.class_index] += 1
    # 72 objects dealt from shuffles of the 37 classes: every class once or twice
    assert sum(counts.values()) == 72 and set(counts.values()) == {1, 2} and len(counts) == 37


def test_synthetic_writer_is_deterministic(tmp_path):
    kwargs = dict(n_train_part1=1, n_train_part2=0, n_val=0, min_size=256, max_size=256, objects_per_image=5)
    a, b, c = (synth.write(tmp_path / name, seed=s, **kwargs) for name, s in (("a", 1), ("b", 1), ("c", 2)))
    files = ["train/part1/images/0.tif", "train/part1/labelXml/0.xml"]
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert all((a / f).read_bytes() != (c / f).read_bytes() for f in files)


# --------------------------------------------------------------------------- geometry


DIAMOND = np.array([[10.0, 6.0], [14.0, 10.0], [10.0, 14.0], [6.0, 10.0]])  # 45-degree square, area 32


@pytest.mark.parametrize(
    "x0, y0, size, expected",
    [
        (10, 0, 20, 16.0),  # right half
        (12, 0, 20, 4.0),  # triangle (12,8) (14,10) (12,12)
        (8, 8, 20, 24.0),  # 32 minus two corner triangles of area 4
        (0, 0, 30, 32.0),  # fully inside
        (14, 0, 20, 0.0),  # touches the tip only
    ],
)
def test_intersection_area_hand_computed(x0, y0, size, expected):
    clipped = fair1m.clip_to_square(fair1m.convex_corners(DIAMOND[::-1]), x0, y0, size)
    assert fair1m.polygon_area(clipped) == pytest.approx(expected, abs=1e-9)
    assert fair1m.inside_fraction(DIAMOND, x0, y0, size) == pytest.approx(expected / 32, abs=1e-12)


def test_intersection_area_matches_cv2():
    rng = np.random.default_rng(0)
    for _ in range(50):
        c, (l, w), a = rng.uniform(0, 60, 2), rng.uniform(2, 40, 2), rng.uniform(0, 180)
        box = cv2.boxPoints((tuple(c), (l, w), a)).astype(np.float64)
        x0, y0, s = *rng.uniform(0, 40, 2), rng.uniform(5, 30)
        square = np.array([[x0, y0], [x0 + s, y0], [x0 + s, y0 + s], [x0, y0 + s]], np.float32)
        ref, _ = cv2.intersectConvexConvex(box.astype(np.float32), square)
        rng.shuffle(box)  # corner order is not guaranteed in the files
        got = fair1m.inside_fraction(box, x0, y0, s) * l * w
        assert got == pytest.approx(ref, rel=1e-4, abs=1e-3)


def _obj(name: str, points) -> fair1m.FairObject:
    return fair1m.FairObject(name, fair1m.CLASS_INDEX[name], np.asarray(points, float))


def test_one_third_rule_at_the_boundary():
    box = _obj("Bus", [[0, 0], [30, 0], [30, 10], [0, 10]])
    present = fair1m.classes_in_crops([box], [(20, 0), (21, 0), (-5, 0)], 20, 1 / 3)
    bus = fair1m.CLASS_INDEX["Bus"]
    assert present == {(20, 0): {bus}, (21, 0): set(), (-5, 0): {bus}}  # 10/30, 9/30, 15/30


# --------------------------------------------------------------------------- selection


def _present_by_rule(root: Path, row) -> set[int]:
    """Independent recomputation: cv2's convex intersection area over the box area."""
    x0, y0, s = row["x0"], row["y0"], row["crop_size"]
    square = np.array([[x0, y0], [x0 + s, y0], [x0 + s, y0 + s], [x0, y0 + s]], np.float32)
    present = set()
    for obj in fair1m.read_objects(root / row["xml_path"]):
        hull = cv2.convexHull(obj.points.astype(np.float32))
        inter, _ = cv2.intersectConvexConvex(hull, square)
        if inter >= cv2.contourArea(hull) / 3 - 1e-3:
            present.add(obj.class_index)
    return present


@pytest.mark.filterwarnings("ignore::vitlocal.datasets.fair1m.FewCropsWarning")
def test_select_crops_greedy(root):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manifest = fair1m.select_crops(root, per_class=2, crop_size=128, seed=0)
    assert list(manifest.columns) == fair1m.MANIFEST_COLUMNS
    assert manifest["sample_id"].is_unique and not manifest.duplicated(["image_path", "x0", "y0"]).any()
    messages = [str(w.message) for w in caught if issubclass(w.category, fair1m.FewCropsWarning)]
    items = [item for m in messages for item in m.split("left for ")[1].split(", ")]
    short = dict(re.fullmatch(r"(.+) \((\d) of 2\)", item).groups() for item in items)
    counts = manifest["selected_for"].value_counts()
    for c, name in enumerate(fair1m.CLASSES):
        assert counts.get(c, 0) == int(short.get(name, 2)), name
    assert len(manifest) > 37  # most classes got both crops
    for row in manifest.to_dict("records"):
        classes = set(fair1m.parse_classes(row["classes"]))
        assert classes == _present_by_rule(root, row)
        assert row["selected_for"] in classes
        w, h = Image.open(root / row["image_path"]).size
        assert row["x0"] % 128 == 0 and row["y0"] % 128 == 0
        assert row["x0"] + 128 <= w and row["y0"] + 128 <= h
    again = fair1m.select_crops(root, per_class=2, crop_size=128, seed=0)
    pd.testing.assert_frame_equal(manifest, again)
    other = fair1m.select_crops(root, per_class=2, crop_size=128, seed=1)
    assert set(other["sample_id"]) != set(manifest["sample_id"])


def test_parse_classes():
    assert fair1m.parse_classes("3;17") == [3, 17] and fair1m.parse_classes(5) == [5]
    with pytest.raises(ConfigError, match="'3,17'"):
        fair1m.parse_classes("3,17")


def test_greedy_select_takes_what_exists_and_warns():
    pool = pd.DataFrame({"sample_id": list("abcd"), "classes": [(0, 1), (1,), (1,), (2,)]})
    for seed in range(10):
        with pytest.warns(fair1m.FewCropsWarning, match=r"Passenger Ship \(1 of 2\).*Fishing Boat \(1 of 2\)"):
            picked = fair1m.greedy_select(pool, per_class=2, seed=seed)
        # class 0 takes its only crop "a", so class 1 must take b and c whatever the seed
        assert picked["sample_id"].tolist() == ["a", "b", "c", "d"]
        assert picked["selected_for"].tolist() == [0, 1, 1, 2]


# --------------------------------------------------------------------------- label maps


def test_rasterize_axis_aligned_box_and_draw_order():
    big = _obj("Football Field", [[0, 0], [30, 0], [30, 30], [0, 30]])
    small = _obj("Small Car", [[30, 25], [10, 25], [10, 20], [30, 20]])  # listed first, drawn last
    labels = fair1m.rasterize([small, big], x0=4, y0=8, size=32)
    expected = np.full((32, 32), fair1m.BACKGROUND, np.uint8)
    expected[: 30 - 8, : 30 - 4] = fair1m.CLASS_INDEX["Football Field"]
    expected[20 - 8 : 25 - 8, 10 - 4 : 30 - 4] = fair1m.CLASS_INDEX["Small Car"]
    np.testing.assert_array_equal(labels, expected)


def test_rasterize_rotated_box_matches_point_in_polygon():
    box = cv2.boxPoints(((10.3, 9.8), (12.0, 5.0), 30.0)).astype(np.float64)  # no centre on an edge
    labels = fair1m.rasterize([_obj("Tugboat", box[[2, 0, 3, 1]])], x0=0, y0=0, size=20)
    centres = [(c + 0.5, r + 0.5) for r in range(20) for c in range(20)]
    contour = box.astype(np.float32).reshape(-1, 1, 2)
    inside = np.array([cv2.pointPolygonTest(contour, p, False) > 0 for p in centres]).reshape(20, 20)
    np.testing.assert_array_equal(labels == fair1m.CLASS_INDEX["Tugboat"], inside)
    assert abs(int(inside.sum()) - 60) <= 10  # ~ area 12 x 5
    assert set(np.unique(labels[~inside]).tolist()) == {fair1m.BACKGROUND}


@pytest.mark.filterwarnings("ignore::vitlocal.datasets.fair1m.FewCropsWarning")
def test_read_sample_crop_labels_and_gray_images(root):
    manifest = fair1m.select_crops(root, per_class=1, crop_size=128, seed=0)
    origins = {}
    for row in manifest.to_dict("records"):
        crop, labels = fair1m.read_sample(root, row)
        raw = np.asarray(Image.open(root / row["image_path"]))
        window = raw[row["y0"] : row["y0"] + 128, row["x0"] : row["x0"] + 128]
        assert crop.shape == (128, 128, 3) and labels.shape == (128, 128) and labels.dtype == np.uint8
        if raw.ndim == 2:  # GF3-like single channel -> three equal channels
            np.testing.assert_array_equal(crop, np.repeat(window[..., None], 3, axis=2))
        else:
            np.testing.assert_array_equal(crop, window)
        assert row["selected_for"] in set(np.unique(labels).tolist())
        origins[raw.ndim] = True
    assert origins == {2: True, 3: True}


def test_size_falls_back_to_image_when_xml_has_none(root, tmp_path):
    copy = Path(shutil.copytree(root / "validation", tmp_path / "validation"))
    xml = copy / "labelXml" / "0.xml"
    xml.write_text(re.sub(r"<size>.*?</size>", "", xml.read_text(), flags=re.S))
    row = fair1m.list_images(tmp_path, "validation").iloc[0]
    ann = fair1m.read_annotation(tmp_path / row["xml_path"])
    assert ann.width is None and fair1m.annotated_size(tmp_path, row, ann) == Image.open(copy / "images" / "0.tif").size


# --------------------------------------------------------------------------- errors


def test_missing_root_names_path_and_url(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=re.escape(str(tmp_path / "nope"))) as err:
        fair1m.list_images(tmp_path / "nope", "train")
    assert fair1m.INFO.url in str(err.value) and "account" in str(err.value)
    with pytest.raises(ConfigError, match="test"):
        fair1m.list_images(tmp_path, "test")


def test_image_without_xml(tmp_path):
    (tmp_path / "validation" / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "validation" / "images" / "3.tif")
    with pytest.raises(DatasetNotFoundError, match=r"validation/labelXml\(s\)/3\.xml"):
        fair1m.list_images(tmp_path, "validation")


def test_unknown_class_and_corrupt_xml(tmp_path):
    bad = _write_xml(tmp_path / "u.xml", XML.replace("Liquid Cargo Ship", "Submarine"))
    with pytest.raises(LabelError, match=r"u\.xml.*'Submarine'"):
        fair1m.read_objects(bad)
    broken = _write_xml(tmp_path / "c.xml", XML[: len(XML) // 2])
    with pytest.raises(CorruptFileError, match=r"c\.xml"):
        fair1m.read_objects(broken)
    last_two = r"<point>10\.5,40\.125</point>\s*<point>10\.5,20\.25</point>"
    three = _write_xml(tmp_path / "p.xml", re.sub(last_two, "", XML))
    with pytest.raises(CorruptFileError, match=r"p\.xml: object 0: 3 points"):
        fair1m.read_objects(three)
    nonnumeric = _write_xml(tmp_path / "n.xml", XML.replace("110.0,20.25", "110.0;20.25"))
    with pytest.raises(CorruptFileError, match=r"n\.xml: object 0"):
        fair1m.read_objects(nonnumeric)


def test_crop_outside_image_is_reported(root):
    row = {"image_path": "validation/images/0.tif", "xml_path": "validation/labelXml/0.xml"}
    row.update(x0=512, y0=0, crop_size=128)
    with pytest.raises(CorruptFileError, match=r"validation/images/0\.tif .*x0=512"):
        fair1m.read_sample(root, row)


@pytest.mark.parametrize("dirname", ["labelXml", "labelXmls"])
def test_xml_without_its_image_is_an_error(tmp_path, dirname):
    """A label file whose image is missing (a broken unpack) must not silently shrink the subset."""
    (tmp_path / "validation" / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "validation" / "images" / "3.tif")
    _write_xml(tmp_path / "validation" / dirname / "3.xml", XML)
    _write_xml(tmp_path / "validation" / dirname / "4.xml", XML)
    with pytest.raises(DatasetNotFoundError, match=rf"1 label file\(s\) without their image .*{dirname}/4\.xml"):
        fair1m.list_images(tmp_path, "validation")


def _box(name: str, points) -> str:
    pts = "".join(f"<point>{x},{y}</point>" for x, y in [*points, points[0]])
    return f"<object><possibleresult><name>{name}</name></possibleresult><points>{pts}</points></object>"


@pytest.mark.filterwarnings("ignore::vitlocal.datasets.fair1m.FewCropsWarning")
def test_zero_area_boxes_are_counted_warned_and_left_out_of_labels(tmp_path):
    """Bus [10, 60] x [10, 40] in crop (0, 0); a Small Car on the line y = 100 (x 100..140) has no area,
    nor a Van shrunk to the point (200, 200).

    The car reaches crops (0, 0) and (128, 0), the van crop (128, 128); only
    (0, 0) holds a class, so the manifest counts 1 dropped box for it (of 2
    in the file), and its label map has no car.
    """
    (tmp_path / "validation" / "images").mkdir(parents=True)
    Image.new("RGB", (256, 256)).save(tmp_path / "validation" / "images" / "0.tif")
    bus = _box("Bus", [(10, 10), (60, 10), (60, 40), (10, 40)])
    line = _box("Small Car", [(100, 100), (120, 100), (140, 100), (110, 100)])
    point = _box("Van", [(200, 200)] * 4)
    _write_xml(tmp_path / "validation" / "labelXml" / "0.xml",
               f"<annotation><size><width>256</width><height>256</height></size><objects>{bus}{line}{point}"
               "</objects></annotation>")
    with pytest.warns(fair1m.DegenerateBoxWarning, match=r"dropped 2 zero-area box\(es\) in 1 label file\(s\): "
                      r"validation/labelXml/0\.xml \(2\); 1 of them reach the selected crops"):
        manifest = fair1m.select_crops(tmp_path, "validation", per_class=1, crop_size=128, seed=0)
    assert manifest[["x0", "y0", "dropped_boxes"]].values.tolist() == [[0, 0, 1]]
    _, labels = fair1m.read_sample(tmp_path, manifest.iloc[0])
    assert set(np.unique(labels).tolist()) == {fair1m.CLASS_INDEX["Bus"], fair1m.BACKGROUND}
    assert fair1m.is_degenerate(np.array([[0, 0], [0, 0], [0, 0], [0, 0]], float))
    assert not fair1m.is_degenerate(np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float))
    assert not fair1m.is_degenerate(np.array([[0, 0], [1, 1], [1, 0], [0, 1]], float))  # corners in crossing order


def test_non_finite_points_are_refused(tmp_path):
    bad = _write_xml(tmp_path / "nan.xml", XML.replace("110.0,20.25", "nan,20.25"))
    with pytest.raises(CorruptFileError, match=r"nan\.xml: object 0: points .* not finite"):
        fair1m.read_objects(bad)
