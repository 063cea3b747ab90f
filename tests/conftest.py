"""Shared fixtures: paths of the project and its two configs; the bench scripts as modules."""

from __future__ import annotations

import copy
import importlib
import sys
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


def bench_module(name: str):
    """``bench/<name>.py`` imported as a module (the bench scripts import each other as top-level modules)."""
    sys.path.insert(0, str(PROJECT / "bench"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(PROJECT / "bench"))
