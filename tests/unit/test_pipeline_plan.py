"""The pipeline's own logic on two tiny fake stages (no torch, no ONNX): step keys, validation before
anything runs, fingerprints and skip reasons, '@run' references, the summary and the demo config.
tests/integration/test_pipeline.py runs the real stages."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import click
import pytest

from edgexfer import pipeline as pl
from edgexfer.errors import ConfigError
from edgexfer.manifest import Manifest


@click.command("finetune")
@click.option("--weights", default="none")
@click.option("--epochs", type=int, default=1)
@click.option("--patience", type=int, default=5)
@click.option("--out", default=None)
def finetune_cmd(**params):
    """Stands in for edgexfer finetune."""


@click.command("build")
@click.argument("run_dir")
@click.option("--backend", default="onnxruntime")
@click.option("--precision", default="fp16")  # not the fp32 the pipeline once assumed for a key
def build_cmd(**params):
    """Stands in for edgexfer build."""


@dataclass(frozen=True)
class TuneConfig:
    out: str
    weights: str
    epochs: int
    patience: Optional[int]
    progress: bool


@dataclass(frozen=True)
class BuildConfig:
    run_dir: str
    backend: str
    precision: str
    progress: bool

    @property
    def artifact_name(self) -> str:
        return f"{self.backend}_{self.precision}"


def tune_config(params: Dict[str, Any], progress: bool) -> TuneConfig:
    if params["epochs"] < 1:
        raise ConfigError(f"epochs must be > 0, got {params['epochs']}")
    return TuneConfig(params["out"], params["weights"], params["epochs"], params["patience"] or None, progress)


def run_tune(config: TuneConfig) -> None:
    run_dir = Path(config.out)
    (run_dir / "finetune").mkdir(parents=True, exist_ok=True)
    start = Path(config.weights).read_text() if Path(config.weights).is_file() else config.weights
    (run_dir / "finetune" / "best.pt").write_text(f"{start} + {config.epochs} epochs")
    with Manifest.update(run_dir, create=True) as manifest:
        manifest.add_artifact("checkpoint", run_dir / "finetune" / "best.pt", kind="checkpoint", stage="finetune")


def run_build(config: BuildConfig) -> None:
    run_dir = Path(config.run_dir)
    (run_dir / "build").mkdir(exist_ok=True)
    path = run_dir / "build" / f"{config.artifact_name}.bin"
    path.write_text(Manifest.open(run_dir).get("checkpoint").sha256)
    with Manifest.update(run_dir) as manifest:
        manifest.add_artifact(config.artifact_name, path, kind="onnxruntime", stage="build", inputs=["checkpoint"])


STAGES = {
    "finetune": pl.StageSpec(finetune_cmd, tune_config, run_tune, "out"),
    "build": pl.StageSpec(build_cmd, lambda p, progress: BuildConfig(**p, progress=progress), run_build, "run_dir"),
}


@pytest.fixture
def no_tensorrt(monkeypatch):
    """Only 'tensorrt' is unavailable, whatever this machine has."""
    from edgexfer.backends import base

    class Fake:
        def __init__(self, name):
            self.name = name

        def availability(self):
            return (False, "tensorrt does not import") if self.name == "tensorrt" else (True, "")

    monkeypatch.setattr(base, "get_backend", Fake)


def doc(out: Path, **target: Any) -> dict:
    target = target or {"finetune": {"weights": "@source", "epochs": 2},
                        "build": [{}, {"precision": "int8"}, {"backend": "tensorrt", "when_available": True}]}
    return {"out": str(out), "runs": {"source": {"finetune": {"epochs": 1}}, "target": target}}


def steps(result) -> list:
    return [(s.run, s.key, s.action, s.why) for s in result.steps]


def test_plan_run_skip_and_rerun_downstream(tmp_path, no_tensorrt):
    dry = pl.run_pipeline(doc(tmp_path), STAGES, dry_run=True, progress=False)
    new, absent = "new run directory", "backend not available here: tensorrt does not import"
    # build keys come from each step's config: the first entry gets the command's default precision
    assert steps(dry) == [("source", "finetune", "run", new), ("target", "finetune", "run", new),
                          ("target", "build:onnxruntime_fp16", "run", new),
                          ("target", "build:onnxruntime_int8", "run", new),
                          ("target", "build:tensorrt_fp16", "skip", absent)]
    assert not (tmp_path / "source").exists()

    first = pl.run_pipeline(doc(tmp_path), STAGES, progress=False)
    assert [s.action for s in first.steps] == ["run", "run", "run", "run", "skip"]
    source_ckpt = Manifest.open(tmp_path / "source").path_of("checkpoint")
    assert first.steps[1].config.weights == str(source_ckpt)  # '@source' resolved to the checkpoint
    assert first.skip_counts() == {pl.UNCHANGED: 0, pl.UNAVAILABLE: 1}

    second = pl.run_pipeline(doc(tmp_path), STAGES, progress=False)
    assert [s.why for s in second.steps][:4] == [pl.UNCHANGED] * 4
    assert second.skip_counts() == {pl.UNCHANGED: 4, pl.UNAVAILABLE: 1}

    # the source checkpoint changes: the target's fine-tuning and its builds run again
    source_ckpt.write_text("retrained")
    with Manifest.update(tmp_path / "source") as manifest:
        manifest.add_artifact("checkpoint", source_ckpt, kind="checkpoint", stage="finetune")
    third = pl.run_pipeline(doc(tmp_path), STAGES, progress=False)
    assert [s.action for s in third.steps] == ["skip", "run", "run", "run", "skip"]
    assert third.steps[1].why == "config or inputs changed"

    # a built file changed behind the pipeline's back: only that build runs again
    (tmp_path / "target" / "build" / "onnxruntime_int8.bin").write_text("tampered")
    fourth = pl.run_pipeline(doc(tmp_path), STAGES, progress=False)
    assert [s.why for s in fourth.steps][2:4] == [pl.UNCHANGED, "artifact onnxruntime_int8 is missing or changed"]

    forced = pl.run_pipeline(doc(tmp_path), STAGES, dry_run=True, force=["build:onnxruntime_fp16"])
    assert [s.why for s in forced.steps][:4] == [pl.UNCHANGED, pl.UNCHANGED, "forced", pl.UNCHANGED]


def test_skip_counts_come_from_each_steps_reason(tmp_path, capsys):
    """A skip for a reason other than the two known ones is counted as itself (it used to be counted as
    'backend not available here', by subtraction)."""
    from edgexfer.commands.run import _finish

    result = pl.PipelineResult(out=tmp_path, runs={})
    for action, reason in [("run", "never ran"), ("skip", pl.UNCHANGED), ("skip", "disk full"), ("skip", "disk full")]:
        result.steps.append(pl.Step("r", "build", "k", tmp_path, {}, action=action, reason=reason))
    assert result.skip_counts() == {pl.UNCHANGED: 1, pl.UNAVAILABLE: 0, "disk full": 2}
    _finish(result, "| table |", 0.0)
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("pipeline done")][0]
    assert line.endswith(": 1 steps ran, 1 skipped (inputs unchanged), 0 skipped (backend not available here), "
                         "2 skipped (disk full)")


@pytest.mark.parametrize("target, message", [
    ({"finetune": {"epochs": 0}}, "run 'target' stage 'finetune': epochs must be > 0, got 0"),
    ({"finetune": {"epoch": 2}}, "unknown key 'epoch' in run 'target' stage 'finetune'; did you mean 'epochs'"),
    ({"finetune": {"out": "elsewhere"}}, "'out' is set by the pipeline"),
    ({"finetune": {"weights": "@target"}}, "weights '@target' names no run listed before it"),
    ({"finetune": {"when_available": True}}, "when_available applies to build steps only"),
    ({"build": [{}, {"backend": "onnxruntime"}]}, "two build steps that make build:onnxruntime_fp16"),
    ({"build": [{"precision": "int8", "when_available": "yes"}]}, "when_available must be true or false"),
    ({"build": ["onnxruntime"]}, "stage 'build' options must be a mapping, got str"),
])
def test_bad_steps_fail_before_anything_runs(tmp_path, target, message):
    with pytest.raises(ConfigError, match=message):
        pl.run_pipeline(doc(tmp_path, **target), STAGES, progress=False)
    assert not (tmp_path / "source").exists()


def test_force_must_name_a_stage_or_step(tmp_path):
    with pytest.raises(ConfigError, match="--force 'builds' names no stage; choose from finetune, build or all"):
        pl.run_pipeline(doc(tmp_path), STAGES, dry_run=True, force=["builds"])


def test_write_summary_writes_what_it_returns(tmp_path):
    result = pl.run_pipeline(doc(tmp_path, finetune={"epochs": 1}), STAGES, progress=False)
    text = pl.write_summary(result)
    assert result.summary_path == tmp_path / "summary.md"
    assert result.summary_path.read_text() == text


def test_demo_pipeline_resolves_calibration_and_quick_budgets(tmp_path):
    full, quick = pl.demo_pipeline(tmp_path / "demo"), pl.demo_pipeline(tmp_path / "demo", quick=True)
    assert full["out"] == str(tmp_path / "demo")
    calib = Path(full["runs"][pl.DEMO_TRANSFER]["export"]["calib"])
    assert calib.is_dir() and calib.parts[-2:] == ("calibration", "fashion-mnist")
    assert set(full["runs"]) == {"source", pl.DEMO_TRANSFER, pl.DEMO_BASELINE}
    assert {name: run["finetune"]["epochs"] for name, run in full["runs"].items()} == {
        "source": 6, "target": 8, "scratch": 8}
    assert {name: run["finetune"]["epochs"] for name, run in quick["runs"].items()} == {
        "source": 1, "target": 1, "scratch": 1}
    assert {run["finetune"]["max_per_class"] for run in quick["runs"].values()} == {60}
    assert quick["runs"]["target"]["export"]["calib_size"] == 64
    assert quick["runs"]["target"]["export"]["eval_size"] == 100
