"""``edgexfer bench`` on CPU: real export (float, uint8-input, INT8 with calibration images), real builds,
real ONNX Runtime sessions, at a small input size so it stays fast."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgexfer.manifest import Manifest

CALIBRATION = Path(__file__).resolve().parents[2] / "calibration" / "fashion-mnist"


def _bench_args(tmp_path: Path, *extra: str, batch: str = "1,2"):
    return (
        "-q",
        "bench",
        "--model",
        "resnet18",
        "--size",
        "64",
        "--backend",
        "torch,onnxruntime",
        "--precision",
        "fp32,int8",
        "--batch",
        batch,
        "--min-time",
        "0.05",
        "--min-iterations",
        "6",
        "--work-dir",
        str(tmp_path / "work"),
        "--out",
        str(tmp_path / "results"),
        "--machine-name",
        "testbox",
        "--calibration",
        str(CALIBRATION),
        *extra,
    )


@pytest.mark.slow
def test_bench_matrix_writes_results_and_reuses_artifacts(tmp_path, cli_runner):
    code, out, err = cli_runner(*_bench_args(tmp_path))
    assert code == 0, err
    assert "results: " in out and "next: " in out
    data = json.loads((tmp_path / "results" / "testbox.json").read_text())
    assert data["schema_version"] == 1 and data["kind"] == "edgexfer-bench"
    assert data["weights_note"].startswith("random initialisation")
    machine = data["machine"]
    assert machine["threads_used"] == data["threads"] >= 1
    assert machine["cpu"] and "versions" in machine and "onnxruntime" in machine["versions"]
    rows = {(r["backend"], r["precision"], r["batch"]): r for r in data["results"]}
    assert set(rows) == {
        (b, p, n)
        for b, p in (("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"))
        for n in (1, 2)
    }
    for (_backend, _precision, batch), row in rows.items():
        assert row["status"] == "ok", row
        lat = row["latency"]
        assert lat["batch_size"] == batch and lat["n"] >= 6 and 0 < lat["p50_ms"] <= lat["p99_ms"]
        assert row["e2e"]["n"] >= 6 and row["host"]["n"] >= 6
        assert row["e2e_ratio"] == pytest.approx(row["e2e"]["p50_ms"] / lat["p50_ms"])
        torch_p50 = rows[("torch", "fp32", batch)]["latency"]["p50_ms"]
        assert row["speedup_vs_torch"] == pytest.approx(torch_p50 / lat["p50_ms"])
    # The ONNX artifacts take uint8 pixels (preprocessing folded in); torch takes normalised floats.
    assert rows[("onnxruntime", "int8", 1)]["input"] == "uint8 NHWC"
    assert rows[("onnxruntime", "fp32", 1)]["input"] == "uint8 NHWC"
    assert rows[("torch", "fp32", 1)]["input"] == "float32 NCHW"
    assert any("resnet18 batch 1: fastest INT8 is onnxruntime" in h for h in data["headlines"])
    table = (tmp_path / "results" / "testbox.md").read_text()
    assert "| resnet18 | onnxruntime | int8 | uint8 NHWC | 1 |" in table
    assert (tmp_path / "results" / "testbox.png").read_bytes()[:4] == b"\x89PNG"
    # The artifacts were made by the real stages and recorded in the model's run directory.
    run = tmp_path / "work" / "resnet18-64"
    manifest = Manifest.open(run)
    assert manifest.get("onnx_int8_cpu").stage == "export"
    assert manifest.get("onnxruntime_int8").config["source"] == "onnx_int8_cpu_uint8"
    assert manifest.get("onnxruntime_fp32").config["source"] == "onnx_uint8"
    built = {
        name: manifest.get(name).sha256 for name in ("onnxruntime_int8", "onnxruntime_fp32", "onnx_int8_cpu")
    }
    created = manifest.get("onnxruntime_int8").created
    # A second run reuses the fresh artifacts instead of exporting and building again.
    code, out, err = cli_runner(*_bench_args(tmp_path, "--no-e2e", batch="1"))
    assert code == 0, err
    manifest = Manifest.open(run)
    assert {name: manifest.get(name).sha256 for name in built} == built
    assert manifest.get("onnxruntime_int8").created == created
    second = json.loads((tmp_path / "results" / "testbox.json").read_text())
    assert {r["batch"] for r in second["results"]} == {1} and "e2e" not in second["results"][0]


def test_bench_rejects_bad_options_in_one_line(tmp_path, cli_runner):
    code, out, err = cli_runner("bench", "--model", "resnet18", "--precision", "int4", "--out", str(tmp_path))
    assert (
        code == 2 and err.strip() == "edgexfer: error: unknown precision 'int4'; choose from fp32, fp16, int8"
    )
    code, out, err = cli_runner("bench", "--batch", "0", "--out", str(tmp_path))
    assert code == 2 and "batch sizes must be integers >= 1" in err
    code, out, err = cli_runner(
        "bench",
        "--model",
        "resnet181",
        "--backend",
        "onnxruntime",
        "--work-dir",
        str(tmp_path / "w"),
        "--out",
        str(tmp_path),
    )
    assert code == 2 and "unknown model 'resnet181'; did you mean resnet18" in err


def test_machine_slug_is_stable_and_file_safe():
    from edgexfer.stages.bench import machine_slug

    assert machine_slug({"cpu": "Intel(R) Xeon(R) Processor", "physical_cores": 2}) == "intel-xeon-2c"
    assert (
        machine_slug({"cpu": "ARMv8", "physical_cores": 6, "jetson": {"module": "NVIDIA Jetson Orin Nano"}})
        == "nvidia-jetson-orin-nano-6c"
    )
    assert (
        machine_slug(
            {
                "cpu": "AMD Ryzen 9 7950X 16-Core Processor",
                "physical_cores": 16,
                "gpus": [{"name": "NVIDIA GeForce RTX 4090"}],
            }
        )
        == "amd-ryzen-9-7950x-16-core-nvidia-geforce-rtx-4090-16c"
    )


@pytest.mark.slow
def test_bench_a_trained_run_records_results_in_the_run(trained_run_copy, tmp_path, cli_runner):
    from edgexfer.fsutil import sha256_file
    from edgexfer.stages.build import BuildConfig, run_build
    from edgexfer.stages.export import ExportConfig, run_export

    run = trained_run_copy
    run_export(ExportConfig(run_dir=run, eval_size=16, progress=False))
    run_build(BuildConfig(run_dir=run, backend="onnxruntime", precision="fp32", progress=False))
    code, out, err = cli_runner(
        "-q",
        "bench",
        "--run",
        str(run),
        "--backend",
        "torch,onnxruntime",
        "--batch",
        "1",
        "--no-e2e",
        "--min-time",
        "0.05",
        "--min-iterations",
        "5",
        "--machine-name",
        "box",
        "--work-dir",
        str(tmp_path / "w"),
    )
    assert code == 0, err
    data = json.loads((run / "bench" / "box.json").read_text())
    assert data["weights_note"] == f"trained weights of run {run}"
    assert [(r["backend"], r["precision"], r["artifact"]) for r in data["results"]] == [
        ("torch", "fp32", "checkpoint"),
        ("onnxruntime", "fp32", "onnxruntime_fp32"),
    ]
    assert all(r["status"] == "ok" and r["model"] == "resnet18" for r in data["results"])
    manifest = Manifest.open(run)
    assert manifest.get("bench_json").sha256 == sha256_file(run / "bench" / "box.json")
    assert manifest.stage("bench")["metrics"] == {"rows": 2}


def test_busy_machine_warning_thresholds():
    from edgexfer.stages.bench import busy_warning

    # Idle before; at the end only the bench's own two threads: no warning.
    assert busy_warning({"usable_cpus": 2, "load_average_start": 0.3, "load_average_end": 2.4}) == []
    (line,) = busy_warning({"usable_cpus": 2, "load_average_start": 5.3, "load_average_end": 2.5})
    assert line.startswith("WARNING: the machine was busy (1-min load average 5.3 before, 2.5 after, on 2")
    assert busy_warning({"usable_cpus": 2, "load_average_start": None, "load_average_end": 3.5})
