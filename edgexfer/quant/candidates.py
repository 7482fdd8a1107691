"""Quantizers as candidates: one small interface, and the one place that chooses among them.

A :class:`Quantizer` says which export targets it serves, whether it can run here (and which extra to
install when not), and turns the float model plus edgexfer's calibration set into a QDQ ONNX candidate
(:meth:`Quantizer.quantize`). edgexfer's own recipe (:mod:`edgexfer.quant.recipe_quantizer`) is one
candidate, NNCF (:mod:`edgexfer.quant.nncf_quantizer`, optional extra ``edgexfer[nncf]``) another; each
is imported only when asked for.

The export stage scores every candidate of a target on that target's own runtime
(:mod:`edgexfer.quant.scoring`) and :func:`choose` keeps one: accuracy first (top-1 agreement with the
float model and top-1 on held-out images, each within :data:`ACCURACY_TIE_POINTS` of the best counts as
level), then the lowest p50 latency among the level ones, then the order of :data:`QUANTIZERS`.
"""

from __future__ import annotations

import abc
import functools
import importlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgexfer.errors import BackendUnavailableError, ConfigError, ParityError

# name -> "module:Class", in tie-break order; modules are imported only when the quantizer is used.
QUANTIZERS: Dict[str, str] = {
    "edgexfer": "edgexfer.quant.recipe_quantizer:RecipeQuantizer",
    "edgexfer-bc": "edgexfer.quant.recipe_quantizer:BiasCorrectedRecipeQuantizer",
    "nncf": "edgexfer.quant.nncf_quantizer:NncfQuantizer",
    "modelopt": "edgexfer.quant.modelopt_quantizer:ModelOptQuantizer",
    # competes only when asked (export --qat-epochs N): it trains
    "edgexfer-qat": "edgexfer.quant.qat_quantizer:QatQuantizer",
}
AUTO = "auto"
QUANTIZER_CHOICES: Tuple[str, ...] = (AUTO,) + tuple(QUANTIZERS)
# Two candidates whose agreement and top-1 each differ by at most this many points are level on accuracy
# and latency decides (about one standard error of a paired difference on 3,000 held-out images).
ACCURACY_TIE_POINTS = 0.2


@dataclass
class QuantizeRequest:
    """What every quantizer gets for one export: the float model, the calibration set (already through
    the model's own preprocessing), the held-out slice it is judged on, and a memo shared by targets."""

    float_path: Path
    prepared: Path  # the float model after ONNX Runtime's pre-processing; guard layer names refer to it
    work_dir: Path
    calib: Any  # edgexfer.quant.calibration.CalibrationSet
    eval_inputs: np.ndarray
    eval_labels: np.ndarray
    float_logits: np.ndarray
    max_drop: Optional[float] = None
    batch_size: int = 64
    make_job: Optional[Callable[[], Any]] = None  # the recipe quantizer's QuantizeJob (ranges on first use)
    memo: Dict[Any, Any] = field(default_factory=dict)
    # layers edgexfer's accuracy guard kept in float, by target (other quantizers take them as ignored scope)
    float_layers: Dict[str, List[str]] = field(default_factory=dict)
    # the current target's judge (edgexfer.backends.int8_judge.Int8Judge): where targets scored on ONNX
    # Runtime (cpu, tensorrt) run their candidates, a TensorRT engine when TensorRT is here; None: ONNX Runtime
    judge: Any = None
    # quantizers that compete only when asked (``Quantizer.on_request``), here asked for, and QAT's job
    asked: Tuple[str, ...] = ()
    qat: Any = None  # edgexfer.quant.qat_quantizer.QatJob

    @functools.cached_property
    def job(self) -> Any:
        """The recipe quantizer's job, made once per export (its calibration ranges are the costly part)."""
        if self.make_job is None:
            raise RuntimeError("this QuantizeRequest has no make_job")
        return self.make_job()


@dataclass
class CandidateModel:
    """One quantizer's QDQ ONNX model for one target, and what the quantizer records about it."""

    quantizer: str
    target: str
    model: Any  # onnx.ModelProto
    path: Path  # the model written into the request's work folder (runtimes load files)
    excluded: List[str] = field(default_factory=list)  # layers kept in float
    details: Dict[str, Any] = field(default_factory=dict)
    # the logits its quantizer scored it by (on details["eval_images"] held-out images, details["scored_on"])
    logits: Optional[np.ndarray] = field(default=None, repr=False)


@dataclass
class CandidateScore:
    """A candidate measured on the target's runtime: accuracy on the held-out slice, batch-1 latency."""

    quantizer: str
    runtime: str
    top1: float  # percent
    agreement: float  # fraction of images whose top-1 class matches the float model's
    snr_db: float
    drop: float  # float top-1 minus this top-1, points
    images: int
    latency_ms: Optional[float] = None  # p50, batch 1; None when there was nothing to choose between
    logits: Optional[np.ndarray] = field(default=None, repr=False)  # on the held-out images (the evidence reuses)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-safe scores for the manifest."""
        return {
            "runtime": self.runtime,
            "top1": round(self.top1, 4),
            "agreement": round(self.agreement, 6),
            "snr_db": round(self.snr_db, 3),
            "drop": round(self.drop, 4),
            "images": self.images,
            "latency_p50_ms": None if self.latency_ms is None else round(self.latency_ms, 4),
        }


