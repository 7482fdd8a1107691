"""The process-wide TensorRT pieces the builder and the runner share: the module, its one logger, plugin
registration, data-type mapping and this machine's facts (the ones that decide engine compatibility).
"""

from __future__ import annotations

import logging
import platform
from typing import Any, Dict, Optional, Tuple

import numpy as np

from edgexfer.errors import BackendUnavailableError

log = logging.getLogger(__name__)

# Jetson modules whose integrated GPU has no nvidia-smi: compute capability by module family.
_JETSON_CC = {"orin": "8.7", "xavier": "7.2", "thor": "11.0"}
# TensorRT DataType member names -> numpy. Read by name, never through ``trt.nptype``: TensorRT 8.5's
# nptype builds ``{..., bool: np.bool, ...}`` on every call (python/packaging/tensorrt/__init__.py
# @8.5.2 L161-168), and np.bool does not exist in numpy 1.24-1.26, which JetPack 5's Python 3.8 gets
# (NVIDIA/TensorRT#2557, #2701). Members from pyFoundationalTypes.cpp @8.5.2 L176-181, @v10.3.0
# L180-189; FP8/BF16/INT4 have no numpy type.
_NUMPY_BY_NAME = {
    "FLOAT": np.float32,
    "HALF": np.float16,
    "INT8": np.int8,
    "INT32": np.int32,
    "INT64": np.int64,
    "BOOL": np.bool_,
    "UINT8": np.uint8,
}
# One logger per process: TensorRT "maintains only a single logger pointer at any given time" and warns
# when a builder/runtime is given another (NVIDIA/TensorRT#1475); Polygraphy keeps one too
# (backend/trt/util.py @v10.3.0 get_trt_logger). Keyed by module so tests' fake modules get their own.
_LOGGER: Tuple[Any, Any] = (None, None)
_PLUGINS_READY: Tuple[Any, bool] = (None, False)


def load_trt() -> Any:
    """The ``tensorrt`` module, or BackendUnavailableError saying how to install it."""
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendUnavailableError(
            f"tensorrt does not import ({exc}); on x86 pip install 'edgexfer[tensorrt]', on a Jetson use "
            "JetPack's python3-libnvinfer in a venv made with --system-site-packages"
        ) from exc
    return tensorrt


def trt_logger(trt: Any) -> Any:
    """The one ``trt.Logger`` of this process for ``trt`` (created on first use, WARNING level)."""
    global _LOGGER
    module, logger = _LOGGER
    if module is not trt or logger is None:
        logger = trt.Logger(trt.Logger.WARNING)
        _LOGGER = (trt, logger)
    return logger


def init_plugins(trt: Any) -> None:
    """Register TensorRT's bundled plugins once, before parsing or deserialising.

    Some ONNX ops are imported as plugins (e.g. InstanceNormalization on 8.x); Polygraphy calls this
    before parsing and before deserialising (backend/trt/loader.py @v10.3.0 L155, L700, L744).
    """
    global _PLUGINS_READY
    module, done = _PLUGINS_READY
    if module is trt and done:
        return
    init = getattr(trt, "init_libnvinfer_plugins", None)
    if init is not None:
        init(trt_logger(trt), "")
    _PLUGINS_READY = (trt, True)


def numpy_dtype(trt: Any, dtype: Any) -> Any:
    """The numpy type of a ``trt.DataType`` member, compared by member name (see _NUMPY_BY_NAME)."""
    for name, numpy_type in _NUMPY_BY_NAME.items():
        member = getattr(trt.DataType, name, None)
        if member is not None and member == dtype:
            return numpy_type
    raise BackendUnavailableError(
        f"TensorRT data type {dtype} has no numpy equivalent; edgexfer runs engines with "
        "float32/float16/int8/uint8 inputs and outputs"
    )


def trt_machine(trt: Any = None) -> Dict[str, Any]:
    """This machine's facts that decide engine compatibility (for sidecars and load checks).

    TensorRT version, GPU name, compute capability, driver, CUDA runtime, DLA core count
    (``trt.Runtime(logger).num_DLA_cores``: pyCore.cpp @8.5.2 L1157, @v11.1 L1844), OS and CPU
    architecture, and on a Jetson its module, L4T, JetPack, power mode and clocks.
    """
    from edgexfer import hardware

    facts: Dict[str, Any] = {
        "tensorrt": getattr(trt, "__version__", None) if trt else None,
        "os": platform.system(),
        "arch": platform.machine(),
    }
    gpu = _cuda_device_facts()
    jetson = hardware.jetson_info()
    if jetson:
        facts.update(
            {
                "jetson": jetson.get("module"),
                "l4t": jetson.get("l4t"),
                "jetpack": jetson.get("jetpack"),
                "power_mode": jetson.get("power_mode"),
                "jetson_clocks": jetson.get("jetson_clocks"),
            }
        )
        if not gpu.get("compute_capability"):
            module = str(jetson.get("module", "")).lower()
            gpu.setdefault("gpu", jetson.get("module"))
            gpu["compute_capability"] = next((cc for key, cc in _JETSON_CC.items() if key in module), "")
    facts.update(gpu)
    facts["driver"] = facts.get("driver") or hardware.cuda_driver_version()
    if trt is not None:
        facts["dla_cores"] = _dla_cores(trt)
    return facts


def _dla_cores(trt: Any) -> int:
    try:
        return int(trt.Runtime(trt_logger(trt)).num_DLA_cores)
    except Exception as exc:  # noqa: BLE001 - a machine fact must not fail the caller
        log.warning("could not read TensorRT's DLA core count: %s", exc)
        return 0


def _cudart() -> Optional[Any]:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 11.8.4 / 12.6.1
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            return None
    return cudart


def _cuda_device_facts() -> Dict[str, Any]:
    """GPU name, compute capability, driver and CUDA runtime version of device 0, from what is installed."""
    from edgexfer import hardware

    facts: Dict[str, Any] = {}
    gpus = hardware.nvidia_gpus()
    if gpus:
        facts.update(
            {
                "gpu": gpus[0]["name"],
                "compute_capability": gpus[0]["compute_capability"],
                "driver": gpus[0]["driver"],
            }
        )
    cudart = _cudart()
    if cudart is not None:
        err, version = cudart.cudaRuntimeGetVersion()
        if int(err) == 0:
            facts["cuda"] = f"{version // 1000}.{(version % 1000) // 10}"
        err, props = cudart.cudaGetDeviceProperties(0)
        if int(err) == 0:
            name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
            facts.setdefault("gpu", name.strip("\x00"))
            facts["compute_capability"] = f"{props.major}.{props.minor}"
    if "compute_capability" not in facts:
        try:
            import torch

            if torch.cuda.is_available():
                facts.setdefault("cuda", torch.version.cuda)
                major, minor = torch.cuda.get_device_capability(0)
                facts.setdefault("gpu", torch.cuda.get_device_name(0))
                facts["compute_capability"] = f"{major}.{minor}"
        except ImportError:
            pass
    return facts
