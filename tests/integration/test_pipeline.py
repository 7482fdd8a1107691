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


def run(pipeline: dict, **kwargs):
    from edgexfer.commands.run import pipeline_stages

    return run_pipeline(pipeline, pipeline_stages(), progress=False, **kwargs)


def _pipeline(data_dir: Path, out: Path, opset: int = 17) -> dict:
    # keys are the commands' long options: workers (--workers), bootstrap (--bootstrap), plots (--plots/--no-plots)
    common = {"model": "resnet18", "data": str(data_dir), "size": 32, "epochs": 1, "batch_size": 16,
              "strategy": "full", "seed": 0, "workers": 0}
    return {
        "out": str(out),
        "runs": {
            "source": {"finetune": {**common, "weights": "none"}},
            "target": {
                "finetune": {**common, "weights": "@source"},
                "export": {"opset": opset, "eval_size": 16, "no_shared_cache": True},
                "build": [{"backend": "onnxruntime", "precision": "fp32"}],
                "verify": {"latency": False, "bootstrap": 200, "plots": False},
            },
        },
    }


def _actions(result):
    return {(s.run, s.key): s.action for s in result.steps}


def test_pipeline_runs_then_skips_then_reruns_downstream(tmp_path, split_image_folder):
    out = tmp_path / "runs"
    first = run(_pipeline(split_image_folder, out))
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
    # the YAML options reached the stages: CLI-named keys in the recorded configs
    assert target.stage("export")["config"]["shared_cache"] is False
    assert report["config"]["bootstrap_resamples"] == 200 and report["config"]["plots"] is False
    assert target.stage("finetune")["config"]["num_workers"] == 0

    second = run(_pipeline(split_image_folder, out))
    assert set(_actions(second).values()) == {"skip"}

    # a changed export option re-runs export and everything after it, not the fine-tuning
    third = run(_pipeline(split_image_folder, out, opset=16))
    actions = _actions(third)
    assert actions[("source", "finetune")] == "skip" and actions[("target", "finetune")] == "skip"
    assert actions[("target", "export")] == "run"
    assert actions[("target", "build:onnxruntime_fp32")] == "run"
    assert actions[("target", "verify")] == "run"

    # an artifact changed behind the pipeline's back is rebuilt
    onnx_path = Manifest.open(out / "target").path_of("onnxruntime_fp32")
    onnx_path.write_bytes(onnx_path.read_bytes() + b"\0")
    fourth = run(_pipeline(split_image_folder, out, opset=16))
    assert _actions(fourth)[("target", "build:onnxruntime_fp32")] == "run"
    assert _actions(fourth)[("target", "export")] == "skip"
    assert Manifest.open(out / "target").is_fresh("onnxruntime_fp32")


@pytest.mark.parametrize("mutate, message", [
    (lambda p: p["runs"]["target"]["export"].update(opsett=17), "did you mean 'opset'"),
    (lambda p: p["runs"]["target"].update(exprot={}), "did you mean 'export'"),
    (lambda p: p["runs"]["target"]["finetune"].update(weights="@nowhere"), "names no run"),
    (lambda p: p["runs"]["target"]["verify"].update(max_drop="one"), "verify': max_drop: 'one' is not a valid float"),
    (lambda p: p["runs"]["target"]["verify"].update(bootstrap_resamples=9), "did you mean 'bootstrap'"),
    (lambda p: p["runs"]["target"]["verify"].update(bootstrap=0), "stage 'verify': .*bootstrap"),
    (lambda p: p["runs"]["target"]["build"][0].update(max_batch=8), "stage 'build': .*max.batch"),
    (lambda p: p.update(runz={}), "did you mean 'runs'"),
])
def test_bad_pipeline_fails_before_any_stage_runs(tmp_path, split_image_folder, mutate, message):
    pipeline = _pipeline(split_image_folder, tmp_path / "runs")
    mutate(pipeline)
    with pytest.raises(ConfigError, match=message):
        run(pipeline)
    assert not (tmp_path / "runs" / "source" / "manifest.json").exists()


def test_example_pipeline_file_dry_run_lists_every_step(cli_runner, tmp_path, monkeypatch):
    """The example is valid, and a dry run lists exactly its ten steps with why each would (not) run."""
    from edgexfer.backends.base import get_backend

    example = Path(__file__).resolve().parents[2] / "examples" / "pipeline.yaml"
    data = yaml.safe_load(example.read_text())
    data["out"] = str(tmp_path / "example")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # calib: calibration/fashion-mnist
    code, out, err = cli_runner("run", str(tmp_path / "p.yaml"), "--dry-run")
    assert code == 0, err
    expected = ["[pretrain] would run finetune (new run directory)", "[main] would run finetune (new run directory)",
                "[main] would run export (new run directory)"]
    for backend, precision, optional in [("onnxruntime", "fp32", False), ("onnxruntime", "int8", False),
                                         ("openvino", "int8", True), ("tensorrt", "fp16", True),
                                         ("tensorrt", "int8", True)]:
        ok, why = get_backend(backend).availability()
        verb, reason = ("run", "new run directory") if ok or not optional else (
            "skip", f"backend not available here: {why}")
        expected.append(f"[main] would {verb} build:{backend}_{precision} ({reason})")
    expected += ["[main] would run verify (new run directory)", "[main] would run bench (new run directory)"]
    assert err.splitlines() == expected
    runs = sum(" would run " in line for line in expected)
    assert out.strip() == f"dry run: {runs} of 10 steps would run"
    assert not (tmp_path / "example").exists()  # a dry run writes nothing
