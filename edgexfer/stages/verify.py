"""The verify stage: accuracy parity and latency of every built artifact against the float reference.

For each built artifact (``<backend>_<precision>`` records of the build stage) and the float
reference (edgexfer.reference), the same labelled images are run batched, each with the input the artifact takes (float
NCHW, uint8 pixels for ``--uint8-input`` models, or for a raw-frame model (``--frame``, ``onnx_frame``
included by default) each image made into a frame of its size and channel order as predict makes it:
:class:`~edgexfer.stages.verify_data.FrameInputs`). Per artifact it reports top-1/top-5, the drop
against the reference with a paired-bootstrap confidence interval and McNemar's test, prediction
agreement, per-class deltas, logit cosine similarity and SNR (:mod:`edgexfer.parity`), and latency
percentiles. A gate (:class:`edgexfer.parity.Gates`: top-1 drop, on the point or its CI, agreement,
worst per-class drop, p99 latency, speed-up over torch) fails with :class:`VerifyFailed` (a
:class:`ParityError`, exit 3); a float reference that is not better than chance on the data
(:func:`edgexfer.parity.chance_check`) makes the verdict INCONCLUSIVE, never PASSED
(:class:`VerifyInconclusive`, exit 5); an artifact that cannot be loaded or run fails
with :class:`ArtifactError` (exit 2). Either way ``verify.json``, the Markdown report and the plots are
written first, for the artifacts that ran (:mod:`edgexfer.stages.verify_report`). Anything else an
artifact raises is a bug and is not caught: the CLI reports it as an internal error (exit 1).

The schema of ``verify.json`` is documented in ``docs/verify-schema.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from edgexfer.errors import (
    ArtifactError,
    BackendUnavailableError,
    ConfigError,
    EdgexferError,
    InconclusiveError,
    ParityError,
)
from edgexfer.stages.verify_data import (
    InputCache,
    Target,
    built_targets,
    load_samples,
    measure_latency,
    run_logits,
    subset_indices,
)


@dataclass(frozen=True)
class VerifyConfig:
    """Options of ``edgexfer verify``. The gates' units are those of :class:`edgexfer.parity.Gates`."""

    run_dir: Path
    data: Optional[Path] = None
    backends: Optional[Tuple[str, ...]] = None
    artifacts: Optional[Tuple[str, ...]] = None
    max_drop: Optional[float] = None
    min_agreement: Optional[float] = None
    gate_on: str = "point"
    max_class_drop: Optional[float] = None
    max_p99_ms: Optional[float] = None
    min_speedup: Optional[float] = None
    batch_size: int = 32
    limit: Optional[int] = None
    bootstrap_resamples: int = 2000
    confidence: float = 0.95
    seed: int = 0
    latency: bool = True
    latency_batch: int = 1
    warmup: int = 5
    min_iterations: int = 30
    min_time_s: float = 0.5
    max_time_s: float = 5.0
    threads: Optional[int] = None
    out_dir: Optional[Path] = None
    plots: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "run_dir", Path(self.run_dir))
        for name in ("data", "out_dir"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        for name in ("batch_size", "latency_batch", "min_iterations"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"verify {name} must be >= 1, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"verify --limit must be >= 1 image, got {self.limit}")
        if self.max_drop is not None and not 0.0 <= self.max_drop <= 100.0:
            raise ConfigError(f"--max-drop is in top-1 percentage points (0-100), got {self.max_drop}")
        if self.min_agreement is not None and not 0.0 <= self.min_agreement <= 100.0:
            raise ConfigError(f"--min-agreement is a percentage (0-100), got {self.min_agreement}")
        if not 0.5 <= self.confidence < 1.0:
            raise ConfigError(f"confidence must be in [0.5, 1), got {self.confidence}")
        if self.bootstrap_resamples < 100:
            raise ConfigError(f"--bootstrap resamples must be >= 100, got {self.bootstrap_resamples}")
        for name in ("backends", "artifacts"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))
        latency_gates = self.gates().latency_options  # checks the gates' values
        if latency_gates and not self.latency:
            raise ConfigError(f"{' and '.join(latency_gates)} need latency measured; drop --no-latency")

    def gates(self) -> Any:
        """The gates every artifact is judged by (:class:`edgexfer.parity.Gates`)."""
        from edgexfer.parity import Gates

        return Gates(self.max_drop, self.min_agreement, self.gate_on, self.max_class_drop, self.max_p99_ms,
                     self.min_speedup)

    @property
    def output_dir(self) -> Path:
        """Where verify.json, report.md and the plots go (default ``RUN_DIR/verify``)."""
        return self.out_dir or self.run_dir / "verify"

    def timing(self) -> Any:
        """The latency measurement settings."""
        from edgexfer.timing import TimingConfig

        return TimingConfig(
            warmup=self.warmup,
            min_iterations=self.min_iterations,
            min_time_s=self.min_time_s,
            max_time_s=max(self.max_time_s, 1e-3),
        )

    def load_options(self) -> Dict[str, Any]:
        """Options every runner is loaded with."""
        return {"threads": self.threads} if self.threads else {}


@dataclass
class VerifyResult:
    """What verify wrote and concluded; :meth:`raise_for_outcome` turns the conclusion into the error."""

    json_path: Path
    report_path: Path
    plots: List[Path]
    passed: bool
    data: Dict[str, Any] = field(repr=False, default_factory=dict)

    def outcome(self) -> Optional[EdgexferError]:
        """The error verify ends with, or None: artifacts that could not be verified (exit 2), gate
        failures (:class:`VerifyFailed`, exit 3), nothing verified because every backend is
        unavailable here (exit 4), or a reference no better than chance (:class:`VerifyInconclusive`, exit 5)."""
        failures, errors = self.data["gate"]["failures"], self.data["gate"]["errors"]
        if errors:
            first = errors[0]
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            gate_note = f"; {len(failures)} gate failure(s) too" if failures else ""
            return ArtifactError(
                f"artifact '{first['artifact']}' could not be verified: {first['reason']}{more}{gate_note}; "
                f"report for the others in {self.report_path}"
            )
        if failures:
            first = failures[0]
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            return VerifyFailed(
                f"parity gate failed for '{first['artifact']}': {first['reason']}{more}; see {self.report_path}",
                self,
            )
        if self.data["summary"]["skipped"] == len(self.data["artifacts"]):
            reason = self.data["artifacts"][0]["error"]
            return BackendUnavailableError(f"no artifact could be verified on this machine: {reason}")
        if self.data["verdict"]["status"] == "inconclusive":
            return VerifyInconclusive(f"verdict INCONCLUSIVE: {self.data['verdict']['reason']}; see {self.report_path}",
                                      self)
        return None

    def raise_for_outcome(self) -> None:
        """Raise :meth:`outcome` when there is one."""
        error = self.outcome()
        if error is not None:
            raise error


class VerifyFailed(ParityError):
    """An artifact failed the ``--max-drop`` / ``--min-agreement`` gate (exit 3); ``result`` holds what
    verify wrote, so a caller can show the table before the error."""

    def __init__(self, message: str, result: VerifyResult):
        super().__init__(message)
        self.result = result


class VerifyInconclusive(InconclusiveError):
    """Every gate passed but the float reference is not better than chance on the data (exit 5);
    ``result`` holds what verify wrote."""

    def __init__(self, message: str, result: VerifyResult):
        super().__init__(message)
        self.result = result


# ---- one artifact ----------------------------------------------------------------------------------
def verify_target(
    target: Target,
    manifest: Any,
    inputs: InputCache,
    ref_logits: np.ndarray,
    num_classes: int,
    config: VerifyConfig,
) -> Dict[str, Any]:
    """Load, run, compare and time one artifact (:func:`edgexfer.parity.judge_entry` then gives it its
    status). A bad artifact (an :class:`EdgexferError`) becomes the entry's status, not an exception; any
    other exception is a bug and propagates."""
    from edgexfer.backends.base import get_backend
    from edgexfer.parity import parity_entry

    entry: Dict[str, Any] = {
        "name": target.name,
        "backend": target.backend,
        "precision": target.precision,
        "path": str(target.path),
        "sha256": target.sha256,
        "error": None,
    }
    from edgexfer.backends.int8_judge import stand_in_for

    owner = stand_in_for(target.name, target.backend)  # onnx_int8_tensorrt run by ONNX Runtime
    if owner:
        entry["stand_in_for"] = owner
    try:
        # Hash and provenance first: a stale artifact is reported like one that fails to load. The one
        # manifest of this verify memoises hashes, so a shared input (checkpoint, ONNX) is hashed once.
        manifest.require(target.name)
        frame = _frame_of(target.path)
        feed: Any = inputs if frame is None else inputs.frames(frame)
        if frame is not None:
            entry["frame"] = frame.to_dict()
            entry["note"] = (f"takes raw {frame.text} {frame.channel_order.upper()} frames: each image was scaled to "
                             "cover the frame and centre-cropped (as predict feeds it), then the model's own graph "
                             "resized, cropped and normalised it; its figures include that preprocessing's difference.")
        backend = get_backend(target.backend)
        backend.require_available()
        with backend.load(target.path, config.load_options()) as runner:
            entry["runner"] = runner.describe()
            entry["input"] = {"dtype": np.dtype(runner.input_dtype).name, "layout": runner.input_layout}
            logits = run_logits(runner, feed, config.batch_size, config.progress, target.name)
            if logits.shape != ref_logits.shape:
                raise ArtifactError(
                    f"artifact '{target.name}' returns {logits.shape[1]} classes per image, "
                    f"the model has {num_classes}; rebuild it from this run's export"
                )
            entry.update(
                parity_entry(
                    ref_logits, logits, inputs.labels, num_classes,
                    config.bootstrap_resamples, config.confidence, config.seed,
                )
            )
            entry["latency"] = (
                measure_latency(runner, feed, config.latency_batch, config.timing()) if config.latency else None
            )
    except BackendUnavailableError as exc:
        if target.requested:
            raise
        entry.update(status="skipped", error=str(exc))
        return entry
    except EdgexferError as exc:
        entry.update(status="error", error=str(exc))
    return entry


def _frame_of(path: Any) -> Any:
    """The raw frame an artifact takes (:class:`edgexfer.frames.FrameSpec`, from its metadata), or None for
    a model fed preprocessed images. Unreadable metadata is None here: loading the artifact reports it."""
    from edgexfer.backends.sidecar import artifact_metadata
    from edgexfer.frames import frame_spec

    try:
        return frame_spec(artifact_metadata(path))
    except EdgexferError:
        return None


def _reference(
    model: Any, inputs: InputCache, config: VerifyConfig, num_classes: int
) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Logits, accuracy and latency of the float reference (:func:`edgexfer.reference.float_reference`:
    the checkpoint on torch, or the float ONNX model on ONNX Runtime where torch is not installed)."""
    from edgexfer.backends.base import get_backend
    from edgexfer.parity import reference_entry

    with get_backend(model.backend).load(model.path, model.load_options(config.load_options())) as runner:
        logits = run_logits(runner, inputs, config.batch_size, config.progress, "float reference")
        if logits.shape[1] != num_classes:
            raise ArtifactError(f"the {model.source} outputs {logits.shape[1]} classes but names {num_classes}")
        latency = (
            measure_latency(runner, inputs, config.latency_batch, config.timing()) if config.latency else None
        )
        described = runner.describe()
    return logits, {
        "backend": model.backend,
        "precision": "fp32",
        "path": str(model.path),
        **model.describe(),
        "runner": described,
        **reference_entry(logits, inputs.labels, num_classes),
        "latency": latency,
    }


# ---- the stage -----------------------------------------------------------------------------------
def verify_artifacts(config: VerifyConfig) -> VerifyResult:
    """Verify every selected artifact of a run; write verify.json, report.md and plots; record them.

    Gate failures and artifacts that could not be verified are in the result
    (:meth:`VerifyResult.outcome`), not raised: a caller can show the table first. Bad input that stops
    verify before any artifact runs (no run, nothing built, mismatched data) raises.
    """
    from edgexfer.config import to_dict
    from edgexfer.manifest import Manifest, now_iso
    from edgexfer.parity import chance_check, judge_entry
    from edgexfer.reference import float_reference
    from edgexfer.stages.verify_report import MEASURED, artifact_metrics, verify_document, write_outputs

    started = now_iso()
    manifest = Manifest.open(config.run_dir)
    meta = float_reference(manifest)  # the checkpoint, or the float ONNX model where torch is missing
    checkpoint = manifest.get("checkpoint" if manifest.has("checkpoint") else meta.artifact)
    targets = built_targets(manifest, config)
    samples, source = load_samples(config, meta.class_names)
    inputs = InputCache(samples, subset_indices(len(samples), config.limit), meta.preprocess, config.progress)
    num_classes = len(meta.class_names)
    ref_logits, reference = _reference(meta, inputs, config, num_classes)
    reference["chance"] = chance_check(ref_logits, inputs.labels, config.confidence).to_dict()
    gates = config.gates()
    gates.require_reference_latency(reference)
    entries = [
        judge_entry(verify_target(t, manifest, inputs, ref_logits, num_classes, config), gates, reference,
                    meta.class_names)
        for t in targets
    ]
    data = verify_document(config, started, checkpoint, meta, source, len(samples), inputs, reference, entries)
    ran = [e["name"] for e in entries if e["status"] in MEASURED]
    written = write_outputs(config, data, ran)
    with Manifest.update(config.run_dir) as manifest:
        for entry in entries:
            if entry["name"] in ran:
                manifest.add_metrics(entry["name"], artifact_metrics(entry))
        status = {"passed": "done", "inconclusive": "inconclusive"}.get(data["verdict"]["status"], "failed")
        manifest.record_stage("verify", to_dict(config), metrics=data["summary"], status=status, started=started)
    return VerifyResult(passed=data["gate"]["passed"], data=data, **written)


def run_verify(config: VerifyConfig) -> VerifyResult:
    """:func:`verify_artifacts`, then raise its outcome: :class:`VerifyFailed` (exit 3) when an artifact
    fails the gate, :class:`ArtifactError` (exit 2) when one could not be loaded or run,
    :class:`VerifyInconclusive` (exit 5) when the reference is at chance, always after writing the outputs."""
    result = verify_artifacts(config)
    result.raise_for_outcome()
    return result
