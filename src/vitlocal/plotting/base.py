"""One style for every figure, and writers that make outputs atomic and reproducible.

Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg
backend (no display, no global pyplot state), inside :func:`style`. Each
model keeps one colour and one label across all figures. :func:`save_figure`
writes PDF (vector) and PNG (150 dpi) through a temporary name and
``os.replace``, so an interrupted run never leaves a half-written figure that
Snakemake would take as done, and with fixed metadata, so reruns are
byte-identical. Demo outputs get a banner stamped across the figure.
"""

from __future__ import annotations

import contextlib
import re
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.colors as mcolors  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ..io import atomic_output  # noqa: E402  (re-exported: the writers below and the studies' figures)
from ..reproduction import demo_subject  # noqa: E402

PNG_DPI = 150

#: The study's models in its order; colours are matplotlib's C0..C4 as in the authors' notebooks.
MODEL_LABELS: dict[str, str] = {
    "supervised": "Supervised",
    "dino": "DINO",
    "dinov2": "DINOv2",
    "mae": "MAE",
    "simmim": "SimMIM",
    "ibot": "iBOT",
    "scalemae": "Scale-MAE",
}
MODEL_COLOURS: dict[str, str] = {
    "supervised": "#1f77b4",
    "dino": "#ff7f0e",
    "dinov2": "#2ca02c",
    "mae": "#d62728",
    "simmim": "#9467bd",
    "ibot": "#8c564b",
    "scalemae": "#e377c2",
}
#: Colours left for models we do not know, picked by a hash of the key (stable across runs and inputs).
EXTRA_COLOURS: tuple[str, ...] = (
    "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173",
    "#3182bd", "#e6550d", "#31a354", "#756bb1",
)
PROBE_LABELS = {"knn": "k-NN", "linear": "linear"}
PROBE_LINESTYLES = {"knn": "-", "linear": "--"}
PROBE_MARKERS = {"knn": "o", "linear": "s"}

DEFAULT_DEMO_SUBJECT = "synthetic data, random weights"

#: Matplotlib settings every figure is drawn and saved with.
STYLE: dict[str, object] = {
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.5,
    "lines.markersize": 4,
    "savefig.bbox": "standard",
    "svg.hashsalt": "vitlocal",
    "pdf.fonttype": 42,
}

_VARIANT = re.compile(r"^(?P<base>.+)-(?P<m>\d+)$")


@contextlib.contextmanager
def style() -> Iterator[None]:
    """Draw and save inside this context so every figure looks the same."""
    with matplotlib.rc_context(STYLE):
        yield


def new_figure(width: float, height: float) -> Figure:
    """A pyplot-free figure (nothing leaks between figures of one process)."""
    return Figure(figsize=(width, height), layout="constrained")


def model_label(model: str) -> str:
    """Display name: known models by name, ``mae-200`` -> ``MAE-200``, others unchanged."""
    if model in MODEL_LABELS:
        return MODEL_LABELS[model]
    variant = _VARIANT.match(model)
    if variant and variant["base"] in MODEL_LABELS:
        return f"{MODEL_LABELS[variant['base']]}-{variant['m']}"
    return model


def model_colour(model: str) -> str:
    """Fixed colour of a known model; a lighter shade for its ``-<m>`` variant; a hashed one otherwise."""
    if model in MODEL_COLOURS:
        return MODEL_COLOURS[model]
    variant = _VARIANT.match(model)
    if variant and variant["base"] in MODEL_COLOURS:
        rgb = mcolors.to_rgb(MODEL_COLOURS[variant["base"]])
        return mcolors.to_hex(tuple(0.55 * c + 0.45 for c in rgb))
    return EXTRA_COLOURS[zlib.crc32(model.encode("utf-8")) % len(EXTRA_COLOURS)]


def model_order(models: Iterable[str]) -> list[str]:
    """The study's order first, then other models (and variants) alphabetically."""
    known = list(MODEL_LABELS)

    def key(model: str) -> tuple[int, str]:
        base = _VARIANT.match(model)
        root = base["base"] if base and model not in known else model
        return (known.index(root) if root in known else len(known), model)

    return sorted(set(models), key=key)


