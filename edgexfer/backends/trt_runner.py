"""Running a TensorRT engine: the name-based execution API on device buffers (no pycuda).

The runner checks the engine's sidecar against this machine, deserialises (after setting the runtime's
DLA core and, for version-compatible engines, allowing the embedded lean runtime), reads the input's
optimization profile (min, opt, max) and binds every output. A batch is split into chunks of the
profile's maximum; a chunk below the profile's minimum is padded up to it and the padding is dropped
from the logits. Every ``set_input_shape`` / ``set_tensor_address`` result is checked, as Polygraphy's
TrtRunner does (backend/trt/runner.py @v10.3.0 L300-305), because both return False instead of raising.

``infer`` runs on one execution context; ``infer_stream`` (``bench --mode throughput``, ``predict``) keeps
several requests in flight on several contexts, each with its own CUDA stream and buffers, used round-robin,
results in input order (:mod:`edgexfer.backends.trt_lanes`, which also says what TensorRT requires of that).
"""

from __future__ import annotations

import logging
from pathlib import Path
from collections import deque
from typing import Any, Deque, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from edgexfer.backends import trt_devmem, trt_runtime
from edgexfer.backends.base import Runner
from edgexfer.backends.common import check_batch, layout_of_shape
from edgexfer.backends.trt_lanes import Lane, chunks, max_lanes
from edgexfer.backends.trt_portability import require_compatible
from edgexfer.errors import ArtifactError, StaleArtifactError

log = logging.getLogger(__name__)


