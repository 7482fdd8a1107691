"""The runtime side (build, predict, verify, bench --run, doctor) imports and runs with torch blocked.

A subprocess (torch is already imported in the test process) puts a meta path finder in front of
``sys.meta_path`` that refuses torch and torchvision the way a venv without the ``train`` extra does
(``ModuleNotFoundError``), imports every runtime module, then runs the commands in-process on a model
made without torch (:func:`onnx_factory.colour_model`). The training side must refuse with exit 4 and
name the extra. The same proof in a real venv without torch is tests/integration/test_torch_free.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import onnx_factory as factory
from conftest import make_image_folder

ROOT = Path(__file__).resolve().parents[2]

RUNTIME_MODULES = [
    "edgexfer.cli",
    "edgexfer.commands.build",
    "edgexfer.commands.predict",
    "edgexfer.commands.verify",
    "edgexfer.commands.bench",
    "edgexfer.commands.doctor",
    "edgexfer.stages.build",
    "edgexfer.stages.predict",
    "edgexfer.stages.predict_inputs",
    "edgexfer.stream",
    "edgexfer.stages.verify",
    "edgexfer.stages.verify_data",
    "edgexfer.stages.verify_report",
    "edgexfer.stages.bench",
    "edgexfer.stages.bench.targets",
    "edgexfer.bench_pipeline",
    "edgexfer.reference",
    "edgexfer.doctor",
    "edgexfer.report",
    "edgexfer.summary",
    "edgexfer.backends.onnxruntime",
    "edgexfer.backends.openvino",
    "edgexfer.backends.tensorrt",
    "edgexfer.backends.trt_lanes",
    "edgexfer.backends.torch",
]

SCRIPT = r"""
import contextlib, importlib, importlib.abc, io, json, sys


class BlockTorch(importlib.abc.MetaPathFinder):
    # What `import torch` does where torch is not installed.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
        return None


sys.meta_path.insert(0, BlockTorch())
plan = json.loads(sys.argv[1])
for module in plan["modules"]:
    importlib.import_module(module)
from edgexfer.cli import main


def cli(argv):
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(argv))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return {"code": code, "out": out.getvalue(), "err": err.getvalue()}


results = {name: cli(argv) for name, argv in plan["commands"]}
results["torch_modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))
print(json.dumps(results))
"""


def _onnx_only_run(run_dir: Path) -> Path:
    """A run directory as a device receives it: a float ONNX model recorded by the export stage, no
    checkpoint."""
    from edgexfer.manifest import Manifest

    path = factory.colour_model(run_dir / "export" / "model.onnx")
    with Manifest.update(run_dir, create=True) as manifest:
        manifest.add_artifact("onnx", path, kind="onnx", stage="export", config={"opset": 17})
    return run_dir


def _run_blocked(commands, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    plan = json.dumps({"modules": RUNTIME_MODULES, "commands": commands})
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, plan], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def blocked(tmp_path_factory):
    """Every command run once with torch blocked, on an ONNX-only run and three classes of images."""
    tmp = tmp_path_factory.mktemp("torch_blocked")
    run = _onnx_only_run(tmp / "run")
    images = make_image_folder(tmp / "images", per_class=4, size=40, seed=3)
    red = sorted((images / "red").iterdir())[0]
    commands = [
        ("build", ["-q", "build", str(run), "--backend", "onnxruntime", "--precision", "fp32",
                   "--smoke-data", str(images), "--smoke-images", "6"]),
        ("predict", ["-q", "predict", str(run), str(red), "--json"]),
        ("verify", ["-q", "verify", str(run), "--data", str(images), "--no-plots", "--bootstrap", "200"]),
        ("bench", ["-q", "bench", "--run", str(run), "--batch", "1", "--min-time", "0.05", "--min-iterations", "3",
                   "--no-e2e", "--out", str(tmp / "bench")]),
        ("doctor", ["doctor"]),
        ("finetune", ["finetune", "--model", "resnet18", "--data", str(images), "--out", str(tmp / "ft")]),
        ("export", ["export", str(run)]),
        ("bench_models", ["bench", "--model", "resnet18", "--work-dir", str(tmp / "bw"), "--out", str(tmp / "b2"),
                          "--calibration", str(images)]),
    ]
    return run, _run_blocked(commands, tmp)


def test_runtime_modules_import_and_never_load_torch(blocked):
    _, results = blocked
    assert results["torch_modules"] == []


def test_build_and_predict_run_without_torch(blocked):
    from edgexfer.manifest import Manifest

    run, results = blocked
    assert results["build"]["code"] == 0, results["build"]["err"]
    record = Manifest.open(run).require("onnxruntime_fp32")
    assert record.metrics["smoke"]["top1_agreement"] == 1.0
    assert results["predict"]["code"] == 0, results["predict"]["err"]
    top = json.loads(results["predict"]["out"])["predictions"][0]["top"]
    assert top[0]["class"] == "red" and top[0]["score"] > top[1]["score"]


def test_verify_without_torch_compares_with_the_float_onnx_model(blocked):
    run, results = blocked
    assert results["verify"]["code"] == 0, results["verify"]["err"]
    data = json.loads((run / "verify" / "verify.json").read_text())
    reference = data["reference"]
    assert (reference["source"], reference["artifact"], reference["backend"]) == (
        "float ONNX on onnxruntime", "onnx", "onnxruntime")
    assert reference["note"] == "torch reference unavailable: the run has no checkpoint"
    assert reference["top1"] == 100.0 and reference["latency"]["n"] >= 3
    (entry,) = data["artifacts"]
    assert entry["name"] == "onnxruntime_fp32" and entry["status"] == "passed"
    assert entry["accuracy"]["top1_drop"] == 0.0 and entry["agreement"]["agreement_pct"] == 100.0
    report = (run / "verify" / "report.md").read_text()
    assert "Reference: float ONNX on onnxruntime fp32 (top-1 100.00%" in report
    assert "| float ONNX on onnxruntime fp32 (reference) | 1 |" in report
    assert "torch fp32 latency: not measured (torch reference unavailable: the run has no checkpoint)." in report


def test_bench_of_a_run_without_torch_times_its_builds_and_says_why_torch_is_missing(blocked):
    run, results = blocked
    assert results["bench"]["code"] == 0, results["bench"]["err"]
    (path,) = (run / "bench").glob("*.json")
    document = json.loads(path.read_text())
    assert [(r["artifact"], r["backend"], r["precision"], r["status"]) for r in document["results"]] == [
        ("onnxruntime_fp32", "onnxruntime", "fp32", "ok")]
    assert document["results"][0]["model"] == "colour" and document["results"][0]["latency"]["p50_ms"] > 0
    torch_skip = next(s for s in document["skipped"] if s["backend"] == "torch")
    assert "No module named 'torch'" in torch_skip["reason"] and "pip install 'edgexfer[train]'" in torch_skip["reason"]


def test_doctor_runs_without_torch_and_names_the_extra(blocked):
    _, results = blocked
    assert results["doctor"]["code"] == 0, results["doctor"]["err"]
    line = next(x for x in results["doctor"]["out"].splitlines() if x.strip().startswith("[no ] torch"))
    assert "pip install 'edgexfer[train]'" in line


@pytest.mark.parametrize("command", ["finetune", "export", "bench_models"])
def test_training_side_refuses_in_one_line_with_exit_4(blocked, command):
    _, results = blocked
    result = results[command]
    assert result["code"] == 4, result
    lines = result["err"].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgexfer: error: ")
    assert "needs torch and torchvision" in lines[0] and "pip install 'edgexfer[train]'" in lines[0]
