"""`edgexfer demo --quick`: the README's first command, end to end on the embedded data (smoke scale)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, List

import pytest

from edgexfer.manifest import Manifest

pytestmark = pytest.mark.slow

OPTIONAL_BUILDS = [("openvino", "int8"), ("tensorrt", "fp16"), ("tensorrt", "int8")]  # when_available


def _table(text: str, header: str) -> List[Dict[str, str]]:
    """The rows of the Markdown table whose header line starts with ``header``, as dicts."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    names = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(names, (c.strip() for c in line.strip("|").split("|")))))
    return rows


def _done_line(stdout: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith("pipeline done in "))


def test_demo_quick_end_to_end_then_everything_skipped(tmp_path, cli_runner, monkeypatch):
    from edgexfer.backends.base import get_backend

    monkeypatch.chdir(tmp_path)
    out = Path("runs") / "demo"  # relative, as `make demo` passes it
    code, stdout, stderr = cli_runner("-q", "demo", "--quick", "--out", str(out))
    assert code == 0, stderr[-3000:]
    built = [f"{b}_{p}" for b, p in OPTIONAL_BUILDS if get_backend(b).availability()[0]]
    absent = len(OPTIONAL_BUILDS) - len(built)
    assert re.fullmatch(rf"pipeline done in \d+ s: {7 + len(built)} steps ran, 0 skipped \(inputs unchanged\), "
                        rf"{absent} skipped \(backend not available here\)", _done_line(stdout))
    assert f"outputs: {out} (summary: {out / 'summary.md'}; per run: manifest.json, verify/report.md)" in stdout
    target = Manifest.open(out / "target")
    assert target.audit() == []
    for name in ("checkpoint", "onnx", "onnx_uint8", "onnx_int8_cpu", "onnx_int8_tensorrt",
                 "onnxruntime_fp32", "onnxruntime_int8", "verify_json", *built):
        assert target.is_fresh(name), name
    # the target run started from the source run's checkpoint, recorded with its hash
    source_sha = Manifest.open(out / "source").get("checkpoint").sha256
    assert source_sha[:16] in target.stage("finetune")["metrics"]["weights"]
    report = json.loads(target.path_of("verify_json").read_text())
    statuses = {a["name"]: a["status"] for a in report["artifacts"]}
    assert statuses == {"onnxruntime_fp32": "passed", "onnxruntime_int8": "passed",
                        **{name: "passed" for name in built}}
    fp32 = next(a for a in report["artifacts"] if a["name"] == "onnxruntime_fp32")
    assert fp32["agreement"]["agreement_pct"] == pytest.approx(100.0)

    # summary.md is what was printed, and its numbers are the recorded ones
    summary = (out / "summary.md").read_text()
    assert summary in stdout
    tune = _table(summary, "| run | model |")
    assert [(r["run"], r["model"], r["classes"], r["epochs"]) for r in tune] == [
        ("source", "resnet18", "5", "1"), ("target", "resnet18", "5", "1"), ("scratch", "resnet18", "5", "1")]
    assert [r["weights"] for r in tune] == ["none", f"run 'source' ({source_sha[:8]})", "none"]
    for row in tune:
        recorded = Manifest.open(out / row["run"]).stage("finetune")["metrics"]["best_val_top1"]
        assert row["val top-1 %"] == f"{100 * recorded:.2f}"
        assert 0.0 <= float(row["val top-1 %"]) <= 100.0  # one quick epoch: at least chance is not promised
    gain = float(tune[1]["val top-1 %"]) - float(tune[2]["val top-1 %"])
    assert f"Transfer (target) vs from scratch (scratch) with the same budget: {gain:+.2f} top-1 points." in summary
    assert f"Run 'target': {report['dataset']['num_images']} " in summary
    rows = _table(summary, "| artifact |")
    ci = next(column for column in rows[0] if column.endswith("CI"))
    assert [r["artifact"] for r in rows] == ["torch fp32 (reference)"] + [a["name"] for a in report["artifacts"]]
    assert (rows[0]["top-1 %"], rows[0]["drop (pts)"], rows[0]["agreement %"], rows[0]["speed-up"],
            rows[0]["status"]) == (f"{report['reference']['top1']:.2f}", "+0.00", "100.00", "1.0x", "reference")
    for row, art in zip(rows[1:], report["artifacts"]):
        assert row["top-1 %"] == f"{art['accuracy']['top1']:.2f}"
        assert row["drop (pts)"] == f"{art['accuracy']['top1_drop']:+.2f}"
        assert row["agreement %"] == f"{art['agreement']['agreement_pct']:.2f}" and row["status"] == "passed"
        low, high = (float(x) for x in row[ci].strip("[]").split(","))
        assert low <= float(row["drop (pts)"]) <= high
        assert float(row["p50 ms"]) > 0 and float(row["speed-up"].rstrip("x")) > 0

    code, stdout, stderr = cli_runner("-q", "demo", "--quick", "--out", str(out))
    assert code == 0, stderr[-3000:]
    assert re.fullmatch(rf"pipeline done in \d+ s: 0 steps ran, {7 + len(built)} skipped \(inputs unchanged\), "
                        rf"{absent} skipped \(backend not available here\)", _done_line(stdout))
