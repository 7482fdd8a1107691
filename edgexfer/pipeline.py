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

A step's keys are its command's long options with underscores (``edgexfer <stage> --help``), parsed by
that command's own click parameters (:mod:`edgexfer.cliparams`) and turned into the stage config by
the command's ``config_from_params``: the CLI and the pipeline cannot disagree. The pipeline supplies
each stage's run directory. ``weights: "@source"`` is the best checkpoint of the run named ``source``;
``when_available: true`` (build steps only) skips a build whose backend this machine lacks. A single run
may also be written as ``run_dir: DIR`` plus ``stages: {...}``.

Skipping: each stage step gets a fingerprint, the sha256 of its config and of every artifact the earlier
stages of its run recorded (plus the weights file a finetune starts from). A step runs again when its
fingerprint differs from the one recorded after its last successful run, or when an artifact it made is
missing or changed; a re-run changes the artifacts after it, so everything downstream runs again too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import click

from edgexfer.cliparams import command_params
from edgexfer.config import check_keys, load_yaml, to_dict
from edgexfer.errors import ConfigError
from edgexfer.fsutil import atomic_write_text, sha256_file, sha256_json
from edgexfer.manifest import Manifest

# Options that change how a stage reports, not what it makes: left out of the fingerprint.
VOLATILE_KEYS = {"progress"}
PIPELINE_KEYS = {"out", "runs", "run_dir", "stages", "description"}
# Artifact kinds that carry timings differing on every run (finetune metrics, plots, verify and bench
# reports); what later stages consume is the rest.
REPORT_KINDS = {"metrics", "plot", "report"}
# Why a step was skipped; the end-of-pipeline line counts each (also when 0).
UNCHANGED = "inputs unchanged"
UNAVAILABLE = "backend not available here"
SKIP_REASONS = (UNCHANGED, UNAVAILABLE)


@dataclass(frozen=True)
class StageSpec:
    """How the pipeline runs a stage: the stage's CLI command (its long options are the step's keys),
    the command module's ``config_from_params``, the stage function, and the option (by its key, e.g.
    ``out``) or positional argument (``run_dir``) that the pipeline fills with the run directory.
    ``edgexfer.commands.run.pipeline_stages`` lists them."""

    command: click.Command
    config_from_params: Callable[[Dict[str, Any], bool], Any]
    run: Callable[[Any], Any]
    run_dir_param: str


@dataclass
class Step:
    """One stage invocation in one run directory; ``reason`` says why it runs or is skipped."""

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
    detail: str = ""
    result: Any = None
    seconds: float = 0.0

    @property
    def why(self) -> str:
        """The reason with its detail, e.g. 'backend not available here: tensorrt does not import'."""
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


@dataclass
class PipelineResult:
    """What :func:`run_pipeline` did: the steps (run or skipped) and the run directories."""

    out: Path
    runs: Dict[str, Path]
    steps: List[Step] = field(default_factory=list)

    @property
    def summary_path(self) -> Path:
        """Where :func:`write_summary` puts the Markdown summary."""
        return self.out / "summary.md"

    def skip_counts(self) -> Dict[str, int]:
        """Skipped steps per reason, from each step's recorded reason: every reason in SKIP_REASONS
        (0 included), then any other reason that occurred."""
        counts = dict.fromkeys(SKIP_REASONS, 0)
        for step in self.steps:
            if step.action == "skip":
                counts[step.reason] = counts.get(step.reason, 0) + 1
        return counts


def parse_pipeline(data: Mapping[str, Any], base_dir: Path, stage_names: Sequence[str]) -> tuple:
    """Validate a pipeline mapping; return (out dir, {run name: {stage: options or [options]}})."""
    check_keys(data, PIPELINE_KEYS, "the pipeline file")
    if "runs" in data and ("stages" in data or "run_dir" in data):
        raise ConfigError("the pipeline file has both 'runs' and 'stages'/'run_dir'; use one form")
    if "runs" in data:
        out = Path(str(data.get("out", "runs/pipeline")))
        runs = data["runs"]
        if not isinstance(runs, Mapping) or not runs:
            raise ConfigError("'runs' must map run names to their stages, e.g. runs: {main: {finetune: {...}}}")
    elif "stages" in data:
        run_dir = Path(str(data.get("run_dir", "runs/pipeline")))
        out, runs = run_dir.parent, {run_dir.name: data["stages"]}
    else:
        raise ConfigError("the pipeline file needs 'runs:' (named run directories) or 'stages:' with 'run_dir:'")
    if not out.is_absolute():
        out = base_dir / out
    parsed: Dict[str, Dict[str, Any]] = {}
    for run_name, stages in runs.items():
        if not isinstance(stages, Mapping) or not stages:
            raise ConfigError(f"run '{run_name}' must map stage names to options, e.g. finetune: {{...}}")
        check_keys(stages, stage_names, f"run '{run_name}'")
        parsed[str(run_name)] = {stage: stages[stage] for stage in stage_names if stage in stages}
    return out, parsed


