"""Assertions on the SLURM CI run (.ci/slurm_test.sh), from sacct and the run's log.

- every job the workflow submitted ended COMPLETED;
- a job whose resources asked for GPUs ran on partition `gpu` with that many
  `gres/gpu`, every other job on `cpu` without one (by the job's resources,
  not by rule name, so new rules are checked too);
- at least two GPU jobs ran at the same time (the node has two GPUs), and
  two jobs of each `--concurrent RULE` (DVT's stage-1 shards: a cluster
  spreads one model's stage 1);
- every output of the SLURM run equals the local run's (feature tables by
  content, CSV / TeX / PNG by bytes, DVT stage-1 files array by array but for
  their measured seconds; PDFs carry their creation date).

    python .ci/slurm_check.py --log snakemake.log --results DIR --expected DIR

``--log`` alone checks the jobs (while the cluster is up); ``--results`` and
``--expected`` alone compare the outputs (later, once the local run is done).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

COMPARED = (".csv", ".tex", ".png", ".parquet", ".npz")
GPU_PARTITION, CPU_PARTITION = "gpu", "cpu"


def submitted_jobs(log: str) -> dict[str, dict]:
    """SLURM job id -> {rule, gpu} of every job the run's log shows submitted."""
    declared, jobs = {}, {}
    for block in re.split(r"\n(?=\[[^\]\n]+\]\n)", log):
        rule = re.search(r"^(?:local)?rule (\S+):$", block, re.M)
        jobid = re.search(r"^\s+jobid: (\d+)$", block, re.M)
        resources = re.search(r"^\s+resources: (.*)$", block, re.M)
        if rule and jobid:
            gpu = re.search(r"\bgpu=(\d+)", resources.group(1)) if resources else None
            declared[jobid.group(1)] = {"rule": rule.group(1), "gpu": int(gpu.group(1)) if gpu else 0}
    for job, slurm_id in re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", log):
        jobs[slurm_id] = declared[job]
    return jobs


def sacct(ids: list[str]) -> dict[str, dict]:
    """SLURM job id -> its accounting record (allocation only, no steps)."""
    fields = ["JobID", "Partition", "AllocTRES", "State", "Start", "End"]
    out = subprocess.run(["sacct", "-X", "-P", "-n", "-j", ",".join(ids), f"--format={','.join(fields)}"],
                         check=True, capture_output=True, text=True).stdout
    return {row[0]: dict(zip(fields, row)) for row in (line.split("|") for line in out.splitlines() if line)}


def gres_gpu(tres: str) -> int:
    found = re.search(r"gres/gpu=(\d+)", tres)
    return int(found.group(1)) if found else 0


def placement_errors(jobs: dict[str, dict], records: dict[str, dict]) -> list[str]:
    errors = []
    for slurm_id, job in jobs.items():
        record = records.get(slurm_id)
        if record is None:
            errors.append(f"job {slurm_id} ({job['rule']}): not in sacct")
            continue
        where = f"job {slurm_id} ({job['rule']}, gpu={job['gpu']})"
        if record["State"] != "COMPLETED":
            errors.append(f"{where}: {record['State']}")
        partition = GPU_PARTITION if job["gpu"] else CPU_PARTITION
        if record["Partition"] != partition:
            errors.append(f"{where}: ran on {record['Partition']!r}, expected {partition!r}")
        if gres_gpu(record["AllocTRES"]) != job["gpu"]:
            errors.append(f"{where}: allocated {record['AllocTRES']!r}, expected gres/gpu={job['gpu']}")
    return errors


def most_concurrent(intervals: list[tuple[datetime, datetime]]) -> int:
    """Largest number of intervals that overlap at one instant."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
                    key=lambda event: (event[0], event[1]))
    running = best = 0
    for _, step in events:
        running += step
        best = max(best, running)
    return best


def _span(record: dict, first: datetime | None) -> str:
    """``+start..+end s`` of a job from the run's first start: where the cluster run's time went."""
    try:
        start, end = (datetime.fromisoformat(record[k]) for k in ("Start", "End"))
    except (KeyError, ValueError):
        return ""
    return f"+{(start - first).total_seconds():.0f}..+{(end - first).total_seconds():.0f} s"


def without_timings(path: Path) -> dict[str, object]:
    """A stage-1 ``.npz`` as ``{name: array}``, less what a clock measured (``seconds_*`` arrays and attrs)."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files if not name.startswith("seconds")}
    if "attrs" in arrays:
        attrs = json.loads(str(arrays["attrs"]))
        arrays["attrs"] = {k: v for k, v in attrs.items() if not k.startswith("seconds")}
    return arrays


