"""The verify stage: accuracy parity and latency of every built artifact against the float reference.

For each built artifact (``<backend>_<precision>`` records of the build stage) and the torch float
reference, the same labelled images are run batched, each with the input the artifact takes (float
NCHW, or uint8 pixels for ``--uint8-input`` models). Per artifact it reports top-1/top-5, the drop
against the reference with a paired-bootstrap confidence interval and McNemar's test, prediction
agreement, per-class deltas, logit cosine similarity and SNR, and latency percentiles. A gate
(``max_drop`` points of top-1, ``min_agreement`` percent) fails with :class:`ParityError` (exit 3);
an artifact that cannot be loaded or run fails with :class:`ArtifactError` (exit 2). Either way
``verify.json``, the Markdown report and the plots are written first, for the artifacts that ran.

The schema of ``verify.json`` is documented in ``docs/verify-schema.md``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from edgexfer.errors import ArtifactError, BackendUnavailableError, ConfigError, EdgexferError, ParityError
from edgexfer.stages.verify_data import InputCache, Target, built_targets, load_samples, subset_indices

log = logging.getLogger(__name__)

VERIFY_SCHEMA_VERSION = 1
TOPK = 5


@dataclass(frozen=True)
class VerifyConfig:
    """Options of ``edgexfer verify``. ``max_drop`` is in top-1 points, ``min_agreement`` in percent."""

    run_dir: Path
    data: Optional[Path] = None
    backends: Optional[Tuple[str, ...]] = None
    artifacts: Optional[Tuple[str, ...]] = None
    max_drop: Optional[float] = None
    min_agreement: Optional[float] = None
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
            raise ConfigError(f"bootstrap resamples must be >= 100, got {self.bootstrap_resamples}")
        for name in ("backends", "artifacts"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))

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


@dataclass
class VerifyResult:
    """What verify wrote and concluded."""

    json_path: Path
    report_path: Path
    plots: List[Path]
    passed: bool
    data: Dict[str, Any] = field(repr=False, default_factory=dict)


# ---- running one artifact ------------------------------------------------------------------------
def run_logits(runner: Any, inputs: InputCache, batch_size: int, progress: bool, desc: str) -> np.ndarray:
    """Logits of every cached image through ``runner`` (batched, in the runner's input format)."""
    from tqdm import tqdm

    dtype = getattr(runner, "input_dtype", np.float32)
    layout = getattr(runner, "input_layout", "NCHW")
    max_batch = getattr(runner, "max_batch", None)
    step = min(batch_size, int(max_batch)) if max_batch else batch_size
    chunks = []
    for start in tqdm(
        range(0, len(inputs), step), desc=desc, unit="batch", disable=not progress, leave=False
    ):
        chunks.append(
            np.asarray(runner.infer(inputs.batch(start, start + step, dtype, layout)), dtype=np.float32)
        )
    return np.concatenate(chunks, axis=0)


def measure_latency(runner: Any, inputs: InputCache, config: VerifyConfig) -> Dict[str, Any]:
    """Latency stats of ``runner.infer`` on the first ``latency_batch`` images (same for every artifact)."""
    from edgexfer.metrics import latency_stats
    from edgexfer.timing import measure

    count = min(config.latency_batch, len(inputs))
    batch = inputs.batch(
        0, count, getattr(runner, "input_dtype", np.float32), getattr(runner, "input_layout", "NCHW")
    )
    samples = measure(lambda: runner.infer(batch), config.timing())
    return latency_stats(samples, batch_size=count)


def compare(
    ref_logits: np.ndarray, logits: np.ndarray, labels: np.ndarray, num_classes: int, config: VerifyConfig
) -> Dict[str, Any]:
    """Accuracy, paired statistics and logit similarity of one artifact against the reference."""
    from edgexfer import metrics as m

    k = min(TOPK, num_classes)
    ref1, oth1 = m.topk_correct(ref_logits, labels, 1), m.topk_correct(logits, labels, 1)
    ref5, oth5 = m.topk_correct(ref_logits, labels, k), m.topk_correct(logits, labels, k)
    ci = m.bootstrap_drop_ci(ref1, oth1, config.bootstrap_resamples, config.confidence, config.seed)
    ci5 = m.bootstrap_drop_ci(ref5, oth5, config.bootstrap_resamples, config.confidence, config.seed)
    pred_ref, pred = ref_logits.argmax(axis=1), logits.argmax(axis=1)
    agree = m.agreement(pred_ref, pred)
    cosine = m.cosine_similarity(ref_logits, logits)
    return {
        "accuracy": {
            "top1": float(100.0 * oth1.mean()),
            "top5": float(100.0 * oth5.mean()),
            "top5_k": k,
            "top1_drop": ci.drop,
            "top1_drop_ci": [ci.low, ci.high],
            "top5_drop": ci5.drop,
            "top5_drop_ci": [ci5.low, ci5.high],
            "confidence": ci.confidence,
            "bootstrap_resamples": ci.resamples,
        },
        "mcnemar": m.mcnemar(ref1, oth1).to_dict(),
        "agreement": {
            "agreement_pct": 100.0 * agree,
            "flip_rate_pct": 100.0 * (1.0 - agree),
            "flips": int(np.count_nonzero(pred_ref != pred)),
        },
        "per_class": {
            "accuracy": m.nan_to_none(m.per_class_accuracy(pred, labels, num_classes)),
            "delta": m.nan_to_none(m.per_class_delta(pred_ref, pred, labels, num_classes)),
        },
        "logits": {
            "cosine_mean": float(cosine.mean()),
            "cosine_min": float(cosine.min()),
            "snr_db": m.finite_or_none(m.snr_db(ref_logits, logits)),
            "max_abs_diff": float(np.abs(ref_logits - logits).max()),
        },
    }


def gate(entry: Dict[str, Any], config: VerifyConfig) -> List[str]:
    """Reasons an artifact fails the gate (empty when it passes or no gate is set)."""
    reasons = []
    drop = entry["accuracy"]["top1_drop"]
    if config.max_drop is not None and drop > config.max_drop:
        low, high = entry["accuracy"]["top1_drop_ci"]
        reasons.append(
            f"top-1 drop {drop:.2f} pts > --max-drop {config.max_drop:g} "
            f"({100 * config.confidence:.0f}% CI {low:.2f}..{high:.2f})"
        )
    agree = entry["agreement"]["agreement_pct"]
    if config.min_agreement is not None and agree < config.min_agreement:
        reasons.append(f"agreement {agree:.2f}% < --min-agreement {config.min_agreement:g}%")
    return reasons


def verify_target(
    target: Target, inputs: InputCache, ref_logits: np.ndarray, num_classes: int, config: VerifyConfig
) -> Dict[str, Any]:
    """Load, run, compare and time one artifact; an error becomes the entry's status, not an exception."""
    from edgexfer.backends.base import get_backend
    from edgexfer.manifest import Manifest

    entry: Dict[str, Any] = {
        "name": target.name,
        "backend": target.backend,
        "precision": target.precision,
        "path": str(target.path),
        "sha256": target.sha256,
        "error": None,
    }
    try:
        # Hash and provenance first: a stale artifact is reported like one that fails to load.
        Manifest.open(config.run_dir).require(target.name)
        backend = get_backend(target.backend)
        backend.require_available()
        options = {"threads": config.threads} if config.threads else {}
        with backend.load(target.path, options) as runner:
            entry["runner"] = runner.describe()
            entry["input"] = {"dtype": np.dtype(runner.input_dtype).name, "layout": runner.input_layout}
            logits = run_logits(runner, inputs, config.batch_size, config.progress, target.name)
            if logits.shape != ref_logits.shape:
                raise ArtifactError(
                    f"artifact '{target.name}' returns {logits.shape[1]} classes per image, "
                    f"the model has {num_classes}; rebuild it from this run's export"
                )
            entry.update(compare(ref_logits, logits, inputs.labels, num_classes, config))
            entry["latency"] = measure_latency(runner, inputs, config) if config.latency else None
    except BackendUnavailableError as exc:
        if target.requested:
            raise
        entry.update(status="skipped", error=str(exc))
        return entry
    except EdgexferError as exc:
        entry.update(status="error", error=str(exc))
        return entry
    except Exception as exc:
        log.debug("artifact %s failed", target.name, exc_info=True)
        entry.update(
            status="error", error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        )
        return entry
    reasons = gate(entry, config)
    entry["gate"] = {"passed": not reasons, "reasons": reasons}
    entry["status"] = "failed" if reasons else "passed"
    return entry


# ---- the stage -----------------------------------------------------------------------------------
def _reference(
    checkpoint_path: Path, inputs: InputCache, config: VerifyConfig, num_classes: int, class_names: List[str]
) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Logits, accuracy and latency of the torch float reference (the checkpoint)."""
    from edgexfer import metrics as m
    from edgexfer.backends.base import get_backend

    options = {"threads": config.threads} if config.threads else {}
    with get_backend("torch").load(checkpoint_path, options) as runner:
        logits = run_logits(runner, inputs, config.batch_size, config.progress, "torch reference")
        if logits.shape[1] != num_classes:
            raise ArtifactError(f"the checkpoint outputs {logits.shape[1]} classes but names {num_classes}")
        latency = measure_latency(runner, inputs, config) if config.latency else None
        described = runner.describe()
    k = min(TOPK, num_classes)
    pred = logits.argmax(axis=1)
    return logits, {
        "backend": "torch",
        "precision": "fp32",
        "path": str(checkpoint_path),
        "runner": described,
        "top1": m.topk_accuracy(logits, inputs.labels, 1),
        "top5": m.topk_accuracy(logits, inputs.labels, k),
        "top5_k": k,
        "per_class_accuracy": m.nan_to_none(m.per_class_accuracy(pred, inputs.labels, num_classes)),
        "latency": latency,
    }


def run_verify(config: VerifyConfig) -> VerifyResult:
    """Verify every selected artifact of a run; write verify.json, report.md and plots; gate.

    Raises :class:`ParityError` (exit 3) when an artifact fails the gate and :class:`ArtifactError`
    (exit 2) when one could not be loaded or run -- in both cases after writing the outputs.
    """
    from edgexfer.checkpoint import meta_from_payload, read_checkpoint_file
    from edgexfer.config import to_dict
    from edgexfer.manifest import Manifest, now_iso

    started = now_iso()
    manifest = Manifest.open(config.run_dir)
    checkpoint = manifest.require("checkpoint")
    checkpoint_path = manifest.path_of("checkpoint")
    meta = meta_from_payload(read_checkpoint_file(checkpoint_path), str(checkpoint_path))
    targets = built_targets(manifest, config)
    samples, source = load_samples(config, meta.class_names)
    indices = subset_indices(len(samples), config.limit)
    inputs = InputCache(samples, indices, meta.preprocess, config.progress)
    num_classes = len(meta.class_names)
    ref_logits, reference = _reference(checkpoint_path, inputs, config, num_classes, meta.class_names)
    entries = [verify_target(t, inputs, ref_logits, num_classes, config) for t in targets]
    data = _document(config, started, checkpoint, meta, source, len(samples), inputs, reference, entries)
    ran = [e["name"] for e in entries if e["status"] in ("passed", "failed")]
    result = write_outputs(config, data, ran)
    with Manifest.update(config.run_dir) as manifest:
        for entry in entries:
            if entry["name"] in ran:
                manifest.add_metrics(entry["name"], _artifact_metrics(entry))
        status = "done" if data["gate"]["passed"] and ran else "failed"
        manifest.record_stage(
            "verify", to_dict(config), metrics=data["summary"], status=status, started=started
        )
    _raise_for_outcome(data, result)
    return result


def _raise_for_outcome(data: Dict[str, Any], result: VerifyResult) -> None:
    """After the outputs are written: artifacts that could not be verified (exit 2), gate failures
    (exit 3), or nothing verified at all because every backend is unavailable here (exit 4)."""
    failures, errors = data["gate"]["failures"], data["gate"]["errors"]
    error: Optional[EdgexferError] = None
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        gate_note = f"; {len(failures)} gate failure(s) too" if failures else ""
        error = ArtifactError(
            f"artifact '{first['artifact']}' could not be verified: {first['reason']}{more}{gate_note}; "
            f"report for the others in {result.report_path}"
        )
    elif failures:
        first = failures[0]
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        error = ParityError(
            f"parity gate failed for '{first['artifact']}': {first['reason']}{more}; see {result.report_path}"
        )
    elif data["summary"]["skipped"] == len(data["artifacts"]):
        reason = data["artifacts"][0]["error"]
        error = BackendUnavailableError(f"no artifact could be verified on this machine: {reason}")
    if error is not None:
        error.result = result  # type: ignore[attr-defined]  # lets the CLI print the table first
        raise error


def _document(
    config: VerifyConfig,
    started: str,
    checkpoint: Any,
    meta: Any,
    source: str,
    total: int,
    inputs: InputCache,
    reference: Dict[str, Any],
    entries: List[Dict[str, Any]],
) -> Dict[str, Any]:
    """The verify.json document (schema in docs/verify-schema.md)."""
    from edgexfer import __version__
    from edgexfer.config import to_dict
    from edgexfer.hardware import machine_record
    from edgexfer.manifest import tool_versions

    num_classes = len(meta.class_names)
    failures = [
        {"artifact": e["name"], "reason": r}
        for e in entries
        if e["status"] == "failed"
        for r in e["gate"]["reasons"]
    ]
    errors = [{"artifact": e["name"], "reason": e["error"]} for e in entries if e["status"] == "error"]
    counts = {s: sum(e["status"] == s for e in entries) for s in ("passed", "failed", "error", "skipped")}
    # Nothing verified (every backend unavailable here) is not a pass.
    passed = not failures and not errors and counts["skipped"] < len(entries)
    data = {
        "schema_version": VERIFY_SCHEMA_VERSION,
        "kind": "edgexfer-verify",
        "created": started,
        "edgexfer_version": __version__,
        "run_dir": str(config.run_dir),
        "checkpoint": {"path": checkpoint.path, "sha256": checkpoint.sha256, "arch": meta.arch},
        "dataset": {
            "source": source,
            "num_images": int(len(inputs)),
            "total_images": int(total),
            "class_names": list(meta.class_names),
            "class_counts": np.bincount(inputs.labels, minlength=num_classes).tolist(),
            "preprocess": meta.preprocess.to_dict(),
        },
        "config": to_dict(config),
        "machine": machine_record(),
        "versions": tool_versions(),
        "reference": reference,
        "artifacts": entries,
        "gate": {
            "max_drop": config.max_drop,
            "min_agreement": config.min_agreement,
            "passed": passed,
            "failures": failures,
            "errors": errors,
        },
        "summary": counts,
    }
    return data


def _artifact_metrics(entry: Dict[str, Any]) -> Dict[str, Any]:
    """The few numbers worth keeping in the manifest next to the artifact."""
    metrics = {
        "verify_top1": entry["accuracy"]["top1"],
        "verify_top1_drop": entry["accuracy"]["top1_drop"],
        "verify_agreement_pct": entry["agreement"]["agreement_pct"],
        "verify_status": entry["status"],
    }
    if entry.get("latency"):
        metrics["verify_latency_p50_ms"] = entry["latency"]["p50_ms"]
    return metrics


def write_outputs(config: VerifyConfig, data: Dict[str, Any], verified: List[str]) -> VerifyResult:
    """Write verify.json, report.md and the plots atomically and record them in the manifest."""
    from edgexfer import report
    from edgexfer.fsutil import atomic_write_json, atomic_write_text
    from edgexfer.manifest import Manifest

    out = config.output_dir
    out.mkdir(parents=True, exist_ok=True)
    plots = report.verify_plots(data, out) if config.plots else []
    data["plots"] = [p.name for p in plots]
    json_path, report_path = out / "verify.json", out / "report.md"
    atomic_write_json(json_path, data)
    atomic_write_text(report_path, report.verify_markdown(data))
    inside = _is_inside(out, config.run_dir)
    if inside:
        with Manifest.update(config.run_dir) as manifest:
            inputs = ["checkpoint"] + verified
            manifest.add_artifact(
                "verify_json",
                json_path,
                kind="report",
                stage="verify",
                inputs=inputs,
                extra={"schema_version": VERIFY_SCHEMA_VERSION},
            )
            manifest.add_artifact("verify_report", report_path, kind="report", stage="verify", inputs=inputs)
            for plot in plots:
                manifest.add_artifact(f"verify_{plot.stem}", plot, kind="plot", stage="verify", inputs=inputs)
    return VerifyResult(
        json_path=json_path, report_path=report_path, plots=plots, passed=data["gate"]["passed"], data=data
    )


def _is_inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True
