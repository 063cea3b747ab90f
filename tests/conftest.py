"""Shared fixtures: paths of the project and its two configs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[1]


def load_config(name: str) -> dict:
    with open(PROJECT / name) as fh:
        return yaml.safe_load(fh)


@pytest.fixture
def paper_config() -> dict:
    return copy.deepcopy(load_config("config.yaml"))


@pytest.fixture
def demo_config() -> dict:
    return copy.deepcopy(load_config("config/demo.yaml"))
