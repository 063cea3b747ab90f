"""Every planted-bug list still plants its bugs: a refactor that moves a line must move its mutant too.

bench/mutate.py reports a mutant whose ``find`` text is not in its file exactly once as invalid and
skips it, so a list can silently lose mutants; this catches that before a mutation run does.
"""

from __future__ import annotations

import pytest
import yaml

from conftest import PROJECT

LISTS = sorted((PROJECT / "bench" / "mutants").glob("*.yaml"))


@pytest.mark.parametrize("path", LISTS, ids=[p.stem for p in LISTS])
def test_every_mutant_finds_its_text_exactly_once(path):
    spec = yaml.safe_load(path.read_text())
    assert spec["mutants"], f"{path.name}: no mutants"
    for test in spec["tests"]:
        assert (PROJECT / test.split("::")[0]).is_file(), f"{path.name}: test file {test} does not exist"
    for mutant in spec["mutants"]:
        text = (PROJECT / mutant["file"]).read_text()
        assert text.count(mutant["find"]) == 1, (
            f"{path.name}: mutant {mutant['id']}: {mutant['find']!r} occurs {text.count(mutant['find'])} times "
            f"in {mutant['file']}")
        assert mutant["replace"] != mutant["find"], f"{path.name}: mutant {mutant['id']} changes nothing"
