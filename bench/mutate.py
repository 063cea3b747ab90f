"""Mutation score of a study's tests: plant listed bugs one at a time and see whether the tests catch them.

Not a test (``pytest`` collects ``tests/`` only). Usage::

    python bench/mutate.py bench/mutants/scene.yaml            # every mutant
    python bench/mutate.py bench/mutants/scene.yaml --only ID  # one (repeatable)

The list (``bench/mutants/<study>.yaml``) names the study's tests and the
mutants: ``id``, ``file``, ``find`` (exact text that must occur exactly once in
the file, else the mutant is reported invalid and not planted), ``replace`` and
``why`` (the plausible bug it stands for). For each mutant the file is
replaced atomically by its mutated text (its mtime moved on, so no cached
``.pyc`` of the original is taken for it), the tests run in a fresh
``python -m pytest -x -q`` that writes no bytecode (a timeout each), and the
original is put back in a ``finally`` (also on Ctrl-C). Before planting, the original is copied
to ``<file>.mutate-orig``; a copy left by a run that was killed outright is
restored at the next start. A mutant is *caught* when the tests fail (exit 1),
error (collection failure) or time out; *missed* when they pass. The tests
first run once unmutated: they must pass, or no score means anything.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BACKUP_SUFFIX = ".mutate-orig"
FIELDS = ("id", "file", "find", "replace", "why")


@dataclass(frozen=True)
class Mutant:
    id: str
    file: str
    find: str
    replace: str
    why: str


@dataclass(frozen=True)
class Outcome:
    mutant: Mutant
    status: str  # caught | missed | invalid
    detail: str
    seconds: float


def load(path: Path) -> tuple[list[str], list[Mutant]]:
    """Tests and mutants of a list; malformed entries stop the run with the entry named."""
    spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    tests = spec.get("tests")
    if not tests or not all(isinstance(t, str) for t in tests):
        raise SystemExit(f"{path}: 'tests' must be a non-empty list of test paths")
    missing = [t for t in tests if not (ROOT / t.split("::")[0]).exists()]
    if missing:
        raise SystemExit(f"{path}: tests {missing} do not exist")
    mutants = []
    for i, entry in enumerate(spec.get("mutants") or []):
        absent = [f for f in FIELDS if not isinstance(entry.get(f), str) or not entry[f]]
        if absent:
            raise SystemExit(f"{path}: mutant #{i + 1} ({entry.get('id', '?')}) lacks {absent}")
        mutants.append(Mutant(**{f: entry[f] for f in FIELDS}))
    ids = [m.id for m in mutants]
    if len(set(ids)) != len(ids):
        raise SystemExit(f"{path}: duplicate mutant ids {sorted({i for i in ids if ids.count(i) > 1})}")
    return tests, mutants


def restore_leftovers(mutants: list[Mutant]) -> None:
    """Put back originals that a killed run left as ``<file>.mutate-orig``."""
    for file in sorted({m.file for m in mutants}):
        backup = ROOT / (file + BACKUP_SUFFIX)
        if backup.exists():
            os.replace(backup, ROOT / file)
            print(f"restored {file} from {backup.name}, left by an interrupted run", flush=True)


def run_tests(tests: list[str], timeout: float) -> tuple[int | None, str]:
    """Exit code of the tests (None on timeout) and the first failing test or error line."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no mutant's .pyc left beside the restored original
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-n", "0", "-p", "no:cacheprovider", *tests]  # -n 0: in-process, -x exact
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        return None, f"timed out after {timeout:g} s"
    except BaseException:  # Ctrl-C: stop the test run too, then let the caller restore
        os.killpg(proc.pid, 9)
        proc.communicate()
        raise
    lines = out.splitlines()
    first = next((ln for ln in lines if ln.startswith(("FAILED", "ERROR"))), lines[-1] if lines else "")
    return proc.returncode, first


def plant(mutant: Mutant, tests: list[str], timeout: float) -> Outcome:
    path = ROOT / mutant.file
    start = time.monotonic()
    if not path.is_file():
        return Outcome(mutant, "invalid", f"no file {mutant.file}", 0.0)
    original = path.read_text(encoding="utf-8")
    count = original.count(mutant.find)
    if count != 1:
        return Outcome(mutant, "invalid", f"'find' occurs {count} times in {mutant.file} (must be once)", 0.0)
    backup = ROOT / (mutant.file + BACKUP_SUFFIX)
    shutil.copy2(path, backup)
    try:
        tmp = path.with_name(f".{path.name}.mutant")
        tmp.write_text(original.replace(mutant.find, mutant.replace), encoding="utf-8")
        mtime = max(time.time(), path.stat().st_mtime + 2)  # .pyc validity is by whole-second mtime and size
        os.utime(tmp, (mtime, mtime))
        os.replace(tmp, path)
        code, detail = run_tests(tests, timeout)
    finally:
        os.replace(backup, path)  # the copy keeps the original's bytes and mtime
    seconds = time.monotonic() - start
    if code == 0:
        return Outcome(mutant, "missed", "tests pass", seconds)
    kind = "timeout" if code is None else ("tests fail" if code == 1 else f"pytest exit {code}")
    return Outcome(mutant, "caught", f"{kind}: {detail}", seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mutants", type=Path, help="bench/mutants/<study>.yaml")
    parser.add_argument("--only", action="append", default=[], metavar="ID", help="run only this mutant (repeatable)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per test run (default 900)")
    parser.add_argument("--skip-baseline", action="store_true", help="do not first run the unmutated tests")
    args = parser.parse_args(argv)
    tests, mutants = load(args.mutants)
    restore_leftovers(mutants)
    unknown = sorted(set(args.only) - {m.id for m in mutants})
    if unknown:
        raise SystemExit(f"--only {unknown}: no such mutant in {args.mutants}")
    chosen = [m for m in mutants if not args.only or m.id in args.only]
    if not args.skip_baseline:
        code, detail = run_tests(tests, args.timeout)
        if code != 0:
            print(f"the unmutated tests do not pass ({detail}); no mutation score", flush=True)
            return 2
        print(f"baseline: {' '.join(tests)} pass", flush=True)
    outcomes = []
    for mutant in chosen:
        try:
            outcome = plant(mutant, tests, args.timeout)
        except KeyboardInterrupt:
            print(f"interrupted during {mutant.id}; {mutant.file} restored", flush=True)
            return 130
        outcomes.append(outcome)
        print(f"{outcome.status:8s} {mutant.id:32s} {outcome.seconds:6.1f} s  {outcome.detail}  [{mutant.why}]",
              flush=True)
    valid = [o for o in outcomes if o.status != "invalid"]
    caught = sum(o.status == "caught" for o in valid)
    invalid = len(outcomes) - len(valid)
    score = f"{100 * caught / len(valid):.0f} %" if valid else "n/a"
    print(f"score: {caught} of {len(valid)} caught ({score})" + (f"; {invalid} invalid" if invalid else ""))
    return 0 if invalid == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