class Quantizer(abc.ABC):
    """One way of making an INT8 QDQ ONNX model from the float model and edgexfer's calibration set."""

    name: str = "quantizer"
    targets: Tuple[str, ...] = ()  # the export targets (``--target``) it serves
    extra: str = ""  # the pip extra that installs it ("" when edgexfer's own dependencies suffice)
    on_request: bool = False  # True: competes under ``auto`` only when the export asks for it (QAT)

    def availability(self) -> Tuple[bool, str]:
        """(usable here, why not). Must not raise."""
        return True, ""

    @abc.abstractmethod
    def quantize(self, target: str, request: QuantizeRequest) -> CandidateModel:
        """Quantize the request's float model for ``target``; write the model under ``request.work_dir``."""


def installed_version(distribution: str) -> str:
    """The installed version of the pip ``distribution`` ('' when it is not installed), without importing it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return ""


def package_availability(module: str, distribution: str, minimum: Tuple[int, ...]) -> Tuple[bool, str]:
    """(usable, why) of an optional quantizer package: ``module`` importable (checked with ``find_spec``, not
    imported: the vendor packages are slow to import) and ``distribution`` at least version ``minimum``."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        return False, f"{distribution} is not installed"
    found = installed_version(distribution)
    numbers = tuple(int(part) for part in found.split(".")[: len(minimum)] if part.isdigit())
    if numbers < minimum:
        return False, f"{distribution} {found} is older than {'.'.join(map(str, minimum))}"
    return True, f"{distribution} {found}"


def get_quantizer(name: str) -> Quantizer:
    """A quantizer by name (its module imported now); ConfigError naming the known ones otherwise."""
    if name not in QUANTIZERS:
        raise ConfigError(f"unknown --quantizer '{name}'; choose one of {', '.join(QUANTIZER_CHOICES)}")
    module_name, class_name = QUANTIZERS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)()


def serving(target: str) -> List[str]:
    """The quantizers that serve ``target``, in tie-break order."""
    return [name for name in QUANTIZERS if target in get_quantizer(name).targets]


def check_choice(choice: str, targets: Sequence[str]) -> None:
    """Before anything is written: a named quantizer must serve every asked target and be installed."""
    if choice == AUTO:
        return
    quantizer = get_quantizer(choice)
    foreign = [t for t in targets if t not in quantizer.targets]
    if foreign:
        raise ConfigError(
            f"--quantizer {choice} serves --target {'/'.join(quantizer.targets)}, not {', '.join(foreign)}; "
            f"use --quantizer {AUTO} or --target {quantizer.targets[0]}"
        )
    ok, reason = quantizer.availability()
    if not ok:
        raise BackendUnavailableError(
            f"--quantizer {choice} is not usable here ({reason}); pip install 'edgexfer[{quantizer.extra}]'"
        )


def quantizers_for(target: str, choice: str, asked: Sequence[str] = ()) -> Tuple[List[Quantizer], Dict[str, str]]:
    """(the quantizers that compete for ``target`` under ``--quantizer choice``, {name: why not} for the
    ones ``auto`` left out because they are not installed); on-request ones only when in ``asked``."""
    if choice != AUTO:
        return [get_quantizer(choice)], {}
    chosen, missing = [], {}
    for name in serving(target):
        quantizer = get_quantizer(name)
        if quantizer.on_request and name not in asked:
            continue
        ok, reason = quantizer.availability()
        if ok:
            chosen.append(quantizer)
        else:
            missing[name] = f"{reason}; pip install 'edgexfer[{quantizer.extra}]'"
    return chosen, missing


def choose(scores: Sequence[CandidateScore], max_drop: Optional[float] = None,
           tie_points: float = ACCURACY_TIE_POINTS) -> Tuple[CandidateScore, str]:
    """(the kept candidate, why) by the rule in the module docstring; candidates over ``max_drop`` are out
    (ParityError when that leaves none)."""
    if not scores:
        raise ValueError("choose() needs at least one candidate")
    eligible = [s for s in scores if max_drop is None or s.drop <= max_drop]
    if not eligible:
        raise ParityError(
            f"no INT8 candidate meets --max-drop {max_drop}: "
            + ", ".join(f"{s.quantizer} drop {s.drop:.2f}" for s in scores)
            + "; raise --max-drop or --max-fallback, or calibrate with more representative images"
        )
    best_agreement = max(s.agreement for s in eligible)
    best_top1 = max(s.top1 for s in eligible)
    level = [
        s for s in eligible
        if 100.0 * (best_agreement - s.agreement) <= tie_points + 1e-9 and best_top1 - s.top1 <= tie_points + 1e-9
    ]
    if not level:  # one is best on agreement, another on top-1, each beyond the tie: agreement first
        level = [max(eligible, key=lambda s: (s.agreement, s.top1))]
    order = {s.quantizer: i for i, s in enumerate(scores)}
    winner = min(level, key=lambda s: (_latency_key(s), order[s.quantizer]))
    if len(scores) == 1:
        return winner, "the only candidate"
    others = [s.quantizer for s in scores if s is not winner]
    if len(level) == 1:
        why = f"most accurate (agreement {winner.agreement:.4f}, top-1 {winner.top1:.2f})"
    elif _latency_key(winner) < math.inf:
        why = f"level on accuracy (within {tie_points} points) and fastest (p50 {winner.latency_ms:.2f} ms)"
    else:
        why = "level on accuracy and first in order (no latency measured)"
    out = [s.quantizer for s in scores if all(s is not e for e in eligible)]
    return winner, why + f" vs {', '.join(others)}" + (f" ({', '.join(out)} over --max-drop)" if out else "")


def _latency_key(score: CandidateScore) -> float:
    return math.inf if score.latency_ms is None else score.latency_ms
