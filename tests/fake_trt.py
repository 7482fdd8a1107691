"""A fake ``tensorrt`` module, as strict as the real one, for testing the TensorRT backend without a GPU.

It offers the Python API edgexfer uses, per version (8.5, 8.6, 10.x, 11.x), and rejects what real
TensorRT rejects; each strict behaviour names the real source it mirrors (NVIDIA/TensorRT tags,
onnx/onnx-tensorrt release branches, docs.nvidia.com pages):

* features exist only in the versions that have them (VERSION_COMPATIBLE, HardwareCompatibilityLevel,
  engine_host_code_allowed from 8.6; STRONGLY_TYPED from 9; no EXPLICIT_BATCH and no FP16/INT8 flags in
  11), and objects refuse attributes they do not have, as pybind11 classes do;
* the ONNX parser refuses uint8 tensors into anything but Cast (to FLOAT/HALF) or Identity, refuses
  LayerNormalization on 8.5, and the Q/DQ forms the importer asserts on;
* the builder fails DLA builds with a dynamic profile, AMPERE_PLUS builds on pre-Ampere GPUs, Q/DQ
  networks without INT8 on 8.x, precision flags on strongly typed networks; TF32 is on until cleared;
* ``create_timing_cache`` returns None for a blob it cannot read; ``set_timing_cache`` returns False for
  another device's cache; one global logger, with TensorRT's warning when another one is passed;
* ``nptype`` on 8.5 fails like it does under numpy 1.24-1.26;
* the engine's profile, dtypes and output shapes are those of the build; ``set_input_shape`` outside the
  profile and ``execute_async_v3`` with an unbound tensor return False (fake_trt_engine.py);
* device memory and streams are asynchronous (fake_trt_cuda.py): an enqueue runs when its stream is
  synchronized; a buffer used by two streams' unfinished work, or a context enqueued again on another
  stream before its last enqueue finished, is refused; before TensorRT 9 a second context has no
  optimization profile (one profile per concurrent context; shared from 9);
* layer precisions follow the build: a weighted layer with Q/DQ on its activation and weight runs int8,
  the others fp16 when BuilderFlag.FP16 is set on a weakly typed network (else fp32/tf32), and the
  engine computes them so (fp16 layers: weights and outputs rounded through fp16), so an engine's
  logits are not ONNX Runtime's fp32 ones (fake_trt_builder.py, sources there).

Enum values are deliberately not TensorRT's numbers: code must use names. ``.log`` holds the TensorRT
log ("errors", "warnings") and what the fake observed ("cache_hits", "built" records with per-layer
"layers" precisions, "executed": images run through engines).
"""

from __future__ import annotations

import enum
import types
from typing import Any, Dict, List, Optional

import numpy as np

from fake_trt_engine import DEVICE, FakeContext, FakeEngine, FakeMemory, make_runtime, serialize  # noqa: F401

LOGGER_WARNING = (
    "The logger passed into createInferRuntime differs from one already provided for an existing builder, "
    "runtime, or refitter. TensorRT maintains only a single logger pointer at any given time"
)  # NVIDIA/TensorRT#1475