class TensorRTRunner(Runner):
    """A deserialised engine with device buffers for its largest profile batch."""

    name = "tensorrt"

    def __init__(self, engine_path: Path, device_memory_provider: Optional[str] = None):
        self.engine_path = Path(engine_path)
        self.provider = device_memory_provider
        self.sidecar: Dict[str, Any] = {}
        self.warnings: List[str] = []
        self.min_batch = self.max_batch = 1
        self.output_names: List[str] = []
        self._objects: Dict[str, Any] = {}
        self._spatial: Tuple[Optional[int], Optional[int]] = (None, None)

    def activate(self) -> None:
        """Check the sidecar against this machine, deserialise, create the context and buffers."""
        from edgexfer.backends.sidecar import read_sidecar

        trt = trt_runtime.load_trt()
        if not self.engine_path.is_file():
            raise ArtifactError(f"engine '{self.engine_path}' does not exist")
        self.sidecar = read_sidecar(self.engine_path)
        built = dict(self.sidecar.get("build", {}))
        self.warnings = require_compatible(self.engine_path.name, built, trt_runtime.trt_machine(trt))
        for warning in self.warnings:
            log.warning("engine %s: %s", self.engine_path.name, warning)
        engine = self._deserialize(trt, built)
        self._read_io(trt, engine)
        self._objects = {"engine": engine, "lanes": [], "version": str(trt.__version__)}
        lane = self._new_lane()
        self._objects["context"], self._objects["memory"] = lane.context, lane.memory  # what infer() uses

    def _new_lane(self) -> Lane:
        """One more execution context with its own stream and buffers (:class:`Lane`)."""
        engine = self._objects["engine"]
        context = engine.create_execution_context()
        if context is None:  # out of device memory (Polygraphy checks it too: runner.py @v10.3.0 L203)
            have = len(self._objects["lanes"])
            raise ArtifactError(
                f"TensorRT could not create an execution context for '{self.engine_path.name}' "
                + (f"beside the {have} it has (try fewer requests in flight, --in-flight {have}) " if have else "")
                + "(out of GPU memory? see the TensorRT log above)"
            )
        lane = Lane(self, context, trt_devmem.device_memory(self.provider), self._item_in * self.max_batch)
        self._objects["lanes"].append(lane)
        return lane

    def _deserialize(self, trt: Any, built: Dict[str, Any]) -> Any:
        logger = trt_runtime.trt_logger(trt)
        trt_runtime.init_plugins(trt)
        runtime = trt.Runtime(logger)
        if built.get("dla_core") is not None:
            # trtexec sets the runtime's DLA core before deserialising (samples/common/sampleEngines.cpp
            # @v10.3.0 L116-119); it defaults to -1 (IRuntime::setDLACore, NvInferRuntime.h @8.5.2 L644).
            runtime.DLA_core = int(built["dla_core"])
        if built.get("version_compatible"):
            # "Application needs to opt into allowing deserialization of engines with embedded lean
            # runtime" (sampleEngines.cpp @v10.3.0 L104-107); the property exists from 8.6.
            runtime.engine_host_code_allowed = True
        engine = runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if engine is None:
            raise StaleArtifactError(
                f"TensorRT {trt.__version__} could not deserialise '{self.engine_path}' "
                f"(built with TensorRT {built.get('tensorrt')} on {built.get('gpu')}); "
                "rebuild it with 'edgexfer build RUN --backend tensorrt'"
            )
        return engine

    def _read_io(self, trt: Any, engine: Any) -> None:
        """Input name/dtype/layout/profile and the output names, from the engine itself."""
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1:
            raise ArtifactError(
                f"engine '{self.engine_path.name}' has {len(inputs)} inputs {inputs}; edgexfer runs "
                "classifiers with one image input"
            )
        if len(self.output_names) > 1 and "logits" not in self.output_names:
            raise ArtifactError(
                f"engine '{self.engine_path.name}' has outputs {self.output_names} and none named "
                "'logits'; edgexfer needs the class scores in an output called 'logits'"
            )
        self.input_name = inputs[0]
        self.logits_name = "logits" if "logits" in self.output_names else self.output_names[0]
        self.input_dtype = trt_runtime.numpy_dtype(trt, engine.get_tensor_dtype(self.input_name))
        self.output_dtypes = {
            n: np.dtype(trt_runtime.numpy_dtype(trt, engine.get_tensor_dtype(n))) for n in self.output_names
        }
        shape = [int(d) for d in engine.get_tensor_shape(self.input_name)]
        self.input_layout = layout_of_shape(shape)
        hw = shape[2:4] if self.input_layout == "NCHW" else shape[1:3]
        self._spatial = (hw[0], hw[1]) if all(d > 0 for d in hw) else (None, None)
        low, _, high = engine.get_tensor_profile_shape(self.input_name, 0)
        self.min_batch, self.max_batch = int(low[0]), int(high[0])
        self._item_in = int(np.prod([int(d) for d in high[1:]])) * np.dtype(self.input_dtype).itemsize

    def deactivate(self) -> None:
        """Wait for and free every lane (buffers, streams), then the contexts and engine (order matters)."""
        for lane in self._objects.get("lanes", []):
            lane.close()
        self._objects.clear()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run a batch in profile-sized chunks (the last one padded up to the profile's minimum)."""
        if not self._objects:
            raise RuntimeError("TensorRTRunner.infer called outside 'with runner:'")
        array = check_batch(
            batch, self.input_dtype, self.input_layout, self._spatial, f"engine '{self.engine_path.name}'"
        )
        return np.concatenate([self._run(chunk)[:count] for chunk, count in
                               chunks(array, self.min_batch, self.max_batch)])

    def _run(self, array: np.ndarray) -> np.ndarray:
        lane = self._objects["lanes"][0]
        lane.submit(array)
        return lane.collect()

    def default_in_flight(self) -> int:
        """Two contexts (one enqueued while the other's results come back) where contexts may share the
        engine's profile (TensorRT >= 9), else one."""
        return 2 if self.lane_limit(2) == 2 else 1

    def lane_limit(self, wanted: int) -> int:
        """``wanted`` contexts, or fewer where this TensorRT runs fewer at once on one engine
        (:func:`~edgexfer.backends.trt_lanes.max_lanes`)."""
        if not self._objects:
            raise RuntimeError("TensorRTRunner used outside 'with runner:'")
        limit = max_lanes(self._objects["version"], getattr(self._objects["engine"], "num_optimization_profiles", 1))
        return max(1, wanted if limit is None else min(wanted, limit))

    def infer_stream(self, batches: Iterable[np.ndarray], in_flight: int = 0) -> Iterator[np.ndarray]:
        """Logits of every batch in input order, ``in_flight`` execution contexts (0: two where TensorRT
        allows) each with its own stream and buffers, used round-robin: the oldest request is collected
        before its context takes the next chunk."""
        count = self.lane_limit(in_flight or self.default_in_flight())
        lanes = self._objects["lanes"]
        while len(lanes) < count:
            self._new_lane()
        where = f"engine '{self.engine_path.name}'"
        pending: Deque[Tuple[Lane, int, bool]] = deque()  # (lane, real rows, last chunk of its batch)
        done: List[np.ndarray] = []
        turn = 0
        try:
            for batch in batches:
                array = check_batch(batch, self.input_dtype, self.input_layout, self._spatial, where)
                pieces = chunks(array, self.min_batch, self.max_batch)
                for index, (chunk, rows) in enumerate(pieces):
                    lane = lanes[turn % count]
                    turn += 1
                    if lane.pending is not None:  # round-robin: it holds the oldest request
                        ready = self._collect(pending, done)
                        if ready is not None:
                            yield ready
                    lane.submit(chunk)
                    pending.append((lane, rows, index == len(pieces) - 1))
            while pending:
                ready = self._collect(pending, done)
                if ready is not None:
                    yield ready
        finally:
            for lane, _, _ in pending:  # stopped early: no request outlives this call
                if lane.pending is not None:
                    lane.collect()

    @staticmethod
    def _collect(pending: Deque[Tuple[Lane, int, bool]], done: List[np.ndarray]) -> Optional[np.ndarray]:
        """Collect the oldest request; the logits of its batch once its last chunk is in, else None."""
        lane, rows, last = pending.popleft()
        done.append(lane.collect()[:rows])
        if not last:
            return None
        logits = np.concatenate(done)
        done.clear()
        return logits

    def describe(self) -> Dict[str, Any]:
        """Runner facts plus the engine's build record, profile and warnings."""
        facts = super().describe()
        build = self.sidecar.get("build", {})
        lanes = self._objects.get("lanes") or []
        memory = lanes[0].memory if lanes else None
        facts.update(
            {
                "engine": str(self.engine_path),
                "tensorrt": build.get("tensorrt"),
                "gpu": build.get("gpu"),
                "precision": self.sidecar.get("precision"),
                "profile_batch": [self.min_batch, self.max_batch],
                "device_memory": getattr(memory, "name", self.provider),
                "device_memory_reason": getattr(memory, "reason", ""),
                "warnings": list(self.warnings),
                "execution_contexts": len(lanes),
            }
        )
        return facts
