"""One TensorRT execution context with its own CUDA stream and device buffers: a *lane*.

:class:`~edgexfer.backends.trt_runner.TensorRTRunner` runs ``infer`` on one lane and ``infer_stream`` on
several, round-robin, so that several requests are in flight on the GPU at once. What TensorRT requires of
that, and how a lane meets it:

* A context runs one inference at a time: its activation memory "is in use from the invocation of
  enqueueV3() until network execution is complete ... using it in another execution context running in
  parallel ... will result in undefined behavior" (IExecutionContext::setDeviceMemory, NvInferRuntime.h
  @v10.3.0 L3653-3656); "Multiple execution contexts may exist for one ICudaEngine instance, allowing the
  same engine to be used for the execution of multiple batches simultaneously" (L3557-3559). So each lane
  has its own context, and a lane takes new work only after :meth:`Lane.collect` finished its last.
* Buffers registered with an enqueue must not be modified "before stream synchronization" (enqueueV3,
  L4254-4258): each lane has its own input and output buffers and host arrays.
* Shapes and addresses are per context (``set_input_shape`` / ``set_tensor_address`` are
  IExecutionContext methods): a lane sets both on its own context before each enqueue.
* One stream per lane: each lane has its own :class:`~edgexfer.backends.trt_devmem.DeviceMemory`, which
  creates its own stream; copies and the enqueue of a lane go on that stream, so lanes overlap.
* Before TensorRT 9, "each execution context in concurrent use must use a separate optimization profile"
  (ICudaEngine::createExecutionContext, NvInferRuntime.h @8.5.2 L1589-1591) and edgexfer's engines have one
  profile, so there is one lane there; profiles are shared across contexts from TensorRT 9
  (PreviewFeature::kPROFILE_SHARING_0806, on by default: NvInfer.h @v8.6.1 L9032-9037, @v10.3.0 L8600-8604).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from edgexfer.backends.common import as_logits
from edgexfer.errors import ArtifactError

# The first TensorRT major whose execution contexts share an optimization profile (see above).
PROFILE_SHARING_MAJOR = 9


def max_lanes(trt_version: str, profiles: int) -> Optional[int]:
    """How many contexts may run at once on an engine: any number from TensorRT 9 (None), else one per
    optimization profile (edgexfer's engines have one)."""
    major = int(str(trt_version).split(".")[0] or 0)
    return None if major >= PROFILE_SHARING_MAJOR else max(1, int(profiles))


class Lane:
    """An execution context, its stream (a DeviceMemory of its own), its device and host buffers.

    ``io`` is the runner: it says the input's name and profile, the outputs' names and dtypes and the
    engine's name for messages. :meth:`submit` enqueues one chunk without waiting; :meth:`collect` waits
    for it and returns its logits.
    """

    def __init__(self, io: Any, context: Any, memory: Any, input_bytes: int):
        self.io, self.context, self.memory = io, context, memory
        self.d_in = memory.alloc(input_bytes)
        self.outputs: Dict[str, Tuple[Any, int]] = {}  # name -> (device buffer, capacity in bytes)
        self.hosts: Dict[str, np.ndarray] = {}
        self.pending: Optional[int] = None  # rows of the chunk in flight

    @property
    def who(self) -> str:
        return f"engine '{self.io.engine_path.name}'"

    def submit(self, array: np.ndarray) -> None:
        """Set the shape, copy ``array`` in, bind the buffers and enqueue, all on this lane's stream."""
        if self.pending is not None:  # one inference per context at a time (see the module docstring)
            raise RuntimeError("a TensorRT lane was given new work before its last was collected")
        io, context, memory = self.io, self.context, self.memory
        if not context.set_input_shape(io.input_name, tuple(array.shape)):
            raise ArtifactError(
                f"TensorRT refused input shape {tuple(array.shape)} for {self.who} (profile batch "
                f"{io.min_batch}..{io.max_batch}; see the TensorRT log above)"
            )
        memory.to_device(self.d_in, array)
        self._bind(io.input_name, memory.pointer(self.d_in))
        self.hosts = {name: self._output_buffer(name) for name in io.output_names}
        if not context.execute_async_v3(memory.stream_handle()):
            raise ArtifactError(f"TensorRT failed to run {self.who} (see the TensorRT log above)")
        self.pending = int(array.shape[0])

    def collect(self) -> np.ndarray:
        """Copy the outputs back (on the lane's stream), wait for the stream, return the logits."""
        if self.pending is None:
            raise RuntimeError("a TensorRT lane was asked for results it was not given work for")
        rows, self.pending = self.pending, None
        for name, host in self.hosts.items():
            self.memory.to_host(host, self.outputs[name][0])
        self.memory.synchronize()
        return as_logits(self.hosts[self.io.logits_name], rows, self.who)

    def _output_buffer(self, name: str) -> np.ndarray:
        """A host array for output ``name`` at the current input shape, its device buffer bound."""
        shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
        if any(d < 0 for d in shape):
            raise ArtifactError(
                f"{self.who} output '{name}' has a data-dependent shape {shape}; edgexfer runs classifiers "
                "with fixed-size outputs"
            )
        host = np.empty(shape, dtype=self.io.output_dtypes[name])
        handle, capacity = self.outputs.get(name, (None, 0))
        if host.nbytes > capacity:
            if handle is not None:
                self.memory.free(handle)
            handle, capacity = self.memory.alloc(max(host.nbytes, 1)), host.nbytes
            self.outputs[name] = (handle, capacity)
        self._bind(name, self.memory.pointer(handle))
        return host

    def _bind(self, name: str, address: int) -> None:
        if not self.context.set_tensor_address(name, address):
            raise ArtifactError(f"TensorRT refused the device address of '{name}' for {self.who}")

    def close(self) -> None:
        """Wait for the stream, free the buffers, release the stream; the context goes with the lane."""
        self.memory.synchronize()
        self.pending = None
        for handle in [self.d_in] + [handle for handle, _ in self.outputs.values()]:
            self.memory.free(handle)
        self.outputs.clear()
        self.memory.close()


def chunks(array: np.ndarray, min_batch: int, max_batch: int) -> List[Tuple[np.ndarray, int]]:
    """``(chunk, real rows)`` pieces of a batch that fit the profile: at most ``max_batch`` rows, a last
    piece below ``min_batch`` padded by repeating its last image (same value range; dropped from the logits)."""
    pieces = []
    for start in range(0, array.shape[0], max_batch):
        chunk = array[start : start + max_batch]
        count = chunk.shape[0]
        if count < min_batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], min_batch - count, axis=0)])
        pieces.append((np.ascontiguousarray(chunk), count))
    return pieces
