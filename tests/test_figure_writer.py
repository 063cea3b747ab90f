"""studies.base.figure_writer: the one writer every study registers passes each kind of output its files."""

from __future__ import annotations

import sys
import types

import pytest

from vitlocal.studies.base import SUFFIXES, figure_writer


@pytest.fixture
def package(monkeypatch):
    calls = []
    figures = types.ModuleType("fakestudy.figures")
    for name in ("fig", "tab", "both", "whole"):
        setattr(figures, name, lambda *args, _n=name, **kwargs: calls.append((_n, args, kwargs)) or _n)
    monkeypatch.setitem(sys.modules, "fakestudy", types.ModuleType("fakestudy"))
    monkeypatch.setitem(sys.modules, "fakestudy.figures", figures)
    return calls


def out(kind):
    return {s: f"o.{s}" for s in SUFFIXES[kind]}


def test_each_kind_gets_its_files_in_the_writers_order(package):
    rows, config = object(), {"subsets": {"cityscapes": {"main_train_set": "set4"}}}
    figure_writer("fakestudy", "fig")(rows, out("figure"), config)
    figure_writer("fakestudy", "tab")(rows, out("table"), config)
    figure_writer("fakestudy", "both")(rows, out("figure+table"), config)
    figure_writer("fakestudy", "whole", whole_out=True)(rows, out("figure"), config)
    figure_writer("fakestudy", "fig", options=lambda c: {"clean_train_set": c["subsets"]["cityscapes"]["main_train_set"]})(
        rows, out("figure"), config)
    assert package == [
        ("fig", (rows, "o.pdf", "o.png", "o.csv"), {}),
        ("tab", (rows, "o.csv", "o.tex"), {}),
        ("both", (rows, "o.csv", "o.tex", "o.pdf", "o.png"), {}),
        ("whole", (rows, out("figure"), config), {}),
        ("fig", (rows, "o.pdf", "o.png", "o.csv"), {"clean_train_set": "set4"}),
    ]
