"""scripts/gpu_check.py (``make gpu-check``) without a GPU: the no-GPU line, the plan, the parsers, the
results/exit code, and its engine probe run against the fake tensorrt."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*args, path="/usr/bin:/bin"):
    env = {k: v for k, v in os.environ.items() if k != "PATH"}
    env["PATH"] = path  # no nvidia-smi on it
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=120)


def test_without_a_gpu_it_prints_one_line_and_exits_0(gpu_check):
    if gpu_check.gpu_name() is not None:
        pytest.skip("this machine has a GPU")
    proc = _run()
    assert proc.returncode == 0
    assert proc.stdout.strip().splitlines() == [
        "gpu-check: no NVIDIA GPU here (nvidia-smi lists none, not a Jetson); nothing to check"
    ]


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path):
    proc = _run("--dry-run", "--venv", str(tmp_path / "venv"))
    assert proc.returncode == 0 and not (tmp_path / "venv").exists()
    out = proc.stdout
    for precision in ("fp32", "fp16", "int8"):
        assert f"--backend tensorrt --precision {precision} --min-batch 2 --max-batch 8" in out
    assert "--source onnx_uint8" in out and "--uint8-input --uint8-layout nhwc" in out
    assert "verify" in out and "--batch-size 9" in out and "bench --run" in out
    assert "--trt --int8 --onnxrt" in out and "pytest -q -rs tests/gpu" in out
    assert "pip install -e" in out and "[train,tensorrt,dev] polygraphy" in out
    assert out.strip().endswith("gpu-check: NOTHING RAN")


def test_timing_parsers(gpu_check):
    trtexec = (
        "[12/03/2026-10:00:01] [I] GPU Compute Time: min = 0.201 ms, max = 0.412 ms, mean = 0.22 ms, "
        "median = 0.215 ms, percentile(90%) = 0.23 ms, percentile(95%) = 0.24 ms, percentile(99%) = 0.3 ms\n"
    )
    assert gpu_check.parse_trtexec(trtexec) == 0.215
    poly = "[I] trt-runner-N0 | Completed 200 iteration(s) in 123.4 ms | Average inference time: 0.617 ms."
    assert gpu_check.parse_polygraphy_time(poly) == 0.617
    assert gpu_check.parse_trtexec("nothing") is None and gpu_check.slug("NVIDIA H200") == "nvidia-h200"


def test_bench_rows_need_tensorrt_rows_that_ran(gpu_check, tmp_path):
    path = tmp_path / "b.json"
    ok = {"backend": "tensorrt", "precision": "fp16", "batch": 8, "status": "ok", "latency": {"p50_ms": 0.3}}
    path.write_text(json.dumps({"results": [ok]}))
    row = {"status": "pass"}
    gpu_check.bench_rows(row, path)
    assert row == {"status": "pass", "detail": "TensorRT rows: fp16 b8 0.300 ms"}
    path.write_text(json.dumps({"results": [{"backend": "onnxruntime", "status": "ok"}]}))
    row = {"status": "pass"}
    gpu_check.bench_rows(row, path)
    assert row == {"status": "fail", "detail": "TensorRT rows: none"}  # bench skipped TensorRT but exited 0


def test_the_int8_export_must_have_been_judged_on_an_engine(gpu_check, tmp_path):
    """On a GPU, an export that scored the TensorRT INT8 candidates on ONNX Runtime (a stand-in) fails."""
    check = gpu_check.Check(sys.executable, dry_run=False, budget=60, logs=tmp_path / "logs")
    for scored_on, stand_in in (("tensorrt 10.3.0 engine", False), ("onnxruntime (stand-in for tensorrt)", True)):
        metrics = {"scored_on": scored_on, "stand_in": stand_in, "scoring": {"float_layers_precision": "fp16"}}
        (tmp_path / "manifest.json").write_text(json.dumps({"artifacts": {"onnx_int8_tensorrt": {"metrics": metrics}}}))
        gpu_check.judged_on_engine(check, tmp_path)
    assert [(r["status"], r["detail"]) for r in check.rows] == [
        ("pass", "scored on tensorrt 10.3.0 engine; guarded layers in fp16"),
        ("fail", "scored on onnxruntime (stand-in for tensorrt); guarded layers in fp16"),
    ]


def test_report_writes_results_and_the_exit_code(gpu_check, tmp_path, capsys):
    check = gpu_check.Check(sys.executable, dry_run=False, budget=60, logs=tmp_path / "logs")
    check.step("passes", [sys.executable, "-c", "print('fine')"])
    assert gpu_check.report(check, {"install": "reused", "install_seconds": 0.0}, "NVIDIA H200", tmp_path) == 0
    check.step("fails", [sys.executable, "-c", "import sys; print('broken'); sys.exit(3)"])
    check.step("after a failure, the next step still runs", [sys.executable, "-c", "print('ran')"])
    assert gpu_check.report(check, {"install": "reused", "install_seconds": 0.0}, "NVIDIA H200", tmp_path) == 1
    record = json.loads((tmp_path / "nvidia-h200.json").read_text())
    assert [r["status"] for r in record["steps"]] == ["pass", "fail", "pass"] and record["verdict"] == "FAIL"
    assert "| fails | fail |" in (tmp_path / "nvidia-h200.md").read_text()
    assert (tmp_path / "logs" / "fails.log").read_text().endswith("broken\n")


def test_an_inconclusive_verify_is_not_a_gpu_failure_but_other_exit_codes_are(gpu_check, tmp_path):
    check = gpu_check.Check(sys.executable, dry_run=False, budget=60, logs=tmp_path / "logs")
    exit5 = [sys.executable, "-c", "import sys; sys.exit(5)"]
    check.step("verify at chance", exit5, inconclusive_ok=True)
    assert gpu_check.report(check, {"install": "reused", "install_seconds": 0.0}, "NVIDIA H200", tmp_path) == 0
    check.step("exit 5 elsewhere", exit5)  # only verify's steps may be inconclusive
    assert gpu_check.report(check, {"install": "reused", "install_seconds": 0.0}, "NVIDIA H200", tmp_path) == 1
    check.step("verify gate failed", [sys.executable, "-c", "import sys; sys.exit(3)"], inconclusive_ok=True)
    record = json.loads((tmp_path / "nvidia-h200.json").read_text())
    assert [r["status"] for r in record["steps"]] == ["inconclusive", "fail"]
    assert check.rows[-1]["status"] == "fail"


@pytest.mark.slow
def test_the_engine_probe_runs_on_an_engine(gpu_check, monkeypatch, tmp_path, capsys):
    """The probe (remainder batch vs ONNX Runtime, timing) against the fake tensorrt."""
    import fake_trt
    import onnx_factory as factory
    from edgexfer.backends import trt_devmem, trt_runtime
    from edgexfer.backends.tensorrt import build_defaults
    from edgexfer.backends.trt_build import build_engine

    trt = fake_trt.make_fake_trt("10.3.0")
    monkeypatch.setattr(trt_runtime, "load_trt", lambda: trt)
    monkeypatch.setattr(trt_devmem, "device_memory", lambda preferred=None: fake_trt.FakeMemory())
    onnx_path = factory.export_float(factory.tiny_net(), tmp_path / "model.onnx")
    engine = build_engine(trt, onnx_path, "fp32", tmp_path, {"min_batch": 2}, trt_runtime.trt_machine(trt),
                          build_defaults()).path
    monkeypatch.setattr(sys, "argv", ["probe", str(engine), str(onnx_path), "8"])
    exec(compile(gpu_check.PROBE, "probe", "exec"), {"__name__": "probe"})
    facts = json.loads(capsys.readouterr().out.split("PROBE ", 1)[1])
    assert facts["profile"] == [2, 8] and facts["top1"] == 1.0 and facts["min_cosine"] > 0.9999
    assert facts["infer_ms"] > 0 and facts["enqueue_ms"] > 0 and np.isfinite(facts["infer_ms"])
