"""Assert that a Snakemake HTML report holds every figure and table of a run.

Every directory under RESULTS/figures must appear as an embedded file with a
caption (with the DEMO warning when --demo), beside the reproduction report
and the run's per-job runtimes.

    python .ci/check_report.py report.html results/demo --demo
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path


def embedded(html: str, name: str) -> dict:
    """The JSON object a Snakemake report stores as ``var <name> = {...}``."""
    found = re.search(rf"var {name} = (?=\{{)", html)
    if found is None:
        raise SystemExit(f"no `{name}` in the report: not a Snakemake HTML report?")
    return json.JSONDecoder().raw_decode(html, found.end())[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("results", type=Path, help="results/<preset> of the run")
    parser.add_argument("--demo", action="store_true", help="captions must carry the DEMO warning")
    args = parser.parse_args()

    html = args.report.read_text(encoding="utf-8")
    results = embedded(html, "results")
    by_figure = {entry["labels"].get("figure"): entry for entry in results.values() if entry.get("labels")}
    errors = []
    figures = sorted(p.name for p in (args.results / "figures").iterdir() if p.is_dir())
    for figure in figures:
        entry = by_figure.get(figure)
        if entry is None:
            errors.append(f"{figure}: not in the report")
        elif not entry.get("data_uri"):
            errors.append(f"{figure}: listed but not embedded")
        elif not entry.get("caption"):
            errors.append(f"{figure}: no caption")
        elif args.demo and "DEMO OUTPUT" not in entry["caption"]:
            errors.append(f"{figure}: caption lacks the DEMO warning")
    if not any(path.endswith("report/reproduction.md") for path in results):
        errors.append("the reproduction report is not in the report")
    if not embedded(html, "runtimes_spec")["data"]["values"]:
        errors.append("no job runtimes in the report")
    print(f"{args.report}: {len(figures)} figures and tables checked, {len(results)} files embedded")
    for error in errors:
        print(f"FAIL: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
