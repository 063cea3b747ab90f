"""Paper builder: staging, preset.tex, the registry's outputs.tex, LaTeX detection and invocation."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vitlocal import paper
from vitlocal.paper import (
    INSTALL_COMMAND,
    LatexNotFoundError,
    build_paper,
    caption_tex,
    latex_escape,
    missing_figures,
    outputs_tex,
    paper_outputs,
    preset_tex,
    stage_paper,
    unregistered_outputs,
)
from vitlocal.studies import OUTPUTS, Output, Study

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
        "main.tex", "preset.tex", "outputs.tex", "figures/fig1/fig1.pdf", "figures/table2/table2.tex", "figures/fig13/fig13.png",
    }
    assert (build / "main.tex").read_text() == MAIN_TEX.read_text()
    preset = (build / "preset.tex").read_text()
    assert r"\newcommand{\presetname}{demo}" in preset
    assert r"\newcommand{\datasource}{synthetic}" in preset
    assert ("DEMO OUTPUT — synthetic data and random weights. These numbers are not results of the study "
            "and are not comparable to the published ones.") in preset
    assert r"\newcommand{\demotag}{\textcolor{red}{(DEMO: synthetic data and random weights)}}" in preset
    assert missing_figures(build) == [i for _, i in paper_outputs() if i not in ("fig1", "table2", "fig13")]


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
    # Table 5's "tracking Δ=1" column: pdflatex stops on a Unicode character it has no glyph for
    assert latex_escape("Δ=1, 10° × 0.8, R²") == r"$\Delta$=1, 10$^\circ$ $\times$ 0.8, R$^2$"


def test_stage_without_results_and_with_bad_arguments(tmp_path):
    build = stage_paper("demo", tmp_path / "nothing", tmp_path / "build", "official", "random", MAIN_TEX)
    assert (build / "figures").is_dir() and missing_figures(build) == [i for _, i in paper_outputs()]
    assert (build / "outputs.tex").read_text().count(r"\vl") == 0
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


def test_main_tex_lists_no_output_by_hand():
    text = MAIN_TEX.read_text()
    assert r"\input{preset.tex}" in text and r"\demobanner" in text
    body = text.split(r"\begin{document}")[1]
    assert r"\input{outputs.tex}" in body
    assert not re.search(r"\\vl(?:figure|table)\{", body), "an output typed into main.tex by hand"
    assert not any(line.lstrip().startswith("%") for line in body.splitlines()), "commented-out block in main.tex"


def floats(tex: str) -> list[tuple[str, str]]:
    return re.findall(r"\\vl(figure|table)\{(\w+)\}", tex)


def test_outputs_tex_holds_every_staged_output_in_paper_order_with_its_title(tmp_path):
    figures = tmp_path / "figures"
    for name, suffixes in {"fig13": [".png"], "table2": [".tex", ".csv"], "fig1": [".pdf", ".png", ".csv"],
                           "top_dims_overlap": [".tex", ".png"], "fig8": [".pdf"], "fig99": [".pdf"],
                           "fig6": [".csv"]}.items():
        (figures / name).mkdir(parents=True)
        for suffix in suffixes:
            (figures / name / f"{name}{suffix}").write_bytes(b"x")
    tex, included = outputs_tex(figures)
    # Paper order: Section 3 (registration order fig1, table2, fig13), Section 4, ..., Section 6 (tracking).
    assert included == ["fig1", "table2", "fig13", "top_dims_overlap", "fig8"]
    assert floats(tex) == [("figure", "fig1"), ("table", "table2"), ("figure", "fig13"),
                           ("figure", "top_dims_overlap"), ("table", "top_dims_overlap"), ("figure", "fig8")]
    assert r"\vlfigure{fig1}{figures/fig1/fig1.pdf}{k-NN vs linear mIoU by train-set size (Fig 1)}" in tex
    assert r"\vlfigure{fig13}{figures/fig13/fig13.png}" in tex
    assert r"\vlfigure{fig8}{figures/fig8/fig8.pdf}{Tracking on BDD100K: nearest object at t + $\Delta$ (Fig 8)}" in tex
    sections = re.findall(r"\\section\{([^}]*)\}", tex)
    assert sections == [paper.SECTIONS["probing"], paper.SECTIONS["variance"], paper.SECTIONS["tracking"]]
    assert "fig99" not in tex and "fig6" not in tex  # unknown to the registry; a CSV alone is not includable
    build = tmp_path
    assert unregistered_outputs(build) == ["fig99"]
    assert "fig6" in missing_figures(build) and "fig1" not in missing_figures(build)


def test_a_new_study_enters_the_paper_without_editing_latex(tmp_path, monkeypatch):
    study = Study("newstudy", {}, {"fig_new": Output("figure", title="A new result (Fig 99)")})
    monkeypatch.setattr(paper, "STUDIES", {**paper.STUDIES, "newstudy": study})
    monkeypatch.setattr(paper, "OUTPUTS", {**paper.OUTPUTS, "fig_new": study.outputs["fig_new"]})
    monkeypatch.setattr(paper, "STUDY_OF", {**paper.STUDY_OF, "fig_new": "newstudy"})
    (tmp_path / "fig_new").mkdir()
    (tmp_path / "fig_new" / "fig_new.png").write_bytes(b"x")
    tex, included = outputs_tex(tmp_path)
    assert included == ["fig_new"]
    assert r"\section{newstudy}" in tex and r"\vlfigure{fig_new}{figures/fig_new/fig_new.png}{A new result (Fig 99)}" in tex


def test_every_registered_title_is_a_caption_pdflatex_can_set():
    for name, out in OUTPUTS.items():
        assert out.title, f"{name}: no title, so no caption"
        assert caption_tex(out.title, name).isascii()
    assert caption_tex("R² of 50% × Δ_t", "x") == r"R\textsuperscript{2} of 50\% $\times$ $\Delta$\_t"
    with pytest.raises(ValueError, match=r"fig0: title .*pdflatex cannot set: ∞"):
        caption_tex("to ∞", "fig0")


@pytest.mark.skipif(shutil.which("latexmk") is None and shutil.which("pdflatex") is None, reason="no LaTeX here")
def test_partial_demo_build_compiles(tmp_path):
    results = tmp_path / "results"
    (results / "figures" / "table2").mkdir(parents=True)
    (results / "figures" / "table2" / "table2.tex").write_text(
        "\\begin{tabular}{lr}\\toprule model & mIoU\\\\\\midrule dino & 0.1\\\\\\bottomrule\\end{tabular}\n")
    pdf = build_paper("demo", results, tmp_path / "build", "synthetic", "random", MAIN_TEX)
    assert pdf.is_file() and pdf.read_bytes().startswith(b"%PDF")