def plan_steps(out: Path, runs: Mapping[str, Mapping[str, Any]]) -> List[Step]:
    """Expand runs into ordered steps (a list under a stage gives one step per entry)."""
    steps = []
    for run_name, stages in runs.items():
        for stage, options in stages.items():
            entries = options if isinstance(options, list) else [options]
            for index, entry in enumerate(entries):
                entry = {} if entry is None else entry
                if not isinstance(entry, Mapping):
                    raise ConfigError(f"run '{run_name}' stage '{stage}' options must be a mapping, "
                                      f"got {type(entry).__name__}")
                entry = dict(entry)
                when_available = entry.pop("when_available", False)
                if not isinstance(when_available, bool):
                    raise ConfigError(f"run '{run_name}' stage '{stage}': when_available must be true or false")
                if when_available and stage != "build":
                    raise ConfigError(f"run '{run_name}' stage '{stage}': when_available applies to build "
                                      "steps only; remove it")
                key = stage if len(entries) == 1 else f"{stage}:{index}"
                steps.append(Step(run=run_name, stage=stage, key=key, run_dir=out / run_name, options=entry,
                                  when_available=when_available))
    return steps


def _weights_run(step: Step) -> Optional[str]:
    """The run a finetune step starts from (``weights: "@run"``), else None."""
    weights = step.options.get("weights") if step.stage == "finetune" else None
    return weights[1:] if isinstance(weights, str) and weights.startswith("@") else None


def _params(step: Step, spec: StageSpec, weights: Optional[str] = None) -> Dict[str, Any]:
    """The step's options parsed by its stage's command, as its command line would give them."""
    options = dict(step.options) if weights is None else {**step.options, "weights": weights}
    where = f"run '{step.run}' stage '{step.stage}'"
    return command_params(spec.command, options, {spec.run_dir_param: str(step.run_dir)}, where)


def _config(step: Step, spec: StageSpec, params: Dict[str, Any], progress: bool) -> Any:
    """The stage config the command would build from ``params`` (its ``config_from_params``)."""
    try:
        return spec.config_from_params(params, progress)
    except ConfigError as exc:
        raise ConfigError(f"run '{step.run}' stage '{step.stage}': {exc}") from exc


def _resolved_weights(step: Step, run_dirs: Mapping[str, Path]) -> Optional[str]:
    """The checkpoint path a ``weights: "@run"`` reference names (that run must have finished)."""
    source = _weights_run(step)
    if source is None:
        return None
    manifest = Manifest.open(run_dirs[source])
    manifest.require("checkpoint")
    return str(manifest.path_of("checkpoint"))


def _validate(steps: List[Step], stages: Mapping[str, StageSpec], run_names: List[str],
              progress: bool, force: Sequence[str]) -> None:
    """Every step's config, before anything runs: a typo in 'verify' must not surface after ten minutes
    of fine-tuning. Sets build steps' keys (one per artifact they make)."""
    for step in steps:
        source = _weights_run(step)
        earlier = run_names[:run_names.index(step.run)]
        if source is not None and source not in earlier:
            raise ConfigError(f"run '{step.run}' finetune weights '@{source}' names no run listed before "
                              f"it; earlier runs: {', '.join(earlier) or 'none'}")
    # every step's keys and value types first, then the configs; checkpoints of '@run' sources do not
    # exist yet: "none" stands in for them here
    params = [_params(s, stages[s.stage], "none" if _weights_run(s) else None) for s in steps]
    configs = [_config(s, stages[s.stage], p, progress) for s, p in zip(steps, params)]
    seen: Set[Tuple[str, str]] = set()
    for step, config in zip(steps, configs):
        if step.stage == "build":
            step.key = f"build:{config.artifact_name}"
        if (step.run, step.key) in seen:
            raise ConfigError(f"run '{step.run}' has two {step.stage} steps that make {step.key}; keep one")
        seen.add((step.run, step.key))
    names = set(stages) | {s.key for s in steps} | {"all"}
    unknown = [f for f in force if f not in names]
    if unknown:
        raise ConfigError(f"--force '{unknown[0]}' names no stage; choose from {', '.join(stages)} or all")


