"""Scoring TensorRT INT8 candidates on TensorRT engines (see :mod:`edgexfer.backends.int8_judge`).

Each candidate Q/DQ model is built with the backend's own :meth:`TensorRTBackend.build` at precision int8
with the declared build defaults (what ``edgexfer build --precision int8`` ships) and run with its own
runner. ``int8_fp16_fallback`` is passed on, so in a weakly typed build (TensorRT 8.x-10.x) the
layers without Q/DQ, which include the ones the accuracy guard keeps out of INT8, may run in fp16
(``BuilderFlag.FP16`` set beside ``INT8``: "Enable FP16 layer selection", and TensorRT picks the lower
precision where it has a kernel and it is faster); they are judged that way, not in fp32. A strongly
typed build (TensorRT 11, or ``--strongly-typed`` on 10.x) takes precision from the ONNX tensor types
("Use explicit quantization with Strong Typing. Precision-control build flags are not required",
docs.nvidia.com TensorRT "Explicit Quantization"), so there those layers stay fp32, and the records say so.

Engines are built in staging folders under ``home`` (:data:`~edgexfer.backends.base.STAGING_SUFFIX`),
so the timing cache lands in ``home`` itself (:func:`~edgexfer.backends.base.build_home`) and is reused
by every later candidate and by ``edgexfer build``. A candidate scored twice (the best method is scored
again on the whole held-out slice) reuses its engine.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from edgexfer.backends.base import STAGING_SUFFIX
from edgexfer.backends.int8_judge import Int8Judge


class TensorRTInt8Judge(Int8Judge):
    """Builds one engine per distinct candidate (kept until :meth:`close`) and runs it."""

    def __init__(self, backend: Any, home: Path, options: Dict[str, Any]) -> None:
        super().__init__(backend.int8_target, "tensorrt", self._engine_logits)
        self.backend, self.home, self.options = backend, Path(home), dict(options)
        self.engines: Dict[str, Path] = {}
        self.builds = 0
        self._staging: List[Path] = []

    def close(self) -> None:
        """Remove the engines' staging folders (the timing cache stays in ``home``)."""
        for folder in self._staging:
            shutil.rmtree(folder, ignore_errors=True)
        self._staging, self.engines = [], {}

    def _engine(self, model: Any) -> Path:
        import onnx

        blob = model.SerializeToString()
        key = hashlib.sha256(blob).hexdigest()
        if key in self.engines:
            return self.engines[key]
        self.home.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".tensorrt_int8-judge.", suffix=STAGING_SUFFIX, dir=str(self.home)))
        self._staging.append(staging)
        source = staging / "candidate.onnx"
        onnx.save(model, str(source))
        result = self.backend.build(source, "int8", staging, dict(self.options))
        self.builds += 1
        flags = list(result.extra.get("builder_flags", []))
        typing = result.extra.get("typing")
        self.float_precision = "fp16" if "FP16" in flags else "fp32"
        self.scored_on = f"tensorrt {result.extra.get('tensorrt')} engine"
        self.facts = {
            "tensorrt": result.extra.get("tensorrt"),
            "gpu": result.extra.get("gpu"),
            "compute_capability": result.extra.get("compute_capability"),
            "typing": typing,
            "builder_flags": flags,
            "engine_builds": self.builds,
        }
        self.engines[key] = result.path
        return result.path

    def _engine_logits(self, model: Any, inputs: np.ndarray, batch_size: int) -> np.ndarray:
        engine = self._engine(model)
        with self.backend.load(engine) as runner:
            chunks = [runner.infer(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)]
        return np.concatenate(chunks).astype(np.float32)
