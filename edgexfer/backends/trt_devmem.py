"""CUDA device buffers for TensorRT without pycuda: polygraphy.cuda, cuda-python or torch.

polygraphy.cuda is pure Python over libcudart and works on Jetson; cuda-python's runtime bindings
moved to ``cuda.bindings.runtime`` in 12.6.1 (``from cuda import cudart`` is gone in 13); a CUDA
build of torch is the last resort. All three expose the same five operations here.
"""

from __future__ import annotations

import abc
import importlib.util
from typing import Any, Dict, Optional

import numpy as np

from edgexfer.backends.trt_compat import choose_device_memory


def have_device_memory_libraries() -> Dict[str, bool]:
    """Which device-memory libraries are importable (checked without importing them)."""

    def found(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            return False

    torch_cuda = False
    if found("torch"):
        import torch

        torch_cuda = bool(torch.cuda.is_available())
    return {
        "polygraphy": found("polygraphy"),
        "cuda-python": found("cuda.bindings") or found("cuda.cudart"),
        "torch": torch_cuda,
    }


def device_memory(preferred: Optional[str] = None) -> "DeviceMemory":
    """A DeviceMemory from the first available library (or the one asked for)."""
    name = choose_device_memory(have_device_memory_libraries(), preferred)
    return {"polygraphy": PolygraphyMemory, "cuda-python": CudaPythonMemory, "torch": TorchMemory}[name]()


class DeviceMemory(abc.ABC):
    """alloc/free device buffers, copy host<->device on one stream, synchronize."""

    name = "none"

    @abc.abstractmethod
    def alloc(self, nbytes: int) -> Any:
        """Allocate ``nbytes`` on the device; returns a handle."""

    @abc.abstractmethod
    def free(self, handle: Any) -> None:
        """Free a buffer from :meth:`alloc`."""

    @abc.abstractmethod
    def pointer(self, handle: Any) -> int:
        """The device address of a buffer, for ``set_tensor_address``."""

    @abc.abstractmethod
    def to_device(self, handle: Any, array: np.ndarray) -> None:
        """Copy a contiguous host array into a buffer (async on the stream)."""

    @abc.abstractmethod
    def to_host(self, array: np.ndarray, handle: Any) -> None:
        """Copy a buffer into a contiguous host array (async on the stream)."""

    @abc.abstractmethod
    def stream_handle(self) -> int:
        """The CUDA stream handle for ``execute_async_v3``."""

    @abc.abstractmethod
    def synchronize(self) -> None:
        """Wait for the stream."""

    def close(self) -> None:  # noqa: B027 - optional hook: not every library has a stream to release
        """Release the stream."""


class PolygraphyMemory(DeviceMemory):
    """polygraphy.cuda: DeviceArray and Stream over libcudart via ctypes."""

    name = "polygraphy"

    def __init__(self) -> None:
        from polygraphy import cuda

        self.cuda = cuda
        self.stream = cuda.Stream()

    def alloc(self, nbytes: int) -> Any:
        return self.cuda.DeviceArray.raw((int(nbytes),))

    def free(self, handle: Any) -> None:
        handle.free()

    def pointer(self, handle: Any) -> int:
        return int(handle.ptr)

    def to_device(self, handle: Any, array: np.ndarray) -> None:
        self.cuda.wrapper().memcpy(
            dst=handle.ptr,
            src=array.ctypes.data,
            nbytes=array.nbytes,
            kind=self.cuda.MemcpyKind.HostToDevice,
            stream_ptr=self.stream.ptr,
        )

    def to_host(self, array: np.ndarray, handle: Any) -> None:
        self.cuda.wrapper().memcpy(
            dst=array.ctypes.data,
            src=handle.ptr,
            nbytes=array.nbytes,
            kind=self.cuda.MemcpyKind.DeviceToHost,
            stream_ptr=self.stream.ptr,
        )

    def stream_handle(self) -> int:
        return int(self.stream.ptr)

    def synchronize(self) -> None:
        self.stream.synchronize()

    def close(self) -> None:
        self.stream.free()


class CudaPythonMemory(DeviceMemory):
    """cuda-python runtime bindings (cudaMalloc / cudaMemcpyAsync / streams)."""

    name = "cuda-python"

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart
        self.cudart = cudart
        self.stream = self._check(cudart.cudaStreamCreate())

    def _check(self, result: Any) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise RuntimeError(f"CUDA error {err}")
        return rest[0] if rest else None

    def alloc(self, nbytes: int) -> Any:
        return self._check(self.cudart.cudaMalloc(int(nbytes)))

    def free(self, handle: Any) -> None:
        self._check(self.cudart.cudaFree(handle))

    def pointer(self, handle: Any) -> int:
        return int(handle)

    def to_device(self, handle: Any, array: np.ndarray) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.cudart.cudaMemcpyAsync(handle, array.ctypes.data, array.nbytes, kind, self.stream))

    def to_host(self, array: np.ndarray, handle: Any) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.cudart.cudaMemcpyAsync(array.ctypes.data, handle, array.nbytes, kind, self.stream))

    def stream_handle(self) -> int:
        return int(self.stream)

    def synchronize(self) -> None:
        self._check(self.cudart.cudaStreamSynchronize(self.stream))

    def close(self) -> None:
        self._check(self.cudart.cudaStreamDestroy(self.stream))


class TorchMemory(DeviceMemory):
    """CUDA tensors from torch; copies go through torch on a dedicated stream."""

    name = "torch"

    def __init__(self) -> None:
        import torch

        self.torch = torch
        self.stream = torch.cuda.Stream()

    def alloc(self, nbytes: int) -> Any:
        return self.torch.empty(int(nbytes), dtype=self.torch.uint8, device="cuda")

    def free(self, handle: Any) -> None:
        del handle

    def pointer(self, handle: Any) -> int:
        return int(handle.data_ptr())

    def to_device(self, handle: Any, array: np.ndarray) -> None:
        flat = self.torch.from_numpy(array.reshape(-1).view(np.uint8))
        with self.torch.cuda.stream(self.stream):
            handle[: flat.numel()].copy_(flat, non_blocking=False)

    def to_host(self, array: np.ndarray, handle: Any) -> None:
        with self.torch.cuda.stream(self.stream):
            data = handle[: array.nbytes].cpu().numpy()
        array.reshape(-1).view(np.uint8)[:] = data

    def stream_handle(self) -> int:
        return int(self.stream.cuda_stream)

    def synchronize(self) -> None:
        self.stream.synchronize()
