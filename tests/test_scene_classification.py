"""UC Merced and NWPU-RESISC45: class tuples, listing, synthetic writers, errors."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from vitlocal.datasets import resisc45, ucmerced
from vitlocal.errors import ConfigError, CorruptFileError, DatasetNotFoundError, LabelError
from vitlocal.synthetic import resisc45 as synth_resisc45
from vitlocal.synthetic import ucmerced as synth_ucmerced

DATASETS = {
    "ucmerced": (ucmerced, synth_ucmerced, "UCMerced_LandUse/Images", r"{c}\d\d\.tif", 21),
    "resisc45": (resisc45, synth_resisc45, "NWPU-RESISC45", r"{c}_\d\d\d\.jpg", 45),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scenes")
    synth_ucmerced.write(root, n_per_class=2, seed=0)
    synth_resisc45.write(root, n_per_class=2, seed=0)
    return root


def test_class_tuples():
    assert len(set(ucmerced.CLASSES)) == 21 and len(set(resisc45.CLASSES)) == 45
    assert ucmerced.CLASSES.index("tenniscourt") == 20 and ucmerced.CLASSES[0] == "agricultural"
    assert resisc45.CLASSES == tuple(sorted(resisc45.CLASSES))  # the official folders sort alphabetically
    assert {"baseball_diamond", "ground_track_field", "thermal_power_station", "sea_ice"} <= set(resisc45.CLASSES)


@pytest.mark.parametrize("name", DATASETS)
def test_round_trip(root, name):
    module, _, folder, pattern, n_classes = DATASETS[name]
    listing = module.list_images(root)
    assert list(listing.columns) == ["sample_id", "image_path", "class_name", "label"]
    assert len(listing) == 2 * n_classes and listing["sample_id"].is_unique
    assert listing["label"].tolist() == [c for c in range(n_classes) for _ in range(2)]
    for row in listing.to_dict("records"):
        assert row["class_name"] == module.CLASSES[row["label"]]
        assert re.fullmatch(f"{folder}/{row['class_name']}/" + pattern.format(c=row["class_name"]), row["image_path"])
        assert (root / row["image_path"]).is_file()


def test_official_numbering(root):
    ucm = ucmerced.list_images(root)
    assert ucm["sample_id"].tolist()[:3] == ["agricultural00", "agricultural01", "airplane00"]
    res = resisc45.list_images(root)
    assert res["image_path"].iloc[0] == "NWPU-RESISC45/airplane/airplane_001.jpg"


def test_ucmerced_has_off_size_images_and_resisc_does_not(root):
    sizes = {p: Image.open(root / p).size for p in ucmerced.list_images(root)["image_path"]}
    odd = {p: s for p, s in sizes.items() if s != (256, 256)}
    # every 10th image from the 8th (class-major, 2 per class): images 7, 17, 27, 37 of 42
    assert odd == {
        "UCMerced_LandUse/Images/beach/beach01.tif": (256, 253),
        "UCMerced_LandUse/Images/freeway/freeway01.tif": (256, 247),
        "UCMerced_LandUse/Images/mobilehomepark/mobilehomepark01.tif": (252, 256),
        "UCMerced_LandUse/Images/sparseresidential/sparseresidential01.tif": (256, 253),
    }
    assert {Image.open(root / p).size for p in resisc45.list_images(root)["image_path"]} == {(256, 256)}
    assert Image.open(root / resisc45.list_images(root)["image_path"].iloc[0]).format == "JPEG"


@pytest.mark.filterwarnings("ignore:The number of unique classes")
@pytest.mark.parametrize("name", DATASETS)
def test_synthetic_classes_are_learnable(root, name):
    """2-fold 1-NN on mean image colour (one image per class to train) separates the classes."""
    module = DATASETS[name][0]
    listing = module.list_images(root)
    images = [np.asarray(Image.open(root / p).convert("RGB"), np.float32) for p in listing["image_path"]]
    x = np.stack([image.mean(axis=(0, 1)) for image in images])
    accuracy = cross_val_score(KNeighborsClassifier(1), x, listing["label"], cv=2).mean()
    assert accuracy > 0.9  # chance: 1/21 or 1/45


def test_writer_is_deterministic(tmp_path):
    a = synth_resisc45.write(tmp_path / "a", n_per_class=1, seed=4)
    b = synth_resisc45.write(tmp_path / "b", n_per_class=1, seed=4)
    c = synth_resisc45.write(tmp_path / "c", n_per_class=1, seed=5)
    rel = "NWPU-RESISC45/lake/lake_001.jpg"
    assert (a / rel).read_bytes() == (b / rel).read_bytes() != (c / rel).read_bytes()


def test_class_subset_keeps_official_labels(root):
    listing = resisc45.list_images(root, classes=["wetland", "airport"])
    assert listing["class_name"].tolist() == ["airport"] * 2 + ["wetland"] * 2
    assert listing["label"].tolist() == [1, 1, 44, 44]
    with pytest.raises(ConfigError, match="'Airport'"):
        resisc45.list_images(root, classes=["Airport"])


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name", DATASETS)
def test_missing_root_names_path_and_url(tmp_path, name):
    module = DATASETS[name][0]
    with pytest.raises(DatasetNotFoundError, match=re.escape(str(tmp_path / "none"))) as err:
        module.list_images(tmp_path / "none")
    assert module.INFO.url in str(err.value) and "no account needed" in str(err.value)


@pytest.fixture
def ucm_copy(root, tmp_path) -> Path:
    shutil.copytree(root / "UCMerced_LandUse", tmp_path / "UCMerced_LandUse")
    return tmp_path


def test_unknown_class_folder(ucm_copy):
    (ucm_copy / "UCMerced_LandUse" / "Images" / "volcano").mkdir()
    with pytest.raises(LabelError, match=r"\['volcano'\] are not UC Merced Land Use classes"):
        ucmerced.list_images(ucm_copy)


def test_missing_class_folder_unless_subset(ucm_copy):
    shutil.rmtree(ucm_copy / "UCMerced_LandUse" / "Images" / "river")
    with pytest.raises(DatasetNotFoundError, match=r"UCMerced_LandUse/Images/river"):
        ucmerced.list_images(ucm_copy)
    assert len(ucmerced.list_images(ucm_copy, classes=["forest", "beach"])) == 4


def test_stray_and_hidden_files(ucm_copy):
    forest = ucm_copy / "UCMerced_LandUse" / "Images" / "forest"
    (forest / ".DS_Store").write_bytes(b"")
    assert len(ucmerced.list_images(ucm_copy)) == 42
    (forest / "forest7.tif").write_bytes(b"")
    with pytest.raises(CorruptFileError, match=r"forest7\.tif.*forestNN\.tif"):
        ucmerced.list_images(ucm_copy)


def test_empty_class_folder(ucm_copy):
    for f in (ucm_copy / "UCMerced_LandUse" / "Images" / "beach").iterdir():
        f.unlink()
    with pytest.raises(DatasetNotFoundError, match=r"images in UCMerced_LandUse/Images/beach"):
        ucmerced.list_images(ucm_copy)


def test_writer_rejects_impossible_counts(tmp_path):
    with pytest.raises(ConfigError, match="n_per_class=101"):
        synth_ucmerced.write(tmp_path, n_per_class=101)
