"""The TensorRT backend: engines from the float ONNX (fp32/fp16) or the TensorRT INT8 Q/DQ artifact.

Works on TensorRT 8.5 through 11; every version-dependent decision lives in
:mod:`edgexfer.backends.trt_compat`, this module only applies them. A build writes
``build/tensorrt_<precision>.engine``, a sidecar ``tensorrt_<precision>.json`` (edgexfer metadata and
the build machine: TensorRT, CUDA, driver, GPU and compute capability, JetPack/L4T, power mode) and a
timing cache beside the engine that the next build reuses. Loading checks the sidecar against this
machine first, so an engine from another TensorRT or GPU is refused with one clear line.

Execution uses the name-based API (``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``)
and device buffers from polygraphy.cuda, cuda-python or torch: no pycuda.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from edgexfer.backends import trt_compat as compat
from edgexfer.backends.base import Backend, BuildOption, BuildResult, Runner
from edgexfer.backends.common import as_logits, check_batch, layout_of_shape
from edgexfer.backends.trt_devmem import device_memory, have_device_memory_libraries
from edgexfer.errors import ArtifactError, BackendUnavailableError, StaleArtifactError

log = logging.getLogger(__name__)

# Jetson modules whose integrated GPU has no nvidia-smi: compute capability by module family.
_JETSON_CC = {"orin": "8.7", "xavier": "7.2", "thor": "11.0"}
DEFAULT_WORKSPACE_MB = 1024


def _trt() -> Any:
    try:
        import tensorrt
    except ImportError as exc:
        raise BackendUnavailableError(
            f"tensorrt does not import ({exc}); on x86 pip install 'edgexfer[tensorrt]', on a Jetson use "
            "JetPack's python3-libnvinfer in a venv made with --system-site-packages"
        ) from exc
    return tensorrt


def trt_machine(trt: Any = None) -> Dict[str, Any]:
    """This machine's facts that decide engine compatibility (for sidecars and load checks)."""
    from edgexfer import hardware

    facts: Dict[str, Any] = {"tensorrt": getattr(trt, "__version__", None) if trt else None}
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
    return facts


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
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6.1
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            cudart = None
    if cudart is not None:
        err, version = cudart.cudaRuntimeGetVersion()
        if int(err) == 0:
            facts["cuda"] = f"{version // 1000}.{(version % 1000) // 10}"
        err, props = cudart.cudaGetDeviceProperties(0)
        if int(err) == 0:
            name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
            facts.setdefault("gpu", name.strip("\x00"))
            facts["compute_capability"] = f"{props.major}.{props.minor}"
    if "cuda" not in facts:
        try:
            import torch

            if torch.cuda.is_available():
                facts["cuda"] = torch.version.cuda
                major, minor = torch.cuda.get_device_capability(0)
                facts.setdefault("gpu", torch.cuda.get_device_name(0))
                facts.setdefault("compute_capability", f"{major}.{minor}")
        except ImportError:
            pass
    return facts


