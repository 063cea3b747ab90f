"""Bad configs are caught with a message naming the key and what is allowed."""

from __future__ import annotations

import pytest
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from vitlocal.config import check_config, subset_names
from vitlocal.errors import ConfigError

from conftest import PROJECT

SCHEMA = str(PROJECT / "schemas" / "config.schema.yaml")


def validated(config: dict) -> dict:
    validate(config, SCHEMA)
    return config


def test_both_presets_validate_and_get_defaults(paper_config, demo_config):
    for config in (paper_config, demo_config):
        validated(config)
        check_config(config, PROJECT)
    # defaults filled in from the schema
    assert demo_config["probes"]["knn_metric"] == "dot"
    assert demo_config["subsets"]["cityscapes"]["main_train_set"] == "set4"
    assert paper_config["datasets"]["cityscapes"]["source"] == "official"
    assert demo_config["degradations"]["frequency_noise_sigma"] == 40
    assert demo_config["transforms"]["rotations"] == [10, 20]  # the demo's own two levels


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda c: c["probes"].update(knn_metrc="dot"), "'knn_metrc' was unexpected"),
        (lambda c: c.update(colour="red"), "'colour' was unexpected"),
        (lambda c: c["datasets"].update(cityscape={"root": "x"}), "'cityscape' was unexpected"),
        (lambda c: c["probes"].update(knn_metric="manhattan"), "'manhattan' is not one of"),
        (lambda c: c["extraction"].update(batch_size="big"), "'big' is not of type 'integer'"),
        (lambda c: c["degradations"].update(blur_kernels=[2, "4"]), "'4' is not of type 'integer'"),
    ],
)
def test_schema_rejects(paper_config, mutate, fragment):
    mutate(paper_config)
    with pytest.raises(WorkflowError, match=fragment):
        validated(paper_config)


def test_unknown_model_is_named_with_its_key(paper_config):
    paper_config["study_models"] = ["dino", "dinov3"]
    validated(paper_config)
    with pytest.raises(ConfigError, match=r"study_models\[1\] = 'dinov3'"):
        check_config(paper_config, PROJECT)


def test_user_model_needs_arch(paper_config):
    paper_config["models"] = {"my_vit": {"patch_size": 16}}
    validated(paper_config)
    with pytest.raises(ConfigError, match="models.my_vit"):
        check_config(paper_config, PROJECT)


def test_main_train_set_must_exist(paper_config):
    paper_config["subsets"] = {"cityscapes": {"main_train_set": "set16"}}
    validated(paper_config)
    with pytest.raises(ConfigError, match="main_train_set = 'set16'"):
        check_config(paper_config, PROJECT)


def test_missing_list_file(paper_config):
    paper_config["subsets"] = {"cityscapes": {"val_set": "nope.csv"}}
    validated(paper_config)
    with pytest.raises(ConfigError, match="nope.csv does not exist"):
        check_config(paper_config, PROJECT)


def test_frequency_band_order(paper_config):
    paper_config["degradations"]["frequency_bands"] = [[0.5, 0.4]]
    validated(paper_config)
    with pytest.raises(ConfigError, match=r"frequency_bands\[0\]"):
        check_config(paper_config, PROJECT)


def test_subset_names(paper_config):
    validated(paper_config)
    assert subset_names(paper_config, "cityscapes") == ["set2", "set4", "set4_prime", "set8", "val"]
    assert subset_names(paper_config, "ade20k") == ["train", "val"]
    assert subset_names(paper_config, "bdd100k") == ["val"]