def provenance_subtitle(df: pd.DataFrame) -> str:
    """``preset X · 1-NN similarity: dot``: what every figure must state about its numbers."""
    parts = []
    presets = _distinct(df, "preset")
    if presets:
        parts.append("preset " + ", ".join(presets))
    metrics = _distinct(df, "knn_metric")
    if metrics and "knn" in set(df.get("probe", pd.Series(dtype=str))):
        parts.append("k-NN similarity: " + ", ".join(metrics))
    return " · ".join(parts)


def demo_subject_of(df: pd.DataFrame) -> str | None:
    """Why these rows are demo numbers ("synthetic data", "random weights"), or None.

    Uses the provenance columns ``data`` and ``weights`` (see
    :func:`vitlocal.reproduction.demo_subject`); several data sources count as
    "mixed", i.e. demo.
    """
    sources = _distinct(df, "data")
    if not sources:
        return None
    data = sources[0] if len(sources) == 1 else "mixed"
    return demo_subject(data, " ".join(_distinct(df, "weights")))


def demo_banner_text(subject: str | None = None) -> str:
    return f"DEMO — {subject or DEFAULT_DEMO_SUBJECT}:\nnot results of the study"


def stamp_demo(fig: Figure, subject: str | None = None) -> None:
    """Write the demo banner diagonally across the whole figure (gid ``demo-banner``), sized to fit it."""
    text = demo_banner_text(subject)
    longest = max(len(line) for line in text.splitlines())
    width_pt = fig.get_figwidth() * 72
    fontsize = min(16.0, 0.8 * width_pt / (0.62 * longest))
    fig.text(
        0.5, 0.5, text, transform=fig.transFigure, ha="center", va="center", multialignment="center",
        rotation=12, fontsize=fontsize, fontweight="bold", color="#c00000", alpha=0.45, zorder=1000,
        gid="demo-banner", bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.35, "edgecolor": "#c00000"},
    )


def has_demo_banner(fig: Figure) -> bool:
    return any(text.get_gid() == "demo-banner" for text in fig.texts)


def write_text(text: str, path: str | Path) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_csv(df: pd.DataFrame, path: str | Path) -> None:
    """CSV with full float precision, ``\\n`` line ends, no index: numbers read back equal."""
    with atomic_output(path) as tmp:
        df.to_csv(tmp, index=False, lineterminator="\n")


def save_figure(
    fig: Figure, out_pdf: str | Path, out_png: str | Path, *, demo: bool, demo_subject: str | None = None
) -> None:
    """Write PDF and PNG atomically, byte-identical across reruns; stamp the banner when ``demo``."""
    if demo and not has_demo_banner(fig):
        stamp_demo(fig, demo_subject)
    with style():
        with atomic_output(out_pdf) as tmp:
            fig.savefig(tmp, format="pdf", metadata={"CreationDate": None, "ModDate": None})
        # The PNG keeps the PDF's layout: a layout engine would run again for it (a third of a many-panel
        # figure's drawing time).
        if fig.get_layout_engine() is not None:
            fig.set_layout_engine("none")
        with atomic_output(out_png) as tmp:
            fig.savefig(tmp, format="png", dpi=PNG_DPI, metadata={"Software": None})


def _distinct(df: pd.DataFrame, column: str) -> list[str]:
    if column not in df.columns:
        return []
    return sorted({str(v) for v in df[column].dropna() if str(v) != ""})


def require_rows(df: pd.DataFrame, what: str, **equal: str | Sequence[str]) -> pd.DataFrame:
    """Rows whose columns equal (or are in) the given values; a clear error when none are left."""
    for column in ("experiment", *equal):
        if column not in df.columns:
            raise ValueError(f"{what}: tidy results have no column {column!r}; columns: {', '.join(df.columns)}")
    mask = pd.Series(True, index=df.index)
    for column, wanted in equal.items():
        values = [wanted] if isinstance(wanted, str) else list(wanted)
        mask &= df[column].astype(str).isin(values)
    rows = df[mask]
    if rows.empty:
        wanted_text = ", ".join(f"{c} in {v!r}" for c, v in equal.items())
        found = ", ".join(sorted(set(df["experiment"].astype(str))))
        raise ValueError(f"{what}: no tidy rows with {wanted_text} (experiments present: {found or 'none'})")
    return rows
