"""Run the stages in order from one config, skipping those whose inputs did not change.

A pipeline file names one or more run directories under ``out``; each run lists the stages it runs::

    out: runs/demo
    runs:
      source:                      # stands in for large-scale pretraining
        finetune: {model: resnet18, weights: none, data: embedded, classes: "0-4", epochs: 3}
      target:
        finetune: {weights: "@source", data: embedded, classes: "5-9", epochs: 3}
        export: {int8: true, target: all, calib: calibration/fashion-mnist}
        build: [{backend: onnxruntime, precision: int8}]
        verify: {max_drop: 1.0}

``weights: "@source"`` is the best checkpoint of the run named ``source``. A single run may also be
written as ``run_dir: DIR`` plus ``stages: {...}``.

Skipping: each stage step gets a fingerprint, the sha256 of its config and of every artifact the earlier
stages of its run recorded (plus the weights file a finetune starts from). A step runs again when its
fingerprint differs from the one recorded after its last successful run, or when an artifact it made is
missing or changed; a re-run changes the artifacts after it, so everything downstream runs again too.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from edgexfer.config import check_keys, from_dict, load_yaml, to_dict
from edgexfer.errors import ConfigError
from edgexfer.fsutil import sha256_file, sha256_json
from edgexfer.manifest import Manifest

log = logging.getLogger(__name__)

# stage -> (module, config class, function, the config field that names the run directory)
STAGES: Dict[str, tuple] = {
    "finetune": ("edgexfer.stages.finetune", "FinetuneConfig", "run_finetune", "out"),
    "export": ("edgexfer.stages.export", "ExportConfig", "run_export", "run_dir"),
    "build": ("edgexfer.stages.build", "BuildConfig", "run_build", "run_dir"),
    "verify": ("edgexfer.stages.verify", "VerifyConfig", "run_verify", "run_dir"),
    "bench": ("edgexfer.bench_pipeline", "BenchConfig", "run_bench", "run_dir"),
}
STAGE_ORDER = list(STAGES)
# Options that change how a stage reports, not what it makes: left out of the fingerprint.
VOLATILE_KEYS = {"progress"}
PIPELINE_KEYS = {"out", "runs", "run_dir", "stages", "description"}
# Reports and plots carry timings that differ on every run; what later stages consume is the rest.
REPORT_KINDS = {"metrics", "plot", "report", "verify", "bench"}


@dataclass
class Step:
    """One stage invocation in one run directory."""

    run: str
    stage: str
    key: str
    run_dir: Path
    options: Dict[str, Any]
    config: Any = None
    fingerprint: str = ""
    action: str = "run"
    when_available: bool = False
    reason: str = ""
    result: Any = None
    seconds: float = 0.0


@dataclass
class PipelineResult:
    """What :func:`run_pipeline` did: the steps (run or skipped) and the run directories."""

    out: Path
    runs: Dict[str, Path]
    steps: List[Step] = field(default_factory=list)


def _stage_parts(stage: str) -> tuple:
    module_name, config_name, function_name, dir_field = STAGES[stage]
    module = importlib.import_module(module_name)
    return getattr(module, config_name), getattr(module, function_name), dir_field


def parse_pipeline(data: Mapping[str, Any], base_dir: Path) -> tuple:
    """Validate a pipeline mapping; return (out dir, {run name: {stage: options or [options]}})."""
    check_keys(data, PIPELINE_KEYS, "the pipeline file")
    if "runs" in data and ("stages" in data or "run_dir" in data):
        raise ConfigError("the pipeline file has both 'runs' and 'stages'/'run_dir'; use one form")
    if "runs" in data:
        out = Path(data.get("out", "runs/pipeline"))
        runs = data["runs"]
        if not isinstance(runs, Mapping) or not runs:
            raise ConfigError("'runs' must map run names to their stages, e.g. runs: {main: {finetune: {...}}}")
    elif "stages" in data:
        run_dir = Path(data.get("run_dir", "runs/pipeline"))
        out, runs = run_dir.parent, {run_dir.name: data["stages"]}
    else:
        raise ConfigError("the pipeline file needs 'runs:' (named run directories) or 'stages:' with 'run_dir:'")
    if not out.is_absolute():
        out = base_dir / out
    parsed: Dict[str, Dict[str, Any]] = {}
    for run_name, stages in runs.items():
        if not isinstance(stages, Mapping) or not stages:
            raise ConfigError(f"run '{run_name}' must map stage names to options, e.g. finetune: {{...}}")
        check_keys(stages, STAGE_ORDER, f"run '{run_name}'")
        parsed[str(run_name)] = {stage: stages[stage] for stage in STAGE_ORDER if stage in stages}
    return out, parsed


def plan_steps(out: Path, runs: Mapping[str, Mapping[str, Any]]) -> List[Step]:
    """Expand runs into ordered steps (a list under ``build`` gives one step per entry)."""
    steps = []
    for run_name, stages in runs.items():
        run_dir = out / run_name
        for stage, options in stages.items():
            entries = options if isinstance(options, list) else [options]
            for index, entry in enumerate(entries):
                if entry is None:
                    entry = {}
                if not isinstance(entry, Mapping):
                    raise ConfigError(f"run '{run_name}' stage '{stage}' options must be a mapping, "
                                      f"got {type(entry).__name__}")
                key = stage if len(entries) == 1 else f"{stage}:{index}"
                if stage == "build":
                    key = f"build:{entry.get('backend', 'onnxruntime')}_{entry.get('precision', 'fp32')}"
                entry = dict(entry)
                when_available = entry.pop("when_available", False)
                if not isinstance(when_available, bool):
                    raise ConfigError(f"run '{run_name}' {key}: when_available must be true or false")
                steps.append(Step(run=run_name, stage=stage, key=key, run_dir=run_dir, options=entry,
                                  when_available=when_available))
    return steps


def _resolve_options(step: Step, run_dirs: Mapping[str, Path]) -> Dict[str, Any]:
    """Fill in the run directory and resolve ``@run`` references to that run's best checkpoint."""
    options = dict(step.options)
    config_cls, _, dir_field = _stage_parts(step.stage)
    if dir_field in options:
        raise ConfigError(f"run '{step.run}' stage '{step.stage}': '{dir_field}' is set by the pipeline "
                          f"({step.run_dir}); remove it")
    weights = options.get("weights")
    if step.stage == "finetune" and isinstance(weights, str) and weights.startswith("@"):
        source = weights[1:]
        if source not in run_dirs:
            raise ConfigError(f"run '{step.run}' finetune weights '{weights}' names no run; runs: "
                              f"{', '.join(run_dirs)}")
        manifest = Manifest.open(run_dirs[source])
        manifest.require("checkpoint")
        options["weights"] = str(manifest.path_of("checkpoint"))
    options[dir_field] = str(step.run_dir)
    return options