def same_npz(a: Path, b: Path) -> bool:
    x, y = without_timings(a), without_timings(b)
    return x.keys() == y.keys() and all(
        x[k] == y[k] if k == "attrs" else np.array_equal(x[k], y[k], equal_nan=x[k].dtype.kind == "f") for k in x)


def output_differences(results: Path, expected: Path) -> tuple[int, list[str]]:
    compared, errors = 0, []
    for path in sorted(p for p in results.rglob("*") if p.suffix in COMPARED):
        other = expected / path.relative_to(results)
        compared += 1
        if not other.is_file():
            errors.append(f"{other}: missing in the local run")
        elif path.suffix == ".parquet":
            if not pq.read_table(path).equals(pq.read_table(other)):
                errors.append(f"{path.relative_to(results)}: feature table differs from the local run's")
        elif path.suffix == ".npz":
            if not same_npz(path, other):
                errors.append(f"{path.relative_to(results)}: stage-1 arrays differ from the local run's")
        elif path.read_bytes() != other.read_bytes():
            errors.append(f"{path.relative_to(results)}: differs from the local run's")
    return compared, errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log", type=Path, help="output of the snakemake run on SLURM: check its jobs")
    parser.add_argument("--results", type=Path, help="results/demo of the SLURM run")
    parser.add_argument("--expected", type=Path, help="results/demo of a local run, to compare --results with")
    parser.add_argument("--concurrent", action="append", default=[], metavar="RULE",
                        help="a rule of which at least two jobs must have run at the same time")
    args = parser.parse_args()
    if (args.results is None) != (args.expected is None) or not (args.log or args.results):
        parser.error("give --log, or --results with --expected, or all three")
    errors = job_errors(args.log, args.concurrent) if args.log else []
    if args.results:
        compared, differences = output_differences(args.results, args.expected)
        if not compared:
            errors.append(f"no outputs found under {args.results}")
        errors += differences
        print(f"{compared} outputs of the SLURM run compared with the local run's")
    for error in errors:
        print(f"FAIL: {error}", file=sys.stderr)
    return 1 if errors else 0


def job_errors(log: Path, concurrent_rules: list[str]) -> list[str]:
    """Where each job of the run ran, what it was given, and whether GPU jobs (and each rule's) overlapped."""
    jobs = submitted_jobs(log.read_text())
    records = sacct(sorted(jobs))
    errors = placement_errors(jobs, records)
    gpu_jobs = [i for i, job in jobs.items() if job["gpu"]]
    if not gpu_jobs or len(gpu_jobs) == len(jobs):
        errors.append(f"expected both GPU and CPU jobs; got {len(gpu_jobs)} GPU jobs of {len(jobs)}")
    concurrent = most_concurrent([(datetime.fromisoformat(records[i]["Start"]), datetime.fromisoformat(records[i]["End"]))
                                  for i in gpu_jobs if i in records])
    if concurrent < 2:
        errors.append(f"GPU jobs never overlapped (at most {concurrent} at once on a node with two GPUs)")
    for rule in concurrent_rules:
        ids = [i for i, job in jobs.items() if job["rule"] == rule and i in records]
        at_once = most_concurrent([(datetime.fromisoformat(records[i]["Start"]), datetime.fromisoformat(records[i]["End"]))
                                   for i in ids])
        print(f"{rule}: {len(ids)} jobs, at most {at_once} at once")
        if at_once < 2:
            errors.append(f"{rule}: {len(ids)} jobs, never two at once")
    starts = [datetime.fromisoformat(r["Start"]) for r in records.values() if r["Start"][:1].isdigit()]
    first = min(starts) if starts else None
    for slurm_id, job in sorted(jobs.items(), key=lambda item: int(item[0])):
        record = records.get(slurm_id, {})
        print(f"{slurm_id:>4} {job['rule']:<28} gpu={job['gpu']} -> {record.get('Partition')} "
              f"{record.get('AllocTRES')} {record.get('State')} {_span(record, first)}")
    print(f"{len(jobs)} jobs, {len(gpu_jobs)} on GPUs, at most {concurrent} GPU jobs at once")
    return errors


if __name__ == "__main__":
    sys.exit(main())
