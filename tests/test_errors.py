"""Errors a new user meets first: each names the cause and the way out."""

from __future__ import annotations

import time

import pytest
import yaml

from vitlocal.config import check_dataset_roots
from vitlocal.datasets import ade20k, fair1m, resisc45, ucmerced
from vitlocal.errors import ConfigError, DatasetNotFoundError, WeightsNotFoundError
from vitlocal.models.registry import ModelSpec
from vitlocal.models.weights import download
from vitlocal.synthetic import generate

from test_ade20k import _hand_made
from test_config import PROJECT


def test_fair1m_images_smaller_than_the_crop_stop_with_the_cause(tmp_path):
    root = generate("fair1m", tmp_path, size="tiny", seed=0)
    with pytest.raises(ConfigError, match=r"subset would be empty; \d+ of \d+ images are smaller than the "
                                          r"4096-px crop .*lower subsets.fair1m.crop_size"):
        fair1m.select_crops(root, "train", per_class=1, crop_size=4096)


def test_ade20k_says_which_classes_are_missing_and_which_exhausted(tmp_path):
    root = _hand_made(tmp_path, [{1, 2}])  # class 2 takes the only image; class 1 has none left
    with pytest.warns(ade20k.TooFewCandidatesWarning) as caught:
        ade20k.select_subset(root, "training", per_class=1, pool_last=None)
    message = str(caught[0].message)
    assert "no image for 148 classes (Idx [3, 4," in message and "in no mask of the pool" in message
    assert "no image left for 1 classes (Idx [1]): every image holding them was taken by a class drawn earlier" in message


@pytest.mark.parametrize("module,present", [(ucmerced, ["airplane", "beach"]), (resisc45, ["airplane"])])
def test_missing_class_folders_are_counted_and_point_to_classes(tmp_path, module, present):
    for name in present:
        (tmp_path.joinpath(*module.LAYOUT.folder) / name).mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError) as err:
        module.list_images(tmp_path)
    message = str(err.value)
    n = len(module.CLASSES)
    assert f"{n - len(present)} of {n} class folders" in message and "more)" in message
    assert f"pass classes={present!r} to list_images" in message


def test_every_missing_dataset_root_is_listed_before_any_job(tmp_path):
    config = yaml.safe_load((PROJECT / "config.yaml").read_text())
    (tmp_path / config["datasets"]["mot17"]["root"]).mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError) as err:
        check_dataset_roots(config, tmp_path)
    message = str(err.value)
    assert message.startswith("6 configured dataset(s) not found; nothing was run.")
    for name in ("cityscapes", "ade20k", "fair1m", "bdd100k", "ucmerced", "resisc45"):
        assert f"datasets.{name}: " in message
    assert "datasets.mot17" not in message
    assert "https://www.cityscapes-dataset.com/downloads/" in message and "leftImg8bit" in message
    demo = yaml.safe_load((PROJECT / "config" / "demo.yaml").read_text())
    check_dataset_roots(demo, tmp_path)  # synthetic data: made by the workflow


def test_unresolvable_host_is_final_not_retried(tmp_path):
    spec = ModelSpec(key="m", arch="vit_tiny_patch16_224", weights="url", url="http://vitlocal-weights.invalid/c.pth",
                     checkpoint_format="ibot", filename="c.pth")
    start = time.monotonic()
    with pytest.raises(WeightsNotFoundError, match=r"host name does not resolve.*place it at .*m/c\.pth"):
        download(spec, tmp_path, retries=3, backoff=30)
    assert time.monotonic() - start < 10  # no backoff: three attempts would wait 90 s
