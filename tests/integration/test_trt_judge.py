"""Where ``export --int8 --target tensorrt`` scores its candidates, end to end through the CLI.

With TensorRT usable (the strict fake, tests/fake_trt.py, behind the real backend, availability check and
sidecar checks): on engines built by the backend, the timing cache left in the run's build folder for
``edgexfer build``, and ``verify`` of the TensorRT INT8 build runs on the engine. Without TensorRT: ONNX
Runtime stands in, and the export output, the manifest, verify's table, verify.json and report.md say so.
"""

from __future__ import annotations

import json
import sys

import pytest

import fake_trt
from conftest import make_image_folder
from edgexfer.manifest import Manifest


@pytest.fixture
def run_data(random_run, tmp_path):
    eval_dir = make_image_folder(tmp_path / "eval", per_class=4, size=40, seed=5)
    calib_dir = make_image_folder(tmp_path / "calib", per_class=6, size=40, seed=6)
    return random_run, eval_dir, calib_dir


def _export(cli_runner, run, eval_dir, calib_dir, target, *extra):
    return cli_runner(
        "export", str(run), "--int8", "--target", target, "--calib", str(calib_dir), "--calib-size", "10",
        "--calib-method", "minmax", "--eval-data", str(eval_dir), "--no-shared-cache", "--no-progress", *extra,
    )


@pytest.mark.slow
def test_with_tensorrt_candidates_are_scored_on_engines(cli_runner, run_data, monkeypatch):
    run, eval_dir, calib_dir = run_data
    trt = fake_trt.install(monkeypatch, "10.3.0")
    # one candidate (edgexfer's recipe, minmax) and no per-layer evidence: exactly one engine to count
    code, out, err = _export(cli_runner, run, eval_dir, calib_dir, "tensorrt", "--quantizer", "edgexfer",
                             "--evidence-layers", "0")
    assert code == 0, err
    line = next(x for x in out.splitlines() if x.startswith("onnx_int8_tensorrt"))
    assert "scored on tensorrt 10.3.0 engine" in line and "stand-in" not in out + err
    metrics = Manifest.open(run).require("onnx_int8_tensorrt").metrics
    assert metrics["scored_on"] == "tensorrt 10.3.0 engine" and metrics["stand_in"] is False
    assert metrics["scoring"]["float_layers_precision"] == "fp16" and metrics["scoring"]["gpu"] == "NVIDIA Fake GPU"
    assert Manifest.open(run).stage("export")["metrics"]["onnx_int8_tensorrt"]["scored_on"] == metrics["scored_on"]
    # one candidate (minmax, no guard): one engine, run on every held-out image
    assert len(trt.log["built"]) == 1 and "int8" in trt.log["built"][0]["precisions"]
    # the candidate ran once on every held-out image; the export evidence (quant/evidence.py) takes the kept
    # model's all-INT8 baseline from those logits instead of running the engine over the same images again
    # (it did before issue 13's export-time work: 24 image runs)
    assert trt.log["executed"] == metrics["eval_images"] == 12
    # the engines were staged and removed; their timing cache stays where 'edgexfer build' looks for it
    build_dir = run / "build"
    assert [p.name for p in build_dir.iterdir()] == ["timing_trt10.3_sm87.cache"]

    code, out, err = cli_runner(
        "build", str(run), "--backend", "tensorrt", "--precision", "int8", "--smoke-data", str(eval_dir)
    )
    assert code == 0, err
    assert trt.log["cache_hits"] == 1  # the build started from the cache export's engine left
    assert (build_dir / "timing_trt10.3_sm87.cache").is_file() and not list(build_dir.glob(".*"))
    sidecar = json.loads((build_dir / "tensorrt_int8.json").read_text())
    assert sidecar["build"]["timing_cache"] == "timing_trt10.3_sm87.cache"

    before = trt.log["executed"]
    code, out, err = cli_runner(
        "-q", "verify", str(run), "--backends", "tensorrt", "--data", str(eval_dir), "--no-latency",
        "--bootstrap", "300",
    )
    assert code in (0, 5), err  # random weights may sit at chance (INCONCLUSIVE); which runner ran is the point
    entry = json.loads((run / "verify" / "verify.json").read_text())["artifacts"][0]
    assert (entry["name"], entry["backend"], entry["runner"]["runner"]) == ("tensorrt_int8", "tensorrt", "tensorrt")
    assert "stand_in_for" not in entry and trt.log["executed"] - before == 12  # verify ran the engine


