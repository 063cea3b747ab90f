"""The house rules: no module imports from a layer above it, bench scripts form no circle, no file over 650 lines.

``LAYERS`` is the declared order (lowest first), the same list as the fenced
``layers`` block of docs/ARCHITECTURE.md (checked below, so the two cannot
drift). A module belongs to the longest group that prefixes its name; it may
import its own group and any group of a lower layer, never a peer group of
its own layer nor anything above. Function-level (lazy) imports count: they
are arrows all the same.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
SRC = PROJECT / "src"

#: Lowest first; one line = one layer, its groups are peers (they may not import one another).
LAYERS: list[list[str]] = [
    ["vitlocal", "vitlocal.errors", "vitlocal.heap", "vitlocal.workflow", "vitlocal.published"],
    ["vitlocal.io", "vitlocal.tiling"],
    ["vitlocal.datasets"],
    ["vitlocal.synthetic"],
    ["vitlocal.models"],
    ["vitlocal.config"],
    ["vitlocal.subsets", "vitlocal.layout"],
    ["vitlocal.features"],
    ["vitlocal.denoise"],
    ["vitlocal.probes"],
    ["vitlocal.reproduction"],
    ["vitlocal.evaluation"],
    ["vitlocal.plotting"],
    ["vitlocal.studies.base"],
    ["vitlocal.studies.probing", "vitlocal.studies.variance", "vitlocal.studies.retrieval",
     "vitlocal.studies.tracking", "vitlocal.studies.scene"],
    ["vitlocal.studies.dvt"],
    ["vitlocal.studies"],
    ["vitlocal.studies.runner"],
    ["vitlocal.studies.outputs"],
    ["vitlocal.paper"],
]

MAX_LINES = 650
SKIP_DIRS = {".venv", ".git", ".snakemake", "results", "resources", "node_modules", "build", "__pycache__"}


def module_name(path: Path, root: Path = SRC) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules(root: Path = SRC) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted((root / "vitlocal").rglob("*.py"))}


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """Every ``vitlocal`` module ``path`` imports, relative imports resolved, ``from pkg import submodule`` seen."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    return {m for m in found if m == "vitlocal" or m.startswith("vitlocal.")}


def group_of(module: str) -> tuple[int, str] | None:
    """(layer index, group) of the longest declared group that prefixes ``module`` (``vitlocal``: itself only)."""
    best = None
    for index, groups in enumerate(LAYERS):
        for group in groups:
            inside = module.startswith(group + ".") and group != "vitlocal"
            if (module == group or inside) and (best is None or len(group) > len(best[1])):
                best = (index, group)
    return best


def layer_violations(root: Path = SRC) -> list[str]:
    modules = package_modules(root)
    known = set(modules)
    problems = []
    for name, path in modules.items():
        own = group_of(name)
        if own is None:
            problems.append(f"{path}: module {name} is in no layer (add its package to LAYERS and docs/ARCHITECTURE.md)")
            continue
        for target in sorted(imports_of(path, name, known)):
            other = group_of(target)
            if other is None:
                problems.append(f"{path}: imports {target}, which is in no layer")
            elif other[1] != own[1] and other[0] >= own[0]:
                where = "a peer of its own layer" if other[0] == own[0] else f"layer {other[0]}, above its {own[0]}"
                problems.append(f"{path}: {name} ({own[1]}) imports {target} ({other[1]}: {where})")
    return problems


def bench_cycles(bench: Path = PROJECT / "bench") -> list[list[str]]:
    """Import circles among the bench scripts (each imports the others by their bare file name)."""
    scripts = {p.stem: p for p in bench.glob("*.py")}
    graph = {}
    for stem, path in scripts.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                deps.add(node.module.split(".")[0])
        graph[stem] = sorted(d for d in deps if d in scripts and d != stem)
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for dep in graph[node]:
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


def long_files(root: Path = PROJECT) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        if SKIP_DIRS & set(path.relative_to(root).parts):
            continue
        n = len(path.read_text().splitlines())
        if n > MAX_LINES:
            out.append(f"{path.relative_to(root)}: {n} lines")
    return out


def test_no_module_imports_from_a_layer_above_it():
    assert layer_violations() == []


def test_no_bench_import_circle():
    assert bench_cycles() == []


def test_no_python_file_over_650_lines():
    assert long_files() == []


def test_architecture_md_declares_the_same_layers():
    text = (PROJECT / "docs" / "ARCHITECTURE.md").read_text()
    block = re.search(r"```layers\n(.*?)```", text, re.S)
    assert block, "docs/ARCHITECTURE.md: no ```layers block"
    declared = [[g.strip().strip("`") for g in line.split(":", 1)[1].split(",")]
                for line in block.group(1).strip().splitlines()]
    assert declared == LAYERS


# ---- the checker itself, on hand-built packages whose answer is known


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / "vitlocal" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_checker_sees_an_upward_import_even_inside_a_function(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "", "errors.py": "", "probes/__init__.py": "",
        "probes/knn.py": "def f():\n    from ..studies import STUDIES\n",
        "studies/__init__.py": "from ..probes import knn\n",
    })
    problems = layer_violations(root)
    assert len(problems) == 1 and "vitlocal.probes.knn" in problems[0] and "imports vitlocal.studies" in problems[0]


def test_checker_sees_a_peer_import_and_an_undeclared_module(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "", "studies/__init__.py": "",
        "studies/probing/__init__.py": "from ..variance import compute\n",
        "studies/variance/__init__.py": "", "studies/variance/compute.py": "",
        "attic.py": "",
    })
    problems = layer_violations(root)
    assert any("vitlocal.studies.variance.compute" in p and "peer" in p for p in problems)
    assert any("vitlocal.attic" in p and "no layer" in p for p in problems)


@pytest.mark.parametrize("edges, circle", [
    ({"a": "import b\n", "b": "from c import x\n", "c": "import a\n"}, True),
    ({"a": "import b\n", "b": "from c import x\n", "c": "import os\n"}, False),
])
def test_bench_cycle_finder(tmp_path, edges, circle):
    for stem, text in edges.items():
        (tmp_path / f"{stem}.py").write_text(text)
    assert bool(bench_cycles(tmp_path)) is circle
