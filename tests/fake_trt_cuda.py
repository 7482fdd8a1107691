"""The CUDA side of the fake ``tensorrt``: device memory and streams, as asynchronous as a GPU's.

Work put on a stream (a host->device copy's landing, an enqueued inference, a device->host copy) runs in
issue order when the stream is synchronized, not when it is issued; streams are independent of each other
(CUDA Programming Guide, "Asynchronous Execution": "Operations within a stream execute in order ... different
streams may execute concurrently"). So a runner that reads logits before its stream ran, or lets two
requests in flight share a buffer or a context, gets wrong numbers or an error here, as it would on a GPU.

Each strict behaviour, with its source:

* ``cudaMemcpyAsync`` from pageable host memory to the device stages the host data before returning (the
  host array may be reused at once); device to pageable host "will return only once the copy has completed"
  (CUDA Runtime API, "API synchronization behavior", Asynchronous memcpy): :meth:`FakeMemory.to_host` runs
  its stream up to and including the copy.
* "Modifying or releasing memory that has been registered for the tensors before stream synchronization
  ... results in undefined behavior ... output tensors require stream synchronization"
  (IExecutionContext::enqueueV3, NvInferRuntime.h @v10.3.0 L4254-4258): a copy into, a read of, or another
  enqueue using a buffer that unfinished work on another stream uses raises :class:`RaceError`.
* An execution context's activation memory "is in use from the invocation of enqueueV3() until network
  execution is complete ... using it in another execution context running in parallel ... will result in
  undefined behavior" (NvInferRuntime.h @v10.3.0 L3653-3656): fake_trt_engine.py refuses an enqueue on a
  context whose earlier enqueue, on another stream, has not finished.
"""

from __future__ import annotations

import itertools
from typing import Callable, Dict, List, Set, Tuple

import numpy as np

ALIGNMENT = 256  # "The pointer must have at least 256-byte alignment" (NvInferRuntime.h @v10.3.0 L4003)


class RaceError(AssertionError):
    """Two streams touch one device buffer without synchronizing: undefined behaviour on a GPU."""


class _Device:
    """Device memory (host bytearrays at 256-byte aligned fake addresses) and the streams' queues."""

    def __init__(self) -> None:
        self.buffers: Dict[int, bytearray] = {}
        self.next = 0x10000
        self.queues: Dict[int, List[Callable[[], None]]] = {}
        # buffer address -> streams with unfinished work that reads or writes it
        self.users: Dict[int, Set[int]] = {}
        self._handles = itertools.count(0x7000, 0x10)
        self.most_busy = 0  # the most streams with unfinished work at once (what a test may read)

    # -- memory ---------------------------------------------------------------------------------
    def alloc(self, nbytes: int) -> int:
        address = self.next
        self.buffers[address] = bytearray(nbytes)
        self.next += (nbytes // ALIGNMENT + 2) * ALIGNMENT
        return address

    def write(self, address: int, data: bytes) -> bool:
        buffer = self.buffers[address]
        if len(data) > len(buffer):
            return False
        buffer[: len(data)] = data
        return True

    def read(self, address: int, nbytes: int) -> bytes:
        buffer = self.buffers[address]
        assert nbytes <= len(buffer), "read past the end of a device buffer"
        return bytes(buffer[:nbytes])

    # -- streams --------------------------------------------------------------------------------
    def new_stream(self) -> int:
        handle = next(self._handles)
        self.queues[handle] = []
        return handle

    def claim(self, stream: int, addresses: List[int], what: str) -> None:
        """Mark buffers used by work issued on ``stream``; RaceError when unfinished work of another stream
        uses one of them (enqueueV3's rule, NvInferRuntime.h @v10.3.0 L4254-4258)."""
        for address in addresses:
            others = self.users.get(address, set()) - {stream}
            if others:
                raise RaceError(f"{what}: device buffer {address:#x} is in use by unfinished work on stream "
                                f"{sorted(others)[0]:#x}; synchronize that stream first")
        for address in addresses:
            self.users.setdefault(address, set()).add(stream)

    def issue(self, stream: int, work: Callable[[], None]) -> None:
        if stream not in self.queues:
            raise RaceError(f"stream {stream:#x} was never created (or was destroyed)")
        self.queues[stream].append(work)
        self.most_busy = max(self.most_busy, sum(bool(queue) for queue in self.queues.values()))

    def busy(self, stream: int) -> bool:
        return bool(self.queues.get(stream))

    def run(self, stream: int) -> None:
        """Run everything issued on ``stream``, in order, and release its buffers."""
        queue = self.queues.get(stream, [])
        while queue:
            queue.pop(0)()
        for users in self.users.values():
            users.discard(stream)

    def destroy(self, stream: int) -> None:
        self.run(stream)
        self.queues.pop(stream, None)


DEVICE = _Device()


class FakeMemory:
    """edgexfer's DeviceMemory interface over the fake device: one stream per instance, as each real
    provider creates its own (trt_devmem.py)."""

    name = "fake"
    reason = "fake device memory (tests)"

    def __init__(self) -> None:
        self.freed: List[int] = []
        self.closed = False
        self.stream = DEVICE.new_stream()
        self.copies: List[Tuple[str, int]] = []

    def alloc(self, nbytes: int) -> int:
        return DEVICE.alloc(nbytes)

    def free(self, handle: int) -> None:
        DEVICE.claim(self.stream, [handle], "cudaFree")
        self.freed.append(handle)

    def pointer(self, handle: int) -> int:
        return handle

    def to_device(self, handle: int, array: np.ndarray) -> None:
        data = array.tobytes()  # staged now: the caller may reuse its host array at once
        DEVICE.claim(self.stream, [handle], "cudaMemcpyAsync host->device")
        assert len(data) <= len(DEVICE.buffers[handle]), "write past the end of a device buffer"
        DEVICE.issue(self.stream, lambda: DEVICE.write(handle, data))
        self.copies.append(("to_device", handle))

    def to_host(self, array: np.ndarray, handle: int) -> None:
        DEVICE.claim(self.stream, [handle], "cudaMemcpyAsync device->host")

        def copy() -> None:
            array.reshape(-1).view(np.uint8)[:] = np.frombuffer(DEVICE.read(handle, array.nbytes), dtype=np.uint8)

        DEVICE.issue(self.stream, copy)
        DEVICE.run(self.stream)  # to pageable host memory: returns once the copy has completed
        self.copies.append(("to_host", handle))

    def stream_handle(self) -> int:
        return self.stream

    def synchronize(self) -> None:
        DEVICE.run(self.stream)

    def close(self) -> None:
        DEVICE.destroy(self.stream)
        self.closed = True
