"""Where ``export --int8`` scores a target's INT8 candidates: on the runtime that ships them, when it is here.

A candidate Q/DQ model is judged (calibration method chosen, accuracy guard applied) by the logits it
gives on held-out images. For ``--target cpu`` the shipped model runs on ONNX Runtime itself. For
``--target tensorrt`` what ships is a TensorRT engine built from the Q/DQ model: its INT8 kernels round
differently from ONNX Runtime's CPU kernels, and the layers the guard keeps out of INT8 run in fp16
there (``BuilderFlag.FP16`` beside ``INT8``), not in fp32. So a backend that builds its own INT8 from an
export target (:attr:`Backend.int8_target`) and sets :attr:`Backend.judges_int8` scores the candidates
itself (its ``int8_judge(home)``: build an engine, run it) when it is usable here; when it is not, ONNX
Runtime stands in and every record says so (``scored_on``, ``stand_in``).

A stand-in judges on at most :data:`STAND_IN_IMAGES` of the held-out images (an even stride,
:meth:`Int8Judge.judged`): TensorRT's symmetric S8 Q/DQ models run unfused on ONNX Runtime's CPU kernels,
about ten times slower than the cpu target's fused ones, and made most of the export's time (issue 13,
benchmarks/results/export_time_resnet18.md); a stand-in only approximates the engine anyway. The records
say on how many images (``eval_images``, and ``judged_images`` of ``held_out_images`` in ``scoring``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np

STAND_IN = "onnxruntime"
STAND_IN_IMAGES = 128


class Int8Judge:
    """Runs INT8 candidates of one target; a context manager (a judge may hold engines while it lives).

    ``scored_on`` is what the records say the candidates ran on; ``stand_in`` is True when that is
    ONNX Runtime standing in for the runtime that ships the model; ``float_precision`` is what the layers
    kept out of INT8 compute in there; ``facts`` are extra JSON-safe details for the manifest.
    """

    def __init__(
        self,
        target: str,
        scored_on: str,
        run: Callable[[Any, np.ndarray, int], np.ndarray],
        stand_in: bool = False,
        float_precision: str = "fp32",
        facts: Optional[Dict[str, Any]] = None,
        max_images: Optional[int] = None,
    ) -> None:
        self.target, self.scored_on, self.stand_in = target, scored_on, stand_in
        self.float_precision = float_precision
        self.facts: Dict[str, Any] = dict(facts or {})
        self.max_images = max_images  # None: every held-out image
        self._run = run

    def __enter__(self) -> "Int8Judge":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the judge holds (engines, staging folders). Default: nothing."""

    def logits(self, model: Any, inputs: np.ndarray, batch_size: int) -> np.ndarray:
        """Float32 logits of the candidate ``model`` (a ModelProto) on ``inputs``."""
        return self._run(model, inputs, batch_size)

    def judged(self, count: int) -> Optional[np.ndarray]:
        """Indices of the ``count`` held-out images this judge scores on (an even stride, as the slice may
        be ordered by class), recorded in :attr:`facts`; None when it takes them all."""
        if self.max_images is None or count <= self.max_images:
            return None
        self.facts.update(judged_images=self.max_images, held_out_images=count)
        return np.linspace(0, count - 1, self.max_images).round().astype(int)

    def describe(self) -> Dict[str, Any]:
        """What the manifest records about where the candidates were scored."""
        return {
            "scored_on": self.scored_on,
            "stand_in": self.stand_in,
            "float_layers_precision": self.float_precision,
            **self.facts,
        }


def _onnxruntime_logits(model: Any, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    from edgexfer.backends.onnxruntime import session_logits

    return session_logits(model, inputs, batch_size)


def onnxruntime_judge(target: str, stand_in_for: Optional[str] = None, reason: str = "") -> Int8Judge:
    """ONNX Runtime on the CPU, as the target's own runtime or standing in for ``stand_in_for``."""
    if stand_in_for is None:
        return Int8Judge(target, STAND_IN, _onnxruntime_logits)
    return Int8Judge(
        target,
        f"{STAND_IN} (stand-in for {stand_in_for})",
        _onnxruntime_logits,
        stand_in=True,
        facts={"stand_in_for": stand_in_for, "stand_in_reason": reason},
        max_images=STAND_IN_IMAGES,
    )


def judge_for_target(target: str, home: Path) -> Int8Judge:
    """The judge of ``target``'s candidates: the backend that builds int8 from it and judges its own INT8
    when that backend is usable here, else ONNX Runtime (a stand-in when such a backend exists).

    ``home`` is where the judge may keep state between runs (TensorRT's timing cache: the run's build
    folder, so ``edgexfer build`` starts from what export's engines already timed).
    """
    from edgexfer.backends.base import BACKENDS, get_backend

    for name in BACKENDS:
        backend = get_backend(name)
        if backend.int8_target != target or not backend.judges_int8:
            continue
        ok, reason = backend.availability()
        if ok:
            return backend.int8_judge(Path(home))
        return onnxruntime_judge(target, stand_in_for=name, reason=reason)
    return onnxruntime_judge(target)


def stand_in_for(name: str, backend: str) -> Optional[str]:
    """The backend an export artifact ``name`` is made for when ``backend`` only stands in for it
    (``onnx_int8_tensorrt`` run by ONNX Runtime), else None."""
    from edgexfer.backends.base import BACKENDS, get_backend

    owners = [b for b in BACKENDS if get_backend(b).int8_source == name]
    if not owners or backend in owners:
        return None
    return "/".join(owners)