def _fingerprint(step: Step, stage_names: Sequence[str]) -> str:
    """Hash of the step's config and of every artifact earlier stages of its run recorded."""
    config = {k: v for k, v in to_dict(step.config).items() if k not in VOLATILE_KEYS}
    upstream: Dict[str, str] = {}
    if (step.run_dir / "manifest.json").exists():
        manifest = Manifest.open(step.run_dir)
        earlier = set(stage_names[:list(stage_names).index(step.stage)])
        upstream = {name: art.sha256 for name, art in manifest.artifacts.items()
                    if art.stage in earlier and art.kind not in REPORT_KINDS}
    extra = {}
    weights = config.get("weights")
    if step.stage == "finetune" and isinstance(weights, str) and Path(weights).is_file():
        extra["weights_sha256"] = sha256_file(weights)
    return sha256_json({"stage": step.stage, "config": config, "upstream": upstream, "extra": extra})


def _decide(step: Step, force: Sequence[str]) -> None:
    """Set ``step.action`` to run or skip, with the reason."""
    step.detail = ""
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
            step.action, step.reason = "skip", UNCHANGED


def _unavailable(step: Step) -> str:
    """For a ``when_available`` build step: why its backend cannot run here ('' when it can)."""
    if not step.when_available:
        return ""
    from edgexfer.backends.base import get_backend

    ok, reason = get_backend(step.config.backend).availability()
    return "" if ok else reason


def _made_by(artifact: Any, step: Step) -> bool:
    if artifact.stage != step.stage:
        return False
    if step.stage == "build":
        return step.key == f"build:{artifact.name}"
    return True


def run_pipeline(pipeline: Mapping[str, Any], stages: Mapping[str, StageSpec], base_dir: Path = Path("."),
                 force: Sequence[str] = (), dry_run: bool = False, progress: bool = True,
                 on_step: Optional[Callable[[Step], None]] = None) -> PipelineResult:
    """Run (or with ``dry_run`` only plan) every step in order; return what was done. ``stages`` maps
    each stage name, in pipeline order, to how it runs (``edgexfer.commands.run.pipeline_stages()``)."""
    stage_names = list(stages)
    out, runs = parse_pipeline(pipeline, base_dir, stage_names)
    steps = plan_steps(out, runs)
    run_dirs = {name: out / name for name in runs}
    _validate(steps, stages, list(runs), progress, force)
    result = PipelineResult(out=out, runs=run_dirs)
    for step in steps:
        source = _weights_run(step)
        if dry_run and source is not None and not (run_dirs[source] / "manifest.json").exists():
            weights: Optional[str] = "none"  # planning only: the source run has not been trained yet
        else:
            weights = _resolved_weights(step, run_dirs)
        spec = stages[step.stage]
        step.config = _config(step, spec, _params(step, spec, weights), progress)
        step.fingerprint = _fingerprint(step, stage_names)
        _decide(step, force)
        unavailable = _unavailable(step)
        if unavailable:
            step.action, step.reason, step.detail = "skip", UNAVAILABLE, unavailable
        if on_step:
            on_step(step)
        result.steps.append(step)
        if dry_run or step.action == "skip":
            continue
        started = time.perf_counter()
        step.result = spec.run(step.config)
        step.seconds = time.perf_counter() - started
        step.fingerprint = _fingerprint(step, stage_names)  # upstream is unchanged by this step; for safety
        with Manifest.update(step.run_dir, create=True) as manifest:
            manifest.data.setdefault("pipeline", {})[step.key] = step.fingerprint
    return result


def write_summary(result: PipelineResult, transfer: Optional[str] = None, baseline: Optional[str] = None) -> str:
    """Write the Markdown summary of the runs (see :mod:`edgexfer.summary`) to ``result.summary_path``
    and return it; ``transfer``/``baseline`` name two runs whose fine-tuning results are compared."""
    from edgexfer.summary import summary_markdown

    text = summary_markdown(result.runs, transfer=transfer, baseline=baseline)
    atomic_write_text(result.summary_path, text)
    return text


# The demo's runs (edgexfer/assets/demo.yaml): the transferred one and the one trained from scratch.
DEMO_TRANSFER, DEMO_BASELINE = "target", "scratch"


def demo_pipeline(out: Path, quick: bool = False) -> Dict[str, Any]:
    """The built-in demo config (edgexfer/assets/demo.yaml) with ``out`` and calibration resolved;
    ``quick``: one epoch on few images (a smoke test, not the story)."""
    package = Path(__file__).resolve().parent
    data = load_yaml(package / "assets" / "demo.yaml")
    data["out"] = str(out)
    calib = package.parent / "calibration" / "fashion-mnist"
    target = data["runs"][DEMO_TRANSFER]
    if calib.is_dir():
        target["export"]["calib"] = str(calib)
    else:  # an installed (non-checkout) edgexfer: calibrate on the run's own training split
        target["export"].pop("calib", None)
    if quick:
        for run_cfg in data["runs"].values():
            run_cfg["finetune"].update(epochs=1, max_per_class=60)
        target["export"]["calib_size"] = 64
        target["export"]["eval_size"] = 100
    return data
