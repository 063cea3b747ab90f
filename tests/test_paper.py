"""Paper builder: staging, preset.tex, LaTeX detection and invocation."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vitlocal import paper
from vitlocal.paper import (
    FIGURES,
    INSTALL_COMMAND,
    LATER,
    LatexNotFoundError,
    build_paper,
    latex_escape,
    missing_figures,
    preset_tex,
    stage_paper,
)

PROJECT = Path(__file__).resolve().parents[1]
MAIN_TEX = PROJECT / "paper" / "main.tex"


def fake_results(root: Path) -> Path:
    """results/<preset> with one figure, one table, and files LaTeX cannot use."""
    (root / "figures" / "fig1").mkdir(parents=True)
    (root / "figures" / "fig1" / "fig1.pdf").write_bytes(b"%PDF-1.4 fig1")
    (root / "figures" / "fig1" / "fig1.csv").write_text("experiment,value\n")
    (root / "figures" / "table2").mkdir()
    (root / "figures" / "table2" / "table2.tex").write_text("\\begin{tabular}{l}x\\end{tabular}\n")
    (root / "figures" / "fig13").mkdir()
    (root / "figures" / "fig13" / "fig13.png").write_bytes(b"\x89PNG")
    return root


def staged_files(build: Path) -> set[str]:
    return {p.relative_to(build).as_posix() for p in build.rglob("*") if p.is_file()}


def test_stage_copies_includable_outputs_and_writes_preset(tmp_path):
    results = fake_results(tmp_path / "results" / "demo")
    build = stage_paper("demo", results, tmp_path / "build", "synthetic", "random", MAIN_TEX)
    assert staged_files(build) == {
        "main.tex", "preset.tex", "figures/fig1/fig1.pdf", "figures/table2/table2.tex", "figures/fig13/fig13.png",
    }
    assert (build / "main.tex").read_text() == MAIN_TEX.read_text()
    preset = (build / "preset.tex").read_text()
    assert r"\newcommand{\presetname}{demo}" in preset
    assert r"\newcommand{\datasource}{synthetic}" in preset
    assert ("DEMO OUTPUT — synthetic data and random weights. These numbers are not results of the study "
            "and are not comparable to the published ones.") in preset
    assert r"\newcommand{\demotag}{\textcolor{red}{(DEMO: synthetic data and random weights)}}" in preset
    assert missing_figures(build) == [i for i in FIGURES if i not in ("fig1", "table2", "fig13")]


def test_restaging_drops_outputs_removed_from_results(tmp_path):
    results = fake_results(tmp_path / "results")
    build = stage_paper("demo", results, tmp_path / "build", "synthetic", "random", MAIN_TEX)
    (results / "figures" / "fig1" / "fig1.pdf").unlink()
    stage_paper("demo", results, build, "synthetic", "random", MAIN_TEX)
    assert not (build / "figures" / "fig1" / "fig1.pdf").exists()
    assert (build / "figures" / "table2" / "table2.tex").exists()


def test_real_preset_has_empty_banner_and_escaped_name(tmp_path):
    text = preset_tex("paper_v2", "official", "official checkpoints")
    assert r"\newcommand{\presetname}{paper\_v2}" in text
    assert r"\newcommand{\demobanner}{}" in text and r"\newcommand{\demotag}{}" in text
    assert "DEMO" not in text
    assert latex_escape(r"a&b%c$d#e_f{g}~h^i\j") == (
        r"a\&b\%c\$d\#e\_f\{g\}\textasciitilde{}h\textasciicircum{}i\textbackslash{}j")


def test_stage_without_results_and_with_bad_arguments(tmp_path):
    build = stage_paper("demo", tmp_path / "nothing", tmp_path / "build", "official", "random", MAIN_TEX)
    assert (build / "figures").is_dir() and missing_figures(build) == list(FIGURES)
    assert "DEMO OUTPUT — random weights." in (build / "preset.tex").read_text()
    with pytest.raises(ValueError, match="data_source 'fake'"):
        stage_paper("demo", tmp_path, tmp_path / "b", "fake", "random", MAIN_TEX)
    with pytest.raises(FileNotFoundError, match="nope.tex: paper source not found"):
        stage_paper("demo", tmp_path, tmp_path / "b", "official", "x", tmp_path / "nope.tex")


def test_missing_latex_names_the_install_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    results = fake_results(tmp_path / "results" / "demo")
    with pytest.raises(LatexNotFoundError, match=re.escape(INSTALL_COMMAND)):
        build_paper("demo", results, tmp_path / "build", "synthetic", "random", MAIN_TEX)
    assert (tmp_path / "build" / "preset.tex").is_file()  # sources staged anyway
    status = paper.main(["--preset", "demo", "--data-source", "synthetic", "--weights", "random",
                         "--results", str(results), "--out", str(tmp_path / "b2"), "--main", str(MAIN_TEX)])
    assert status == 1
    err = capsys.readouterr().err
    assert "LaTeX not found" in err and f"sudo {INSTALL_COMMAND}" in err


@pytest.mark.parametrize("available,expected", [
    ({"latexmk", "pdflatex"}, [["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error", "main.tex"]]),
    ({"pdflatex"}, [["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "main.tex"]] * 2),
])
def test_compile_runs_latex_in_the_build_dir(tmp_path, monkeypatch, available, expected):
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}" if name in available else None)
    calls = []

    def fake_run(command, cwd, capture_output, text):
        calls.append((command, Path(cwd)))
        (Path(cwd) / "main.pdf").write_bytes(b"%PDF")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    pdf = build_paper("demo", fake_results(tmp_path / "r"), tmp_path / "build", "synthetic", "random", MAIN_TEX)
    assert pdf == tmp_path / "build" / "main.pdf"
    assert calls == [(c, tmp_path / "build") for c in expected]


def test_failed_latex_run_points_to_the_log(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/latexmk" if name == "latexmk" else None)
    monkeypatch.setattr(subprocess, "run", lambda command, **kw: subprocess.CompletedProcess(command, 12, "", ""))
    with pytest.raises(paper.LatexBuildError, match=r"exit 12\); see .*build/main\.log"):
        build_paper("demo", tmp_path, tmp_path / "build", "synthetic", "random", MAIN_TEX)


def test_main_tex_includes_every_figure_id_and_keeps_slots_for_the_rest():
    text = MAIN_TEX.read_text()
    assert r"\input{preset.tex}" in text and r"\demobanner" in text
    text = text.split(r"\begin{document}")[1]
    active = [m.group(1) for line in text.splitlines() if not line.lstrip().startswith("%")
              for m in re.finditer(r"\\vl(?:figure|table)\{(\w+)\}", line)]
    commented = [m.group(1) for line in text.splitlines() if line.lstrip().startswith("%")
                 for m in re.finditer(r"\\vl(?:figure|table)\{(\w+)\}", line)]
    assert active == list(FIGURES)
    assert sorted(commented) == sorted(LATER)


@pytest.mark.skipif(shutil.which("latexmk") is None and shutil.which("pdflatex") is None, reason="no LaTeX here")
def test_partial_demo_build_compiles(tmp_path):
    results = tmp_path / "results"
    (results / "figures" / "table2").mkdir(parents=True)
    (results / "figures" / "table2" / "table2.tex").write_text(
        "\\begin{tabular}{lr}\\toprule model & mIoU\\\\\\midrule dino & 0.1\\\\\\bottomrule\\end{tabular}\n")
    pdf = build_paper("demo", results, tmp_path / "build", "synthetic", "random", MAIN_TEX)
    assert pdf.is_file() and pdf.read_bytes().startswith(b"%PDF")
