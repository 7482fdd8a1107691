"""CUDA device buffers for TensorRT without pycuda: polygraphy.cuda, cuda-python or torch.

polygraphy.cuda is pure Python over libcudart and works on Jetson; cuda-python's runtime bindings
moved to ``cuda.bindings.runtime`` in 12.6.1 (``from cuda import cudart`` is gone in 13); a CUDA
build of torch is the last resort. All three expose the same five operations here.
"""

from __future__ import annotations

import abc
import importlib.util
import logging
from typing import Any, Dict, List, Optional

import numpy as np

from edgexfer.backends import trt_compat as compat
from edgexfer.errors import BackendUnavailableError

log = logging.getLogger(__name__)

# cudaErrorInsufficientDriver: the CUDA runtime inside cuda-python is newer than the driver (or there is
# no driver at all). cuda-bindings 13.x links CUDA runtime 13 and needs driver 580+.
CUDA_ERROR_INSUFFICIENT_DRIVER = 35


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
    """A working DeviceMemory: the first library (or the one asked for) that can create a CUDA stream.

    Importing is not enough: polygraphy.cuda looks for libcudart only on LD_LIBRARY_PATH,
    /usr/local/cuda/lib64, /usr/lib and /lib (polygraphy/cuda/cuda.py @v10.3.0 L58-99), so on a pip-only
    desktop it imports but cannot start; cuda-python 13 imports but fails on drivers older than 580.
    Each candidate is constructed (which creates its stream); the first that works is returned with
    ``reason`` saying why it was chosen and what failed before it.
    """
    available = have_device_memory_libraries()
    tried: List[str] = []
    for name in compat.device_memory_order(preferred):
        if not available.get(name):
            tried.append(f"{name}: not installed" + (" (or no CUDA device)" if name == "torch" else ""))
            continue
        try:
            memory = PROVIDERS[name]()
        except Exception as exc:  # noqa: BLE001 - any failure to start means: try the next library
            tried.append(f"{name}: {_one_line(exc)}")
            continue
        memory.reason = "; ".join(tried + [f"{name}: created a CUDA stream"])
        log.info("device memory: %s (%s)", name, memory.reason)
        return memory
    raise BackendUnavailableError(
        "no library could allocate CUDA buffers here (" + "; ".join(tried) + "); pip install polygraphy, "
        f"or {compat.CUDA_PYTHON_ADVICE}, or a CUDA build of torch"
    )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


class DeviceMemory(abc.ABC):
    """alloc/free device buffers, copy host<->device on one stream, synchronize."""

    name = "none"
    reason = ""  # why this library was chosen (set by device_memory)

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
    """cuda-python runtime bindings (cudaMalloc / cudaMemcpyAsync / streams).

    Calls follow NVIDIA's samples/python/common_runtime.py (TensorRT main): results are tuples whose
    first item is the error. Stream handles go through ``cuda.bindings.utils.get_cuda_native_handle``
    where it exists, because ``int(cuda_obj)`` is deprecated from cuda-bindings 13.0 (release notes).
    """

    name = "cuda-python"

    def __init__(self) -> None:
        self.cudart = _cudart()
        self.version = _cuda_python_version()
        self.stream = self._check(self.cudart.cudaStreamCreate())

    def _check(self, result: Any) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) == CUDA_ERROR_INSUFFICIENT_DRIVER:
            raise BackendUnavailableError(
                f"the CUDA driver here is too old for cuda-python {self.version} (CUDA error 35, "
                f"cudaErrorInsufficientDriver; driver supports CUDA {_driver_cuda() or 'none found'}); "
                f"install {compat.CUDA_PYTHON_ADVICE}"
            )
        if int(err) != 0:
            raise RuntimeError(f"CUDA error {int(err)} ({err}) from cuda-python {self.version}")
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
        return native_handle(self.stream)

    def synchronize(self) -> None:
        self._check(self.cudart.cudaStreamSynchronize(self.stream))

    def close(self) -> None:
        self._check(self.cudart.cudaStreamDestroy(self.stream))


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart
    return cudart


def _cuda_python_version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover - Python < 3.8 is not supported anyway
        return "?"
    for dist in ("cuda-python", "cuda-bindings"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return "?"


def _driver_cuda() -> Optional[str]:
    from edgexfer.hardware import cuda_driver_version

    return cuda_driver_version()


def native_handle(obj: Any) -> int:
    """The address behind a cuda-python object (stream, pointer) as an int."""
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:
        return int(obj)
    try:
        return int(get_cuda_native_handle(obj))
    except (TypeError, KeyError):  # not a cuda-python object (already an int)
        return int(obj)


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


PROVIDERS = {"polygraphy": PolygraphyMemory, "cuda-python": CudaPythonMemory, "torch": TorchMemory}
