"""ADE20K reader, greedy subset rule and synthetic writer.

References: masks decoded with cv2, a hand-built dataset whose subsets are
worked out by hand, and the official objectInfo150.txt quirks (stray spaces).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vitlocal.datasets import ade20k as ade
from vitlocal.errors import ConfigError, DatasetNotFoundError, LabelError
from vitlocal.io import write_png
from vitlocal.synthetic import ade20k as synth


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ade_demo")
    return synth.write(root, n_train=24, n_val=6, size=(48, 64), seed=11, n_classes_used=8)


def _hand_made(root: Path, masks: list[set[int]]) -> Path:
    """A bare ADEChallengeData2016 whose i-th training mask holds exactly the given raw values.

    The objectInfo150.txt copies the official file's quirks: ``"22 \\t"`` and ``"bed "``.
    """
    base = root / "ADEChallengeData2016"
    for i, values in enumerate(masks, start=1):
        mask = np.zeros((4, 6), np.uint8)
        mask.flat[: len(values)] = sorted(values)
        write_png(base / "annotations" / "training" / f"ADE_train_{i:08d}.png", mask)
        (base / "images" / "training").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (6, 4), (90, 90, 90)).save(base / "images" / "training" / f"ADE_train_{i:08d}.jpg")
    rows = [f"{i}\t0.0001\t1\t1\t{synth.NAMES[i - 1]}" for i in range(1, 151)]
    rows[7] = "8\t0.0231\t1906\t199\tbed "
    rows[21] = "22 \t0.0074\t709\t75\twater"
    (base / "objectInfo150.txt").write_text("Idx\tRatio\tTrain\tVal\tName\n" + "\n".join(rows) + "\n")
    return root


# ----------------------------------------------------------------- generator + reader round trip


def test_layout_and_class_names(demo):
    base = demo / "ADEChallengeData2016"
    assert sorted(p.name for p in (base / "images" / "validation").iterdir())[0] == "ADE_val_00000001.jpg"
    assert (base / "annotations" / "training" / "ADE_train_00000024.png").is_file()
    names = ade.read_classes(demo)
    assert len(names) == 150 and names[0] == "wall" and names[1] == "building, edifice" and names[149] == "flag"
    assert (base / "sceneCategories.txt").read_text().splitlines()[0].startswith("ADE_train_00000001 ")
    assert ade.read_classes(base) == names  # root may be the ADEChallengeData2016 folder itself


def test_object_info_counts_match_masks(demo):
    info = pd.read_csv(demo / "ADEChallengeData2016" / "objectInfo150.txt", sep="\t")
    present = np.zeros(151, int)
    for png in (demo / "ADEChallengeData2016" / "annotations" / "training").glob("*.png"):
        present[np.unique(cv2.imread(str(png), cv2.IMREAD_UNCHANGED))] += 1
    np.testing.assert_array_equal(info["Train"].to_numpy(), present[1:])
    assert (info["Train"] > 0).sum() == 8  # n_classes_used


def test_read_sample_reduces_zero_label_once(demo):
    images = ade.list_images(demo, "train")
    assert images["sample_id"].tolist() == [f"ADE_train_{i:08d}" for i in range(1, 25)]
    assert images.equals(ade.list_images(demo, "training"))
    seen_other = False
    for _, row in images.iterrows():
        image, labels = ade.read_sample(demo, row)
        raw = cv2.imread(str(demo / row["label_path"]), cv2.IMREAD_UNCHANGED)
        expected = np.where(raw == 0, 255, raw.astype(int) - 1)
        np.testing.assert_array_equal(labels, expected)
        np.testing.assert_array_equal(image, np.asarray(Image.open(demo / row["image_path"]).convert("RGB")))
        seen_other |= bool((raw == 0).any())
    assert seen_other


def test_hand_made_extremes_and_name_quirks(tmp_path):
    root = _hand_made(tmp_path, [{0, 1, 150}])
    names = ade.read_classes(root)
    assert names[7] == "bed" and names[21] == "water"
    _, labels = ade.read_sample(root, ade.list_images(root, "training").iloc[0])
    assert labels.flat[:3].tolist() == [255, 0, 149] and labels.dtype == np.uint8


def test_classes_look_different(demo):
    means: dict[int, list] = {}
    for _, row in ade.list_images(demo, "train").iterrows():
        image, labels = ade.read_sample(demo, row)
        for c in np.unique(labels[labels != 255]):
            means.setdefault(int(c), []).append(image[labels == c].mean(axis=0))
    centres = np.array([np.mean(v, axis=0) for v in means.values()])
    gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1)[np.triu_indices(len(centres), 1)]
    assert len(centres) == 8 and gaps.min() > 10


def test_generator_is_seeded(tmp_path):
    a, b, c = (synth.write(tmp_path / n, n_train=2, n_val=1, size=(24, 32), seed=s) for n, s in
               (("a", 1), ("b", 1), ("c", 2)))
    rel = "ADEChallengeData2016/annotations/training/ADE_train_00000002.png"
    assert (a / rel).read_bytes() == (b / rel).read_bytes() != (c / rel).read_bytes()


# ----------------------------------------------------------------- subsets


def test_subset_rule_by_hand(tmp_path):
    # masks 1..5 hold classes {1,2}, {2,3}, {3}, {2,3}, {1,3}
    root = _hand_made(tmp_path, [{1, 2}, {2, 3}, {3}, {2, 3}, {1, 3}])
    with pytest.warns(ade.TooFewCandidatesWarning, match=r"no image for 147 classes \(Idx \[4, 5,"):
        one = ade.select_subset(root, "training", per_class=1, pool_last=None)
        last3 = ade.select_subset(root, "train", per_class=1, pool_last=3)  # pool = images 3, 4, 5
    # class 3 -> first candidate 2; class 2 -> 1 (2 is taken); class 1 -> 5 (1 is taken)
    assert one["sample_id"].str[-1].tolist() == ["2", "1", "5"]
    assert one["selected_for_class"].tolist() == [3, 2, 1]
    assert last3["sample_id"].str[-1].tolist() == ["3", "4", "5"]
    with pytest.warns(ade.TooFewCandidatesWarning, match=r"fewer than 2 images for \{1: 1\}"):
        two = ade.select_subset(root, "training", per_class=2, pool_last=None)
    # class 3 -> 2, 3; class 2 -> 1, 4; class 1 -> only 5 left
    assert two["sample_id"].str[-1].tolist() == ["2", "3", "1", "4", "5"]
    assert two["n_for_class"].tolist() == [2, 2, 2, 2, 1]


def test_subset_on_synthetic_data(demo):
    with pytest.warns(ade.TooFewCandidatesWarning):  # 142 of the 150 classes never occur
        manifest = ade.select_subset(demo, "training", per_class=2, pool_last=16)
    assert manifest.columns.tolist() == ["sample_id", "image_path", "label_path", "selected_for_class", "n_for_class"]
    assert manifest["sample_id"].is_unique
    assert set(manifest["sample_id"]) <= {f"ADE_train_{i:08d}" for i in range(9, 25)}
    for _, row in manifest.iterrows():
        raw = cv2.imread(str(demo / row["label_path"]), cv2.IMREAD_UNCHANGED)
        assert (raw == row["selected_for_class"]).any()
    assert manifest["selected_for_class"].is_monotonic_decreasing
    assert manifest.groupby("selected_for_class").size().max() <= 2
    # unseeded picks follow sorted order within each class
    for _, group in manifest.groupby("selected_for_class"):
        assert group["sample_id"].is_monotonic_increasing


def test_seeded_subset_is_deterministic(demo):
    with pytest.warns(ade.TooFewCandidatesWarning):
        a = ade.select_subset(demo, "val", per_class=1, pool_last=None, seed=1)
        b = ade.select_subset(demo, "val", per_class=1, pool_last=None, seed=1)
        train = [ade.select_subset(demo, "training", per_class=1, pool_last=None, seed=s) for s in (1, 2)]
    pd.testing.assert_frame_equal(a, b)
    assert train[0]["sample_id"].tolist() != train[1]["sample_id"].tolist()
    assert a["image_path"].str.startswith("ADEChallengeData2016/images/validation/").all()


# ----------------------------------------------------------------- errors


def test_missing_root_names_path_and_url(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        ade.list_images(tmp_path / "nowhere", "validation")
    assert str(tmp_path / "nowhere") in str(err.value) and "http://sceneparsing.csail.mit.edu/" in str(err.value)


def test_missing_object_info(tmp_path):
    root = _hand_made(tmp_path, [{1}])
    (root / "ADEChallengeData2016" / "objectInfo150.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match="objectInfo150.txt"):
        ade.read_classes(root)


def test_out_of_range_label_is_named(tmp_path):
    root = _hand_made(tmp_path, [{1}, {151}])
    row = ade.list_images(root, "training").iloc[1]
    with pytest.raises(LabelError, match=r"ADE_train_00000002.png: values \[151\]"):
        ade.read_sample(root, row)
    with pytest.raises(LabelError, match="ADE_train_00000002.png"):
        ade.select_subset(root, "training", per_class=1, pool_last=None)


def test_unknown_split(demo):
    with pytest.raises(ConfigError, match="'testing'"):
        ade.list_images(demo, "testing")
