"""Table writers: the same numbers as CSV (for machines) and booktabs LaTeX (for the paper).

The LaTeX is a bare ``tabular`` because ``paper/main.tex`` wraps every table
in its own float with caption and label (``\\vltable``); ``float_env=True``
wraps it in a ``table`` float for use elsewhere. Hand-rolled rather than
``Styler.to_latex`` so the output does not change with the pandas version.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .base import DEFAULT_DEMO_SUBJECT, write_csv, write_text

_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                   "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                   # what our captions and column names write beyond T1's glyphs (pdflatex stops on the rest)
                   "Δ": r"$\Delta$", "×": r"$\times$", "°": r"$^\circ$", "²": r"$^2$", "±": r"$\pm$",
                   "≤": r"$\leq$", "≥": r"$\geq$"}

MISSING_CELL = "--"


def latex_escape(text: str) -> str:
    """``text`` as literal LaTeX (preset names may hold underscores)."""
    return "".join(_LATEX_SPECIALS.get(char, char) for char in text)


def demo_caption(caption: str, subject: str | None = None) -> str:
    return f"DEMO ({subject or DEFAULT_DEMO_SUBJECT}): {caption}"


def format_cell(value: object, float_format: str) -> str:
    """A LaTeX cell: floats with ``float_format``, NaN/None as ``--``, text escaped."""
    if value is None or (np.isscalar(value) and pd.isna(value)):
        return MISSING_CELL
    if isinstance(value, (float, np.floating)):
        return format(float(value), float_format)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    return latex_escape(str(value))


def to_latex(
    df: pd.DataFrame,
    *,
    float_format: str = ".3f",
    columns: Mapping[str, str] | None = None,
    align: str | None = None,
    size: str | None = None,
    demo_subject: str | None = None,
) -> str:
    """Booktabs ``tabular`` of ``df``; ``columns`` maps shown columns (in order) to their headers.

    Numeric columns are right-aligned, text left-aligned, unless ``align``
    (a LaTeX column spec) is given; ``size`` (e.g. ``"footnotesize"``) sets
    the font size. A demo table ends with a visible row saying its numbers
    are not results.
    """
    columns = dict(columns) if columns is not None else {c: str(c) for c in df.columns}
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"table columns {missing} not in the data (columns: {list(df.columns)})")
    if align is None:
        align = "".join("r" if pd.api.types.is_numeric_dtype(df[c]) else "l" for c in columns)
    lines = [rf"\{size}"] if size else []
    lines += [
        rf"\begin{{tabular}}{{{align}}}",
        r"\toprule",
        " & ".join(latex_escape(h) for h in columns.values()) + r" \\",
        r"\midrule",
    ]
    for row in df[list(columns)].itertuples(index=False):
        lines.append(" & ".join(format_cell(v, float_format) for v in row) + r" \\")
    lines.append(r"\bottomrule")
    if demo_subject is not None:
        note = latex_escape(demo_caption("not results of the study", demo_subject))
        lines.append(rf"\multicolumn{{{len(columns)}}}{{l}}{{\footnotesize\textit{{{note}}}}} \\")
    lines.append(r"\end{tabular}")
    return "\n".join(lines) + "\n"


def write_latex(
    df: pd.DataFrame,
    out_tex: str | Path,
    caption: str,
    label: str,
    float_format: str = ".3f",
    *,
    columns: Mapping[str, str] | None = None,
    align: str | None = None,
    size: str | None = None,
    demo: bool = False,
    demo_subject: str | None = None,
    float_env: bool = False,
) -> None:
    """Write ``df`` as a booktabs LaTeX table (see :func:`to_latex`), atomically.

    The file starts with comments giving caption and label; a demo table's
    caption is prefixed "DEMO (...)" and it carries a visible note row.
    """
    subject = (demo_subject or DEFAULT_DEMO_SUBJECT) if demo else None
    shown_caption = demo_caption(caption, subject) if demo else caption
    tabular = to_latex(df, float_format=float_format, columns=columns, align=align, size=size,
                       demo_subject=subject)
    header = [f"% {shown_caption}", f"% label: {label}"]
    if demo:
        header.insert(0, "% DEMO OUTPUT: synthetic data and/or random weights; these numbers are not results of the study.")
    if float_env:
        body = "\n".join([
            r"\begin{table}[htbp]", r"\centering",
            rf"\caption{{{latex_escape(shown_caption)}}}", rf"\label{{{label}}}",
            tabular.rstrip("\n"), r"\end{table}", "",
        ])
    else:
        body = tabular
    write_text("\n".join(header) + "\n" + body, out_tex)


def write_table(
    df: pd.DataFrame,
    out_csv: str | Path,
    out_tex: str | Path,
    caption: str,
    label: str,
    float_format: str = ".3f",
    **latex: Any,
) -> None:
    """Write ``df`` as CSV (every column, full precision) and as LaTeX (:func:`write_latex` options)."""
    write_csv(df, out_csv)
    write_latex(df, out_tex, caption, label, float_format, **latex)
