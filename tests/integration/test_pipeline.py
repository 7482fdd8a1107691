"""`edgexfer run pipeline.yaml`: stages run in order, unchanged ones are skipped, changes re-run downstream."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from edgexfer.errors import ConfigError
from edgexfer.manifest import Manifest
from edgexfer.pipeline import run_pipeline

pytestmark = pytest.mark.slow


def _pipeline(data_dir: Path, out: Path, opset: int = 17) -> dict:
    common = {"model": "resnet18", "data": str(data_dir), "size": 32, "epochs": 1, "batch_size": 16,
              "strategy": "full", "seed": 0, "num_workers": 0}
    return {
        "out": str(out),
        "runs": {
            "source": {"finetune": {**common, "weights": "none"}},
            "target": {
                "finetune": {**common, "weights": "@source"},
                "export": {"opset": opset, "parity_images": 8, "eval_size": 16},
                "build": [{"backend": "onnxruntime", "precision": "fp32"}],
                "verify": {"latency": False, "bootstrap_resamples": 200, "plots": False},
            },
        },
    }


def _actions(result):
    return {(s.run, s.key): s.action for s in result.steps}


def test_pipeline_runs_then_skips_then_reruns_downstream(tmp_path, split_image_folder):
    out = tmp_path / "runs"
    first = run_pipeline(_pipeline(split_image_folder, out), progress=False)
    assert set(_actions(first).values()) == {"run"}
    target = Manifest.open(out / "target")
    for name in ("checkpoint", "onnx", "onnxruntime_fp32", "verify_json"):
        assert target.is_fresh(name), name
    # the target was initialised from the source run's checkpoint, by path and by hash
    source_ckpt = Manifest.open(out / "source").path_of("checkpoint")
    assert target.stage("finetune")["config"]["weights"] == str(source_ckpt)
    report = json.loads(target.path_of("verify_json").read_text())
    assert report["artifacts"][0]["name"] == "onnxruntime_fp32"
    assert report["artifacts"][0]["agreement"]["agreement_pct"] == pytest.approx(100.0)

    second = run_pipeline(_pipeline(split_image_folder, out), progress=False)
    assert set(_actions(second).values()) == {"skip"}

    # a changed export option re-runs export and everything after it, not the fine-tuning
    third = run_pipeline(_pipeline(split_image_folder, out, opset=16), progress=False)
    actions = _actions(third)
    assert actions[("source", "finetune")] == "skip" and actions[("target", "finetune")] == "skip"
    assert actions[("target", "export")] == "run"
    assert actions[("target", "build:onnxruntime_fp32")] == "run"
    assert actions[("target", "verify")] == "run"

    # an artifact changed behind the pipeline's back is rebuilt
    onnx_path = Manifest.open(out / "target").path_of("onnxruntime_fp32")
    onnx_path.write_bytes(onnx_path.read_bytes() + b"\0")
    fourth = run_pipeline(_pipeline(split_image_folder, out, opset=16), progress=False)
    assert _actions(fourth)[("target", "build:onnxruntime_fp32")] == "run"
    assert _actions(fourth)[("target", "export")] == "skip"
    assert Manifest.open(out / "target").is_fresh("onnxruntime_fp32")


@pytest.mark.parametrize("mutate, message", [
    (lambda p: p["runs"]["target"]["export"].update(opsett=17), "did you mean 'opset'"),
    (lambda p: p["runs"]["target"].update(exprot={}), "did you mean 'export'"),
    (lambda p: p["runs"]["target"]["finetune"].update(weights="@nowhere"), "names no run"),
    (lambda p: p["runs"]["target"]["verify"].update(max_drop="one"), "max_drop must be a number"),
    (lambda p: p.update(runz={}), "did you mean 'runs'"),
])
def test_bad_pipeline_fails_before_any_stage_runs(tmp_path, split_image_folder, mutate, message):
    pipeline = _pipeline(split_image_folder, tmp_path / "runs")
    mutate(pipeline)
    with pytest.raises(ConfigError, match=message):
        run_pipeline(pipeline, progress=False)
    assert not (tmp_path / "runs" / "source" / "manifest.json").exists()


def test_example_pipeline_file_is_valid(cli_runner):
    example = Path(__file__).resolve().parents[2] / "examples" / "pipeline.yaml"
    data = yaml.safe_load(example.read_text())
    assert "runs" in data
    code, out, err = cli_runner("run", str(example), "--dry-run")
    assert code == 0, err
    assert "would run" in out