def make_fake_trt(
    version: str = "10.3.0",
    dla_cores: int = 0,
    compute_capability: str = "8.7",
    build_fails: bool = False,
    parse_errors: Optional[List[str]] = None,
    numpy_without_bool: Optional[bool] = None,
    context_oom: bool = False,
) -> Any:
    """A module-like namespace for TensorRT ``version`` on a device of ``compute_capability``.

    ``numpy_without_bool`` (default: on for 8.5) makes ``nptype`` behave as under numpy 1.24-1.26.
    """
    v = tuple(int(p) for p in version.split(".")[:3])
    log: Dict[str, Any] = {"errors": [], "warnings": [], "cache_hits": 0, "built": [], "executed": 0}

    def error(message: str) -> None:
        log["errors"].append(message)
        return None

    def use_logger(logger: Any) -> None:
        if state["logger"] is None:
            state["logger"] = logger
        elif state["logger"] is not logger:
            log["warnings"].append(LOGGER_WARNING)

    state: Dict[str, Any] = {
        "dla_cores": dla_cores, "compute_capability": compute_capability, "context_oom": context_oom,
        "logger": None, "error": error, "use_logger": use_logger,
    }
    # DataType members: pyFoundationalTypes.cpp @8.5.2 L176-181 (FLOAT..UINT8), @v10.3.0 L180-189 (+BF16,
    # INT64, FP8, INT4).
    members = ["FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8"] + (["BF16", "INT64", "FP8"] if v >= (10,) else [])
    data_type = enum.Enum("DataType", {name: f"dt-{name}" for name in members})
    creation = {"EXPLICIT_BATCH": 3} if v < (11,) else {}
    if v >= (9,):
        creation["STRONGLY_TYPED"] = 5  # pyCore.cpp @v9.3.0 L1382
    builder_flags = ["GPU_FALLBACK", "TF32", "REFIT", "DEBUG"] + (["FP16", "INT8"] if v < (11,) else [])
    if v >= (8, 6):
        builder_flags.append("VERSION_COMPATIBLE")  # pyCore.cpp @v8.6.1 L1089
    namespace = types.SimpleNamespace(
        __version__=version,
        DataType=data_type,
        NetworkDefinitionCreationFlag=types.SimpleNamespace(**creation),
        BuilderFlag=enum.Enum("BuilderFlag", {name: f"bf-{name}" for name in builder_flags}),
        Logger=_make_logger(),
        TensorIOMode=types.SimpleNamespace(INPUT="in", OUTPUT="out"),
        MemoryPoolType=types.SimpleNamespace(WORKSPACE="WORKSPACE"),
        DeviceType=types.SimpleNamespace(DLA="DLA", GPU="GPU"),
        init_libnvinfer_plugins=lambda logger, namespace_: log.setdefault("plugins", []).append(namespace_),
        log=log,
    )
    for alias, name in (("float32", "FLOAT"), ("float16", "HALF"), ("int8", "INT8"), ("int32", "INT32"),
                        ("bool", "BOOL"), ("uint8", "UINT8")):
        setattr(namespace, alias, getattr(data_type, name))
    if v >= (8, 6):
        namespace.HardwareCompatibilityLevel = types.SimpleNamespace(NONE="NONE", AMPERE_PLUS="AMPERE_PLUS")
    namespace.nptype = _make_nptype(namespace, v, v < (8, 6) if numpy_without_bool is None else numpy_without_bool)
    from fake_trt_builder import make_builder, make_parser

    namespace.OnnxParser = make_parser(namespace, state, v, parse_errors)
    namespace.Builder = make_builder(namespace, state, v, build_fails)
    namespace.Runtime = make_runtime(namespace, state)
    return namespace


def _make_logger() -> type:
    class Logger:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self, min_severity: int = 2) -> None:
            self.min_severity = min_severity

    return Logger


def _make_nptype(trt: Any, v: tuple, numpy_without_bool: bool) -> Any:
    """``trt.nptype`` as shipped: 8.5 builds its map with ``np.bool`` on every call (python/packaging/
    tensorrt/__init__.py @8.5.2 L151-171), which numpy 1.24-1.26 no longer has (NVIDIA/TensorRT#2557);
    8.6 uses ``np.bool_`` (bindings_wheel/tensorrt/__init__.py @v8.6.1 L153-174)."""

    def nptype(trt_type: Any) -> Any:
        if v < (8, 6) and numpy_without_bool:
            raise AttributeError("module 'numpy' has no attribute 'bool'")
        mapping = {trt.float32: np.float32, trt.float16: np.float16, trt.int8: np.int8, trt.int32: np.int32,
                   trt.bool: np.bool_, trt.uint8: np.uint8}
        if trt_type in mapping:
            return mapping[trt_type]
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")

    return nptype


def install(monkeypatch: Any, version: str = "10.3.0", gpu: str = "NVIDIA Fake GPU", **fake: Any) -> Any:
    """Make the TensorRT *backend* usable with a fake module (for stage- and CLI-level tests): ``import
    tensorrt`` gives the fake, device memory is the fake's, and nvidia-smi shows one GPU of the fake's
    compute capability, so the real ``trt_machine``, availability check and sidecar checks run."""
    from edgexfer import hardware
    from edgexfer.backends import tensorrt, trt_devmem, trt_runtime

    trt = make_fake_trt(version, **fake)
    cc = fake.get("compute_capability", "8.7")
    monkeypatch.setattr(trt_runtime, "load_trt", lambda: trt)
    monkeypatch.setattr(trt_devmem, "device_memory", lambda preferred=None: FakeMemory())
    monkeypatch.setattr(tensorrt, "have_device_memory_libraries", lambda: {"fake": True})
    monkeypatch.setattr(hardware, "nvidia_gpus", lambda: [{"name": gpu, "compute_capability": cc, "driver": "550.54"}])
    return trt