@pytest.mark.slow
def test_without_tensorrt_onnxruntime_stands_in_and_says_so(cli_runner, run_data, monkeypatch):
    run, eval_dir, calib_dir = run_data
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    from edgexfer.backends import int8_judge

    # the stand-in judges on a stride of the held-out images (unfused S8 Q/DQ is slow on ONNX Runtime's CPU)
    monkeypatch.setattr(int8_judge, "STAND_IN_IMAGES", 5)
    code, out, err = _export(cli_runner, run, eval_dir, calib_dir, "all")
    assert code == 0, err
    assert "scored on onnxruntime (stand-in for tensorrt) (5 of 12 held-out images)" in err
    lines = {x.split()[0]: x for x in out.splitlines() if x.startswith("onnx_int8_")}
    assert "scored on onnxruntime (stand-in for tensorrt)" in lines["onnx_int8_tensorrt"]
    assert "stand-in" not in lines["onnx_int8_cpu"] and "scored on onnxruntime" in lines["onnx_int8_cpu"]
    assert "tensorrt is not usable here (tensorrt does not import" in err
    manifest = Manifest.open(run)
    trt_metrics = manifest.require("onnx_int8_tensorrt").metrics
    assert trt_metrics["scored_on"] == "onnxruntime (stand-in for tensorrt)" and trt_metrics["stand_in"] is True
    assert trt_metrics["scoring"]["stand_in_for"] == "tensorrt" and trt_metrics["scoring"]["stand_in_reason"]
    assert trt_metrics["scoring"]["float_layers_precision"] == "fp32"
    assert trt_metrics["eval_images"] == 5 and trt_metrics["method_score_images"] == 5
    assert (trt_metrics["scoring"]["judged_images"], trt_metrics["scoring"]["held_out_images"]) == (5, 12)
    assert {c["images"] for c in trt_metrics["candidates"].values()} == {5}
    evidence = json.loads((run / "export" / trt_metrics["evidence"]["json"]).read_text())
    assert evidence["table"]["images"] == 5 and evidence["runtime"] == trt_metrics["scored_on"]
    cpu_metrics = manifest.require("onnx_int8_cpu").metrics
    assert cpu_metrics["scored_on"] == "onnxruntime" and cpu_metrics["stand_in"] is False
    assert cpu_metrics["eval_images"] == 12 and "judged_images" not in cpu_metrics["scoring"]
    assert not (run / "build").exists()

    code, out, err = cli_runner(
        "-q", "verify", str(run), "--artifact", "onnx_int8_tensorrt", "--artifact", "onnx_int8_cpu",
        "--data", str(eval_dir), "--no-latency", "--bootstrap", "300",
    )
    assert code in (0, 3, 5), err  # an untrained net may miss the gate or sit at chance (5); the labels matter here
    printed = {x.split()[0]: x for x in out.splitlines() if x.strip().startswith("onnx_int8_")}
    assert printed["onnx_int8_tensorrt"].endswith("[on onnxruntime, stand-in for tensorrt]")
    assert "stand-in" not in printed["onnx_int8_cpu"]
    entries = {e["name"]: e for e in json.loads((run / "verify" / "verify.json").read_text())["artifacts"]}
    assert entries["onnx_int8_tensorrt"]["stand_in_for"] == "tensorrt"
    assert "stand_in_for" not in entries["onnx_int8_cpu"]
    report = (run / "verify" / "report.md").read_text()
    assert "`onnx_int8_tensorrt` ran on onnxruntime as a stand-in for tensorrt" in report
    assert "`onnx_int8_cpu` ran on" not in report


def test_uint8_source_on_tensorrt_85_is_refused_in_one_line(cli_runner, run_data, monkeypatch):
    """D3 through the CLI: TensorRT 8.5's parser cannot cast from UINT8; 'build --source onnx_uint8' says so in
    one line (exit 2) and names what works, instead of a parser error."""
    run, eval_dir, _ = run_data
    code, _, err = cli_runner("export", str(run), "--uint8-input", "--eval-data", str(eval_dir), "--no-progress")
    assert code == 0, err
    fake_trt.install(monkeypatch, "8.5.2")
    code, out, err = cli_runner(
        "build", str(run), "--backend", "tensorrt", "--precision", "fp16", "--source", "onnx_uint8", "--no-smoke"
    )
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "TensorRT 8.5.2 cannot take a uint8 input" in err and "--source onnx" in err
    assert not Manifest.open(run).has("tensorrt_fp16") and not list((run / "build").glob(".*"))
