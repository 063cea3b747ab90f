"""envs/lock.txt and envs/*.yaml against pyproject.toml (.ci/envlock.py): the two cannot drift."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("envlock", PROJECT / ".ci" / "envlock.py")
envlock = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(envlock)

ALL = sorted({n for _, names in envlock.ENVS.values() for n in names})


def test_the_repository_lock_agrees_with_pyproject_and_the_envs():
    assert envlock.drift() == []


def project(tmp_path: Path, dependencies: list[str], lock: dict[str, str], *, envs: bool = True) -> Path:
    deps = ",\n".join(f'    "{d}"' for d in dependencies)
    (tmp_path / "pyproject.toml").write_text(f'[project]\nname = "x"\ndependencies = [\n{deps}\n]\n')
    (tmp_path / "envs").mkdir()
    (tmp_path / "envs" / "lock.txt").write_text(envlock.lock_text(lock))
    if envs:
        for env in envlock.ENVS:
            (tmp_path / "envs" / f"{env}.yaml").write_text(envlock.env_text(env, lock))
    return tmp_path


def test_a_consistent_hand_built_project_has_no_drift(tmp_path):
    root = project(tmp_path, [f"{n}>=1" for n in ALL], {n: "1.2" for n in ALL})
    assert envlock.drift(root) == []


@pytest.mark.parametrize("change, expected", [
    (lambda deps, lock: deps.append("newpkg>=2"), "newpkg is required by pyproject.toml (newpkg>=2) but not pinned"),
    (lambda deps, lock: lock.update(stale="0.1"), "stale==0.1 is not a requirement of pyproject.toml"),
    (lambda deps, lock: lock.update(numpy="0.9"), "numpy==0.9 violates pyproject.toml's numpy>=1"),
])
def test_drift_between_pyproject_and_the_lock_is_named(tmp_path, change, expected):
    deps, lock = [f"{n}>=1" for n in ALL], {n: "1.2" for n in ALL}
    change(deps, lock)
    root = project(tmp_path, deps, lock)
    assert any(expected in p for p in envlock.drift(root)), envlock.drift(root)


def test_an_env_file_edited_by_hand_is_drift(tmp_path):
    root = project(tmp_path, [f"{n}>=1" for n in ALL], {n: "1.2" for n in ALL})
    path = root / "envs" / "torch.yaml"
    path.write_text(path.read_text().replace("torch==1.2", "torch"))
    assert envlock.drift(root) == [f"envs/torch.yaml: differs from what {envlock.LOCK} generates; "
                                   "run `python .ci/envlock.py write`"]


def test_lock_lines_must_be_pins(tmp_path):
    (tmp_path / "lock.txt").write_text("numpy>=1\n")
    with pytest.raises(SystemExit, match=r"lock.txt:1: 'numpy>=1' is not name==version"):
        envlock.read_lock(tmp_path / "lock.txt")