def _fingerprint(step: Step) -> str:
    """Hash of the step's config and of every artifact earlier stages of its run recorded."""
    config = {k: v for k, v in to_dict(step.config).items() if k not in VOLATILE_KEYS}
    upstream: Dict[str, str] = {}
    if (step.run_dir / "manifest.json").exists():
        manifest = Manifest.open(step.run_dir)
        earlier = set(STAGE_ORDER[:STAGE_ORDER.index(step.stage)])
        upstream = {name: art.sha256 for name, art in manifest.artifacts.items()
                    if art.stage in earlier and art.kind not in REPORT_KINDS}
    extra = {}
    weights = config.get("weights")
    if step.stage == "finetune" and isinstance(weights, str) and Path(weights).is_file():
        extra["weights_sha256"] = sha256_file(weights)
    return sha256_json({"stage": step.stage, "config": config, "upstream": upstream, "extra": extra})


def _decide(step: Step, force: Sequence[str]) -> None:
    """Set ``step.action`` to run or skip, with the reason."""
    if step.stage in force or step.key in force or "all" in force:
        step.action, step.reason = "run", "forced"
        return
    if not (step.run_dir / "manifest.json").exists():
        step.action, step.reason = "run", "new run directory"
        return
    manifest = Manifest.open(step.run_dir)
    recorded = manifest.data.get("pipeline", {}).get(step.key)
    if recorded is None:
        step.action, step.reason = "run", "never ran"
    elif recorded != step.fingerprint:
        step.action, step.reason = "run", "config or inputs changed"
    else:
        stale = [name for name, art in manifest.artifacts.items()
                 if _made_by(art, step) and not manifest.is_fresh(name)]
        if stale:
            step.action, step.reason = "run", f"artifact {stale[0]} is missing or changed"
        else:
            step.action, step.reason = "skip", "inputs unchanged"


