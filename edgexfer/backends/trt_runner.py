"""Running a TensorRT engine: the name-based execution API on device buffers (no pycuda).

The runner checks the engine's sidecar against this machine, deserialises (after setting the runtime's
DLA core and, for version-compatible engines, allowing the embedded lean runtime), reads the input's
optimization profile (min, opt, max) and binds every output. A batch is split into chunks of the
profile's maximum; a chunk below the profile's minimum is padded up to it and the padding is dropped
from the logits. Every ``set_input_shape`` / ``set_tensor_address`` result is checked, as Polygraphy's
TrtRunner does (backend/trt/runner.py @v10.3.0 L300-305), because both return False instead of raising.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from edgexfer.backends import trt_devmem, trt_runtime
from edgexfer.backends.base import Runner
from edgexfer.backends.common import as_logits, check_batch, layout_of_shape
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
        context = engine.create_execution_context()
        if context is None:  # out of device memory (Polygraphy checks it too: runner.py @v10.3.0 L203)
            raise ArtifactError(
                f"TensorRT could not create an execution context for '{self.engine_path.name}' "
                "(out of GPU memory? see the TensorRT log above)"
            )
        self._read_io(trt, engine)
        memory = trt_devmem.device_memory(self.provider)
        self._objects = {"engine": engine, "context": context, "memory": memory, "outputs": {}}
        self._objects["d_in"] = memory.alloc(self._item_in * self.max_batch)

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
        self._out_dtypes = {
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
        """Free device buffers, then the context and engine (order matters to TensorRT)."""
        memory = self._objects.get("memory")
        if memory is not None:
            buffers = [self._objects.get("d_in")] + [b for b, _ in self._objects.get("outputs", {}).values()]
            for handle in buffers:
                if handle is not None:
                    memory.free(handle)
            memory.close()
        self._objects.clear()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run a batch in profile-sized chunks (the last one padded up to the profile's minimum)."""
        if not self._objects:
            raise RuntimeError("TensorRTRunner.infer called outside 'with runner:'")
        array = check_batch(
            batch, self.input_dtype, self.input_layout, self._spatial, f"engine '{self.engine_path.name}'"
        )
        outputs = []
        for start in range(0, array.shape[0], self.max_batch):
            chunk = array[start : start + self.max_batch]
            count = chunk.shape[0]
            if count < self.min_batch:  # repeat the last image: same value range, dropped below
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.min_batch - count, axis=0)])
            outputs.append(self._run(np.ascontiguousarray(chunk))[:count])
        return np.concatenate(outputs)

    def _run(self, array: np.ndarray) -> np.ndarray:
        objects = self._objects
        context, memory = objects["context"], objects["memory"]
        who = f"engine '{self.engine_path.name}'"
        if not context.set_input_shape(self.input_name, tuple(array.shape)):
            raise ArtifactError(
                f"TensorRT refused input shape {tuple(array.shape)} for {who} (profile batch "
                f"{self.min_batch}..{self.max_batch}; see the TensorRT log above)"
            )
        memory.to_device(objects["d_in"], array)
        self._bind(context, self.input_name, memory.pointer(objects["d_in"]))
        hosts = {name: self._output_buffer(context, memory, name) for name in self.output_names}
        if not context.execute_async_v3(memory.stream_handle()):
            raise ArtifactError(f"TensorRT failed to run {who} (see the TensorRT log above)")
        for name, host in hosts.items():
            memory.to_host(host, objects["outputs"][name][0])
        memory.synchronize()
        return as_logits(hosts[self.logits_name], array.shape[0], who)

    def _output_buffer(self, context: Any, memory: Any, name: str) -> np.ndarray:
        """A host array for output ``name`` at the current input shape, its device buffer bound."""
        shape = tuple(int(d) for d in context.get_tensor_shape(name))
        if any(d < 0 for d in shape):
            raise ArtifactError(
                f"engine '{self.engine_path.name}' output '{name}' has a data-dependent shape {shape}; "
                "edgexfer runs classifiers with fixed-size outputs"
            )
        host = np.empty(shape, dtype=self._out_dtypes[name])
        handle, capacity = self._objects["outputs"].get(name, (None, 0))
        if host.nbytes > capacity:
            if handle is not None:
                memory.free(handle)
            handle, capacity = memory.alloc(max(host.nbytes, 1)), host.nbytes
            self._objects["outputs"][name] = (handle, capacity)
        self._bind(context, name, memory.pointer(handle))
        return host

    def _bind(self, context: Any, name: str, address: int) -> None:
        if not context.set_tensor_address(name, address):
            raise ArtifactError(
                f"TensorRT refused the device address of '{name}' for engine '{self.engine_path.name}'"
            )

    def describe(self) -> Dict[str, Any]:
        """Runner facts plus the engine's build record, profile and warnings."""
        facts = super().describe()
        build = self.sidecar.get("build", {})
        memory = self._objects.get("memory")
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
            }
        )
        return facts
