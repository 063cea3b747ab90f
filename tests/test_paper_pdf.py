"""The paper with a real LaTeX: a rerun after a failed build, a first page that is not blank, every output inside.

CI builds `snakemake paper` for the demo and runs this file with
VITLOCAL_PDF=results/demo/paper/main.pdf (the results it was built from:
VITLOCAL_RESULTS, default the PDF's results/<preset>); without it a partial
build is made here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitlocal.paper import LatexBuildError, build_paper, staged_files
from vitlocal.studies import OUTPUTS

PROJECT = Path(__file__).resolve().parents[1]
MAIN_TEX = PROJECT / "paper" / "main.tex"
GIVEN_PDF = os.environ.get("VITLOCAL_PDF")
GIVEN_RESULTS = os.environ.get("VITLOCAL_RESULTS")

needs_latexmk = pytest.mark.skipif(shutil.which("latexmk") is None, reason="latexmk not installed")


def demo_results(root: Path) -> Path:
    (root / "figures" / "table2").mkdir(parents=True)
    (root / "figures" / "table2" / "table2.tex").write_text(
        "\\begin{tabular}{lr}\\toprule model & mIoU\\\\\\midrule dino & 0.1\\\\\\bottomrule\\end{tabular}\n")
    return root


@needs_latexmk
def test_rerun_after_a_failed_build_makes_the_pdf(tmp_path, monkeypatch):
    # As with a missing lmodern: the first build fails on a package that is
    # not installed, nothing in the build directory changes, the package is
    # installed (here: put on TEXINPUTS), and the rerun must compile.
    main = tmp_path / "main.tex"
    main.write_text(MAIN_TEX.read_text().replace(r"\usepackage{graphicx}", "\\usepackage{graphicx}\n\\usepackage{vltestpkg}"))
    results = demo_results(tmp_path / "results")
    monkeypatch.setenv("TEXINPUTS", f"{tmp_path / 'empty'}:")
    with pytest.raises(LatexBuildError, match=r"vltestpkg\.sty' not found"):
        build_paper("demo", results, tmp_path / "build", "synthetic", "random", main)
    packages = tmp_path / "packages"
    packages.mkdir()
    (packages / "vltestpkg.sty").write_text("\\ProvidesPackage{vltestpkg}\n")
    monkeypatch.setenv("TEXINPUTS", f"{packages}:")
    pdf = build_paper("demo", results, tmp_path / "build", "synthetic", "random", main)
    assert pdf.read_bytes().startswith(b"%PDF")


def first_page(pdf: Path, tmp_path: Path) -> np.ndarray:
    subprocess.run(["pdftoppm", "-f", "1", "-l", "1", "-r", "40", "-png", "-singlefile", str(pdf),
                    str(tmp_path / "page")], check=True)
    return np.asarray(Image.open(tmp_path / "page.png").convert("RGB"))


@pytest.mark.skipif(shutil.which("pdftoppm") is None and not GIVEN_PDF, reason="pdftoppm (poppler-utils) not installed")
def test_first_page_is_not_blank(tmp_path):
    if GIVEN_PDF:
        pdf = Path(GIVEN_PDF)
        assert pdf.is_file(), f"VITLOCAL_PDF={GIVEN_PDF}: no such file"
    elif shutil.which("latexmk"):
        pdf = build_paper("demo", demo_results(tmp_path / "results"), tmp_path / "build", "synthetic", "random", MAIN_TEX)
    else:
        pytest.skip("latexmk not installed")
    page = first_page(pdf, tmp_path)
    ink = (page < 200).any(axis=2).mean()
    assert ink > 0.01, f"page 1 of {pdf} is blank ({ink:.2%} ink)"
    red = (page[..., 0] > 150) & (page[..., 1] < 100) & (page[..., 2] < 100)
    assert red.any(), f"page 1 of {pdf} has no red DEMO banner"


def built_outputs(results: Path) -> list[str]:
    """Registered outputs with an includable file under ``results``/figures: each must be in the PDF."""
    figures = results / "figures"
    return [name for name in OUTPUTS if staged_files(figures, name)]


def pdf_text(pdf: Path) -> str:
    done = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], check=True, capture_output=True, text=True)
    return "".join(done.stdout.split())  # line breaks and spacing differ from the source


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="pdftotext (poppler-utils) not installed")
def test_every_built_output_is_in_the_pdf(tmp_path):
    if GIVEN_PDF:
        pdf = Path(GIVEN_PDF)
        results = Path(GIVEN_RESULTS) if GIVEN_RESULTS else pdf.resolve().parents[1]
    elif shutil.which("latexmk"):
        results = demo_results(tmp_path / "results")
        (results / "figures" / "fig1").mkdir()
        Image.new("RGB", (40, 20), "blue").save(results / "figures" / "fig1" / "fig1.png")
        pdf = build_paper("demo", results, tmp_path / "build", "synthetic", "random", MAIN_TEX)
    else:
        pytest.skip("latexmk not installed")
    built = built_outputs(results)
    assert built, f"{results}/figures: no built output to look for"
    text = pdf_text(pdf)
    absent = [name for name in built if f"[{name}]" not in text]
    assert not absent, f"{pdf}: built outputs missing from the PDF: {', '.join(absent)}"