def _unavailable_reason(step: Step) -> str:
    """For a ``when_available`` build step: why its backend cannot run here ('' when it can)."""
    if not step.when_available or step.stage != "build":
        return ""
    from edgexfer.backends.base import get_backend

    ok, reason = get_backend(step.config.backend).availability()
    return "" if ok else f"backend not available here: {reason}"


def _made_by(artifact: Any, step: Step) -> bool:
    if artifact.stage != step.stage:
        return False
    if step.stage == "build":
        return step.key == f"build:{artifact.name}"
    return True


def run_pipeline(pipeline: Mapping[str, Any], base_dir: Path = Path("."), force: Sequence[str] = (),
                 dry_run: bool = False, progress: bool = True,
                 on_step: Optional[Callable[[Step], None]] = None) -> PipelineResult:
    """Run (or with ``dry_run`` only plan) every step in order; return what was done."""
    out, runs = parse_pipeline(pipeline, base_dir)
    steps = plan_steps(out, runs)
    run_dirs = {name: out / name for name in runs}
    unknown = [f for f in force if f != "all" and f not in STAGE_ORDER and f not in {s.key for s in steps}]
    if unknown:
        raise ConfigError(f"--force '{unknown[0]}' names no stage; choose from {', '.join(STAGE_ORDER)} or all")
    # Validate every step's config before running anything: a typo in 'verify' must not surface after
    # ten minutes of fine-tuning.
    for step in steps:
        config_cls, _, dir_field = _stage_parts(step.stage)
        placeholder = dict(step.options)
        reference = str(placeholder.get("weights", "")) if step.stage == "finetune" else ""
        if reference.startswith("@"):
            earlier_runs = list(runs)[:list(runs).index(step.run)]
            if reference[1:] not in earlier_runs:
                raise ConfigError(f"run '{step.run}' finetune weights '{reference}' names no run listed before "
                                  f"it; earlier runs: {', '.join(earlier_runs) or 'none'}")
            placeholder["weights"] = "none"
        placeholder.setdefault("progress", progress)
        where = f"run '{step.run}' stage '{step.stage}'"
        from_dict(config_cls, {**placeholder, dir_field: str(step.run_dir)}, where)
    result = PipelineResult(out=out, runs=run_dirs)
    for step in steps:
        config_cls, function, _ = _stage_parts(step.stage)
        weights = str(step.options.get("weights", ""))
        if dry_run and weights.startswith("@") and not (run_dirs.get(weights[1:], out / "?") /
                                                       "manifest.json").exists():
            # planning only: the source run has not been trained yet, so its checkpoint cannot be named
            options = {**step.options, "weights": "none", STAGES[step.stage][3]: str(step.run_dir)}
        else:
            options = _resolve_options(step, run_dirs)
        options.setdefault("progress", progress)
        step.config = from_dict(config_cls, options, f"run '{step.run}' stage '{step.stage}'")
        step.fingerprint = _fingerprint(step)
        _decide(step, force)
        unavailable = _unavailable_reason(step)
        if unavailable:
            step.action, step.reason = "skip", unavailable
        if on_step:
            on_step(step)
        result.steps.append(step)
        if dry_run or step.action == "skip":
            continue
        started = time.perf_counter()
        step.result = function(step.config)
        step.seconds = time.perf_counter() - started
        step.fingerprint = _fingerprint(step)  # upstream is unchanged by this step; recompute for safety
        with Manifest.update(step.run_dir, create=True) as manifest:
            manifest.data.setdefault("pipeline", {})[step.key] = step.fingerprint
    return result


def run_pipeline_file(path: Path, **kwargs: Any) -> PipelineResult:
    """Load a YAML pipeline file; relative paths inside it are relative to the current directory."""
    return run_pipeline(load_yaml(path), base_dir=Path("."), **kwargs)


def dataclass_fields(stage: str) -> List[str]:
    """The option names a stage takes (for docs and error messages)."""
    config_cls, _, _ = _stage_parts(stage)
    return [f.name for f in dataclasses.fields(config_cls)]