class TensorRTRunner(Runner):
    """A deserialised engine with device buffers for its largest profile batch."""

    name = "tensorrt"

    def __init__(self, engine_path: Path, device_memory_provider: Optional[str] = None):
        self.engine_path = Path(engine_path)
        self.provider = device_memory_provider
        self.sidecar: Dict[str, Any] = {}
        self.warnings: List[str] = []
        self._objects: Dict[str, Any] = {}
        self._spatial: Tuple[Optional[int], Optional[int]] = (None, None)

    def activate(self) -> None:
        """Check the sidecar against this machine, deserialise, create the context and buffers."""
        from edgexfer.backends.sidecar import read_sidecar

        trt = _trt()
        if not self.engine_path.is_file():
            raise ArtifactError(f"engine '{self.engine_path}' does not exist")
        self.sidecar = read_sidecar(self.engine_path)
        built = dict(self.sidecar.get("build", {}))
        here = trt_machine(trt)
        self.warnings = compat.require_compatible(self.engine_path.name, built, here)
        for warning in self.warnings:
            log.warning("engine %s: %s", self.engine_path.name, warning)
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        if built.get("version_compatible"):
            runtime.engine_host_code_allowed = True  # version-compatible engines embed a lean runtime
        engine = runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if engine is None:
            raise StaleArtifactError(
                f"TensorRT {trt.__version__} could not deserialise '{self.engine_path}' "
                f"(built with TensorRT {built.get('tensorrt')} on {built.get('gpu')}); "
                "rebuild it with 'edgexfer build RUN --backend tensorrt'"
            )
        context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.input_name = inputs[0]
        self.output_name = "logits" if "logits" in outputs else outputs[0]
        self.input_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.input_name))).type
        shape = list(engine.get_tensor_shape(self.input_name))
        self.input_layout = layout_of_shape(shape)
        hw = shape[2:4] if self.input_layout == "NCHW" else shape[1:3]
        self._spatial = (int(hw[0]), int(hw[1])) if all(int(d) > 0 for d in hw) else (None, None)
        _, _, max_shape = engine.get_tensor_profile_shape(self.input_name, 0)
        self.max_batch = int(max_shape[0])
        memory = device_memory(self.provider)
        item_in = int(np.prod(max_shape[1:])) * np.dtype(self.input_dtype).itemsize
        out_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.output_name)))
        self._objects = {
            "engine": engine,
            "context": context,
            "memory": memory,
            "out_dtype": out_dtype,
            "d_in": memory.alloc(item_in * self.max_batch),
            "item_in": item_in,
        }
        self._objects["out_capacity"] = 0

    def deactivate(self) -> None:
        """Free device buffers, then the context and engine (order matters to TensorRT)."""
        memory = self._objects.get("memory")
        if memory is not None:
            for key in ("d_in", "d_out"):
                if self._objects.get(key) is not None:
                    memory.free(self._objects[key])
            memory.close()
        self._objects.clear()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run a batch (split into profile-sized chunks when larger than the profile's max)."""
        if not self._objects:
            raise RuntimeError("TensorRTRunner.infer called outside 'with runner:'")
        array = check_batch(
            batch, self.input_dtype, self.input_layout, self._spatial, f"engine '{self.engine_path.name}'"
        )
        chunks = [array[i : i + self.max_batch] for i in range(0, array.shape[0], self.max_batch)]
        return np.concatenate([self._run(np.ascontiguousarray(c)) for c in chunks])

    def _run(self, array: np.ndarray) -> np.ndarray:
        objects = self._objects
        context, memory = objects["context"], objects["memory"]
        context.set_input_shape(self.input_name, tuple(array.shape))
        out_shape = tuple(int(d) for d in context.get_tensor_shape(self.output_name))
        host_out = np.empty(out_shape, dtype=objects["out_dtype"])
        if host_out.nbytes > objects["out_capacity"]:
            if objects.get("d_out") is not None:
                memory.free(objects["d_out"])
            objects["d_out"] = memory.alloc(host_out.nbytes)
            objects["out_capacity"] = host_out.nbytes
        memory.to_device(objects["d_in"], array)
        context.set_tensor_address(self.input_name, memory.pointer(objects["d_in"]))
        context.set_tensor_address(self.output_name, memory.pointer(objects["d_out"]))
        if not context.execute_async_v3(memory.stream_handle()):
            raise ArtifactError(
                f"TensorRT failed to run '{self.engine_path.name}' (see the TensorRT log above)"
            )
        memory.to_host(host_out, objects["d_out"])
        memory.synchronize()
        return as_logits(host_out, array.shape[0], f"engine '{self.engine_path.name}'")

    def describe(self) -> Dict[str, Any]:
        """Runner facts plus the engine's build record and warnings."""
        facts = super().describe()
        build = self.sidecar.get("build", {})
        facts.update(
            {
                "engine": str(self.engine_path),
                "tensorrt": build.get("tensorrt"),
                "gpu": build.get("gpu"),
                "precision": self.sidecar.get("precision"),
                "device_memory": getattr(self._objects.get("memory"), "name", self.provider),
                "warnings": list(self.warnings),
            }
        )
        return facts


class TensorRTBackend(Backend):
    """TensorRT engines: fp32, fp16, and int8 from the TensorRT Q/DQ artifact."""

    name = "tensorrt"
    precisions = ("fp32", "fp16", "int8")
    int8_source = "onnx_int8_tensorrt"
    int8_target = "tensorrt"
    suffixes = (".engine", ".plan")
    build_options = (
        BuildOption("min_batch", int, "TensorRT: profile minimum batch.", default=1),
        BuildOption("opt_batch", int, "TensorRT: batch the kernels are tuned for.", default=1),
        BuildOption("max_batch", int, "TensorRT: profile maximum batch.", default=8),
        BuildOption("workspace_mb", int, "TensorRT: builder workspace limit in MiB.", default=1024),
        BuildOption("dla_core", int, "TensorRT on Jetson: run on this DLA core, GPU fallback."),
        BuildOption("version_compatible", bool, "TensorRT 8.6+: engine runs on later TensorRT versions."),
        BuildOption("hardware_compatible", bool, "TensorRT 8.6+: engine runs on any Ampere+ GPU."),
        BuildOption(
            "strongly_typed",
            bool,
            "TensorRT 10: network typing (11 is always strongly typed, 8.x always weakly).",
            negative="weakly_typed",
        ),
        BuildOption(
            "int8_fp16_fallback",
            bool,
            "TensorRT int8: let layers outside the Q/DQ pairs run in fp16 (default) or only fp32.",
            default=True,
            negative="no_int8_fp16_fallback",
        ),
        BuildOption(
            "timing_cache",
            bool,
            "TensorRT: reuse and update the per-GPU timing cache next to the run (default on).",
            default=True,
            negative="no_timing_cache",
        ),
    )

    def availability(self) -> Tuple[bool, str]:
        """Usable when tensorrt imports, a CUDA GPU is visible and a device-memory library exists."""
        try:
            trt = _trt()
            version = compat.parse_version(trt.__version__)
            compat.check_supported(version)
        except Exception as exc:  # noqa: BLE001 - availability must not raise
            return False, str(exc)
        facts = trt_machine(trt)
        if not facts.get("gpu") and not facts.get("jetson"):
            return False, f"tensorrt {trt.__version__} is installed but no CUDA GPU is visible"
        libraries = [name for name, ok in have_device_memory_libraries().items() if ok]
        if not libraries:
            return False, (
                "no library for CUDA buffers; pip install polygraphy or cuda-python>=12.6.1 (or a CUDA torch)"
            )
        return True, f"tensorrt {trt.__version__} on {facts.get('gpu')} (buffers: {libraries[0]})"

    def build(
        self, onnx_path: Path, precision: str, out_dir: Path, options: Optional[Dict[str, Any]] = None
    ) -> BuildResult:
        """Build ``out_dir/tensorrt_<precision>.engine`` (+ sidecar + timing cache).

        Options: ``min_batch``/``opt_batch``/``max_batch`` (profile, default 1/1/8), ``workspace_mb``,
        ``strongly_typed`` (10.x), ``version_compatible``, ``hardware_compatible``, ``dla_core``,
        ``int8_fp16_fallback`` (default True), ``timing_cache`` (default True).
        """
        from edgexfer.backends.trt_build import build_engine

        self.require_available()
        self.check_precision(precision)
        return build_engine(
            _trt(), Path(onnx_path), precision, Path(out_dir), dict(options or {}), trt_machine(_trt())
        )

    def load(self, artifact_path: Path, options: Optional[Dict[str, Any]] = None) -> Runner:
        """A runner for a built engine (checked against this machine on activation).

        Options: ``device_memory`` ('polygraphy' | 'cuda-python' | 'torch').
        """
        options = dict(options or {})
        return TensorRTRunner(Path(artifact_path), device_memory_provider=options.get("device_memory"))
