"""The bad-input matrix (issue 7): every case of tests/integration/test_bad_input.py as a REAL
`python -m edgexfer` process, plus the interruption scenarios of tests/integration/test_interrupt.py.

    .venv/bin/python benchmarks/bad_input_matrix.py            # everything (~5-10 min on 2 cores)
    .venv/bin/python benchmarks/bad_input_matrix.py --no-interrupt --jobs 2

The cases, and the rules that say whether an outcome is clean, live in the tests (tests/bad_input_cases.py);
this script imports nothing from tests/. It runs ``test_bad_input_case`` with pytest in ``--jobs`` shards,
with EDGEXFER_BAD_INPUT_PROCESSES=1 (each case a real process), and reads each case's outcome (stage,
expected kind, exit code, the error line) from pytest's junit report. A case that failed, errored or is
marked as expected to fail on this branch is not clean.

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
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional

from edgexfer.fsutil import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
TESTS = "tests/integration/test_bad_input.py"
CASE_TEST = "test_bad_input_case"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
COLUMNS = ("error", "usage", "lenient", "accept")


def _pytest(*args: str, env: Optional[Dict[str, str]] = None, timeout: float = 3600.0) -> str:
    """Run pytest from the project root; its stdout and stderr."""
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args]
    try:
        proc = subprocess.run(argv, env=env or ENV, capture_output=True, text=True, timeout=timeout,
                              cwd=str(ROOT), check=False)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or b""
        return out.decode() if isinstance(out, bytes) else out
    return proc.stdout + proc.stderr


def case_ids(only: Optional[str]) -> List[str]:
    """The node ids of the parametrized case test (optionally only those containing ``only``)."""
    output = _pytest("--collect-only", "-q", f"{TESTS}::{CASE_TEST}")
    ids = [line.strip() for line in output.splitlines() if line.startswith(f"{TESTS}::{CASE_TEST}[")]
    if not ids:
        raise SystemExit(f"no cases collected from {TESTS}:\n{output[-2000:]}")
    return [i for i in ids if not only or only in i]


def run_shard(ids: List[str], junit: Path, timeout: float) -> None:
    """One pytest process over these cases, each case a real edgexfer process; writes ``junit``."""
    env = {**ENV, "EDGEXFER_BAD_INPUT_PROCESSES": "1"}
    _pytest("-q", "-rN", f"--junitxml={junit}", "-o", "junit_logging=no", *ids, env=env,
            timeout=timeout * len(ids) + 600)


def read_junit(junit: Path) -> List[Dict[str, Any]]:
    """One result per case from a junit report: its recorded properties and whether it was clean."""
    if not junit.is_file():
        return []
    results = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = case.get("name", "")
        match = re.fullmatch(rf"{CASE_TEST}\[(.+)\]", name)
        if not match:
            continue
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        outcome = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        detail = props.get("detail", "")
        if outcome is not None:
            what = "expected to fail on this branch" if outcome.get("type") == "pytest.xfail" else outcome.tag
            detail = f"{what}: {(outcome.get('message') or '').splitlines()[0] if outcome.get('message') else ''}"
        exit_code = props.get("exit")
        results.append({
            "id": match.group(1),
            "stage": props.get("stage", match.group(1).split("/")[0]),
            "expect": props.get("expect", "?"),
            "exit": int(exit_code) if exit_code not in (None, "None") else None,
            "clean": outcome is None,
            "detail": detail,
            "seconds": float(case.get("time", 0.0)),
        })
    return results


def run_interruptions(timeout: float) -> Dict[str, Any]:
    """pytest tests/integration/test_interrupt.py: each test kills real processes and checks the run dir."""
    output = _pytest("-q", "-rA", str(ROOT / "tests" / "integration" / "test_interrupt.py"), timeout=timeout)
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|error|errors|skipped)", output)}
    passed = counts.get("passed", 0)
    tried = passed + counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)
    failures = re.findall(r"^(?:FAILED|ERROR) (\S+)", output, flags=re.MULTILINE)
    return {"tried": tried, "consistent": passed, "failures": failures, "tail": output.strip().splitlines()[-3:]}


def table(results: List[Dict[str, Any]], interrupt: Optional[Dict[str, Any]]) -> str:
    """The Markdown matrix: one row per stage (in the cases' order), a total, and the interruptions row."""
    header = (
        "| stage | bad inputs tried | clean one-line errors | click usage errors | lenient skips counted "
        "| unusual valid inputs handled | NOT clean |"
    )
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|"]
    stages = list(dict.fromkeys(r["stage"] for r in results))
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
    """Run every case (and the interruptions) through pytest, print and save the matrix."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="pytest processes at once (each runs its cases in turn).")
    parser.add_argument("--only", default=None, help="Only cases whose id contains this text.")
    parser.add_argument("--no-interrupt", action="store_true", help="Skip the interruption scenarios.")
    parser.add_argument("--timeout", type=float, default=300.0, help="Seconds per case.")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    ids = case_ids(args.only)
    jobs = max(1, min(args.jobs, len(ids)))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgexfer-bad-input-") as tmp:
        shards = [(ids[i::jobs], Path(tmp) / f"shard{i}.xml") for i in range(jobs)]
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(lambda shard: run_shard(shard[0], shard[1], args.timeout), shards))
        by_id = {r["id"]: r for shard in shards for r in read_junit(shard[1])}
    order = [re.fullmatch(rf".*::{CASE_TEST}\[(.+)\]", i).group(1) for i in ids]
    missing = [i for i in order if i not in by_id]
    results = [by_id.get(i) or {"id": i, "stage": i.split("/")[0], "expect": "?", "exit": None, "clean": False,
                                "detail": "no result in the junit report", "seconds": 0.0} for i in order]
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
    if missing:
        print(f"\n{len(missing)} case(s) missing from the junit reports: {', '.join(missing[:5])}")
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
