"""`edgexfer demo --quick`: the README's first command, end to end on the embedded data (smoke scale)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgexfer.manifest import Manifest

pytestmark = pytest.mark.slow


def test_demo_quick_end_to_end_then_everything_skipped(tmp_path, cli_runner, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = Path("runs") / "demo"  # relative, as `make demo` passes it
    code, stdout, stderr = cli_runner("-q", "demo", "--quick", "--out", str(out))
    assert code == 0, stderr[-3000:]
    assert "Transfer (target) vs from scratch (scratch)" in stdout
    assert f"outputs: {out}" in stdout
    target = Manifest.open(out / "target")
    assert target.audit() == []
    for name in ("checkpoint", "onnx", "onnx_uint8", "onnx_int8_cpu", "onnx_int8_tensorrt",
                 "onnxruntime_fp32", "onnxruntime_int8", "verify_json"):
        assert target.is_fresh(name), name
    # the target run started from the source run's checkpoint, recorded with its hash
    source_sha = Manifest.open(out / "source").get("checkpoint").sha256
    assert source_sha[:16] in target.stage("finetune")["metrics"]["weights"]
    report = json.loads(target.path_of("verify_json").read_text())
    statuses = {a["name"]: a["status"] for a in report["artifacts"]}
    assert statuses["onnxruntime_fp32"] == "passed" and statuses["onnxruntime_int8"] == "passed"
    fp32 = next(a for a in report["artifacts"] if a["name"] == "onnxruntime_fp32")
    assert fp32["agreement"]["agreement_pct"] == pytest.approx(100.0)
    assert (out / "summary.md").read_text().count("|") > 20

    code, stdout, stderr = cli_runner("-q", "demo", "--quick", "--out", str(out))
    assert code == 0, stderr[-3000:]
    assert " 0 steps ran" in stdout
