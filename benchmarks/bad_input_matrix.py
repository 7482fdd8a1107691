"""The bad-input matrix (issue 7): every case of tests/bad_input_cases.py as a REAL `python -m edgexfer`
process, classified by the same rules as the tests, plus the interruption scenarios of
tests/integration/test_interrupt.py (run with pytest, counted from its report).

    .venv/bin/python benchmarks/bad_input_matrix.py            # everything (~5-10 min on 2 cores)
    .venv/bin/python benchmarks/bad_input_matrix.py --no-interrupt --jobs 2

Prints one Markdown table (rows per stage: cases tried, clean errors, usage errors, lenient skips
counted, unusual-but-valid inputs handled, not clean) and the cases that were not clean, and writes
benchmarks/results/bad_input_matrix.{json,md}. Exit status 1 when any case or interruption was not clean.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import bad_input_cases as cases  # tests/ holds the case definitions the tests share  # noqa: E402

from edgexfer.fsutil import atomic_write_text  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
COLUMNS = ("error", "usage", "lenient", "accept")


def run_case(case: cases.Case, base_run: Path, root: Path, timeout: float) -> Dict[str, Any]:
    """Run one case as its own process in a fresh workspace; classify the outcome."""
    ws = cases.Workspace(root / case.id.replace("/", "__"), base_run)
    ws.root.mkdir(parents=True)
    argv = [sys.executable, "-m", "edgexfer", "-q", *case.make(ws)]
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            argv, env=ENV, capture_output=True, text=True, timeout=timeout, cwd=str(ws.root), check=False
        )
        ok, why = cases.classify(case, ws, proc.returncode, proc.stdout, proc.stderr)
        code: Optional[int] = proc.returncode
    except subprocess.TimeoutExpired:
        ok, why, code = False, f"no answer within {timeout:.0f} s", None
    return {
        "id": case.id,
        "stage": case.stage,
        "expect": case.expect,
        "exit": code,
        "clean": ok,
        "detail": why,
        "seconds": round(time.perf_counter() - started, 2),
    }


def run_interruptions(timeout: float) -> Dict[str, Any]:
    """pytest tests/integration/test_interrupt.py: each test kills real processes and checks the run dir."""
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-rA",
        str(ROOT / "tests" / "integration" / "test_interrupt.py"),
    ]
    try:
        proc = subprocess.run(
            argv, env=ENV, capture_output=True, text=True, timeout=timeout, cwd=str(ROOT), check=False
        )
        output = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|error|errors|skipped)", output)}
    passed = counts.get("passed", 0)
    tried = passed + counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)
    failures = re.findall(r"^(?:FAILED|ERROR) (\S+)", output, flags=re.MULTILINE)
    return {
        "tried": tried,
        "consistent": passed,
        "failures": failures,
        "tail": output.strip().splitlines()[-3:],
    }


def table(results: List[Dict[str, Any]], interrupt: Optional[Dict[str, Any]]) -> str:
    """The Markdown matrix: one row per stage, a total, and the interruptions row."""
    header = (
        "| stage | bad inputs tried | clean one-line errors | click usage errors | lenient skips counted "
        "| unusual valid inputs handled | NOT clean |"
    )
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|"]
    stages = [s for s in cases.STAGES if any(r["stage"] == s for r in results)]
    for stage in stages + ["total"]:
        rows = [r for r in results if stage == "total" or r["stage"] == stage]
        by = {kind: sum(r["clean"] and r["expect"] == kind for r in rows) for kind in COLUMNS}
        bad = sum(not r["clean"] for r in rows)
        name = f"**{stage}**" if stage == "total" else stage
        lines.append(
            f"| {name} | {len(rows)} | {by['error']} | {by['usage']} | {by['lenient']} | {by['accept']} "
            f"| {bad} |"
        )
    if interrupt is not None:
        header = (
            "| interruptions (SIGINT / SIGKILL of real processes) | tried | run directory consistent "
            "and the rerun finished |"
        )
        lines += [
            "",
            header,
            "|---|---:|---:|",
            f"| tests/integration/test_interrupt.py | {interrupt['tried']} | {interrupt['consistent']} |",
        ]
    return "\n".join(lines)


def main() -> int:
    """Build the shared base run, run every case (and the interruptions), print and save the matrix."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="Cases run at once (each is one process).")
    parser.add_argument("--only", default=None, help="Only cases whose id contains this text.")
    parser.add_argument("--no-interrupt", action="store_true", help="Skip the interruption scenarios.")
    parser.add_argument("--timeout", type=float, default=300.0, help="Seconds per case.")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    selected = [c for c in cases.CASES if not args.only or args.only in c.id]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgexfer-bad-input-") as tmp:
        root = Path(tmp)
        base_run = cases.make_base_run(root / "base")
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            results = list(pool.map(lambda c: run_case(c, base_run, root / "cases", args.timeout), selected))
    cases_seconds = time.perf_counter() - started
    interrupt = None if args.no_interrupt else run_interruptions(timeout=1800.0)

    text = table(results, interrupt)
    not_clean = [r for r in results if not r["clean"]]
    print(f"## Bad-input matrix ({len(results)} cases as real processes in {cases_seconds:.0f} s)\n")
    print(text)
    if not_clean:
        print("\nNot clean:")
        for r in not_clean:
            print(f"- {r['id']} (exit {r['exit']}): {r['detail']}")
    if interrupt and interrupt["failures"]:
        print("\nInterruption failures: " + ", ".join(interrupt["failures"]))
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "cases": results,
        "interruptions": interrupt,
        "python": sys.version.split()[0],
        "seconds": round(time.perf_counter() - started, 1),
    }
    atomic_write_text(
        args.out / "bad_input_matrix.json", json.dumps(payload, indent=2, ensure_ascii=False) + "\n"
    )
    atomic_write_text(args.out / "bad_input_matrix.md", text + "\n")
    interrupt_ok = interrupt is None or interrupt["tried"] == interrupt["consistent"] > 0
    return 0 if not not_clean and interrupt_ok else 1


if __name__ == "__main__":
    sys.exit(main())
