"""The TensorRT backend: engines from the float ONNX (fp32/fp16) or the TensorRT INT8 Q/DQ artifact.

Works on TensorRT 8.5 through 11; every version-dependent decision lives in
:mod:`edgexfer.backends.trt_compat` (building) and :mod:`edgexfer.backends.trt_portability` (loading).
A build (:mod:`edgexfer.backends.trt_build`) writes ``build/tensorrt_<precision>.engine``, a sidecar
``tensorrt_<precision>.json`` (edgexfer metadata and the build machine: TensorRT, CUDA, driver, GPU and
compute capability, OS/architecture, DLA cores, JetPack/L4T, power mode) and a timing cache beside the
engine that the next build reuses. Loading (:mod:`edgexfer.backends.trt_runner`) checks the sidecar
against this machine first, so an engine from another TensorRT, GPU or platform is refused with one
clear line.

Execution uses the name-based API (``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``)
and device buffers from polygraphy.cuda, cuda-python or torch, whichever works here: no pycuda.
The options below are the one declaration of what ``build`` takes; the CLI and the build flow derive
theirs from it.

Why not Polygraphy's NetworkFromOnnxPath / CreateConfig / EngineFromNetwork / TrtRunner (issue 15):
they would not remove code here. CreateConfig puts DLA on core 0 only (backend/trt/config.py L637 in 0.53.6:
``config.DLA_core = 0``) and EngineFromBytes never sets the runtime's DLA core; TrtRunner sets each
feed's shape and fails outside the profile (runner.py L410-413 in 0.53.6), so chunking and padding stay
ours; there are no sidecars or compatibility checks to reuse; and it is one more dependency JetPack
does not ship. Its behaviours worth having are mirrored and cited instead (TF32 off, empty timing cache
on a bad one, checked set_* calls, one logger, plugins). Polygraphy stays an optional device-memory
library and the independent cross-check in ``make gpu-check``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from edgexfer.backends import trt_compat as compat
from edgexfer.backends import trt_runtime
from edgexfer.backends.base import Backend, BuildOption, BuildResult, Runner
from edgexfer.backends.trt_devmem import have_device_memory_libraries
from edgexfer.backends.trt_runtime import trt_machine

__all__ = ["TensorRTBackend", "build_defaults", "trt_machine"]


class TensorRTBackend(Backend):
    """TensorRT engines: fp32, fp16, and int8 from the TensorRT Q/DQ artifact."""

    name = "tensorrt"
    precisions = ("fp32", "fp16", "int8")
    int8_source = "onnx_int8_tensorrt"
    int8_target = "tensorrt"
    judges_int8 = True  # export scores TensorRT INT8 candidates on engines where TensorRT is usable
    suffixes = (".engine", ".plan")
    build_options = (
        BuildOption(
            "min_batch", int, "TensorRT: profile minimum batch (smaller batches are padded to it).", default=1
        ),
        BuildOption("opt_batch", int, "TensorRT: batch the kernels are tuned for.", default=1),
        BuildOption("max_batch", int, "TensorRT: profile maximum batch.", default=8),
        BuildOption("workspace_mb", int, "TensorRT: builder workspace limit in MiB.", default=1024),
        BuildOption(
            "dla_core",
            int,
            "TensorRT on Jetson: run on this DLA core (one static batch; fp16, int8 from TensorRT 10), GPU fallback.",
        ),
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
            "tf32",
            bool,
            "TensorRT: let fp32 layers use TF32 tensor cores (default off: exact fp32, as Polygraphy).",
            default=False,
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
        """Usable when tensorrt imports, a CUDA GPU is visible and a device-memory library is installed.

        Which library actually works is decided when an engine is loaded (it is probed there).
        """
        try:
            trt = trt_runtime.load_trt()
            version = compat.parse_version(trt.__version__)
            compat.check_supported(version)
        except Exception as exc:  # noqa: BLE001 - availability must not raise
            return False, str(exc)
        facts = trt_machine(trt)
        if not facts.get("gpu") and not facts.get("jetson"):
            return False, f"tensorrt {trt.__version__} is installed but no CUDA GPU is visible"
        libraries = [name for name, ok in have_device_memory_libraries().items() if ok]
        if not libraries:
            return False, f"no library for CUDA buffers; pip install polygraphy or {compat.CUDA_PYTHON_ADVICE}"
        return True, f"tensorrt {trt.__version__} on {facts.get('gpu')} (buffers: {', '.join(libraries)})"

    def build(
        self, onnx_path: Path, precision: str, out_dir: Path, options: Optional[Dict[str, Any]] = None
    ) -> BuildResult:
        """Build ``out_dir/tensorrt_<precision>.engine`` (+ sidecar + timing cache).

        ``options``: any of :attr:`build_options` (unset ones take their declared defaults; with
        ``dla_core`` the batch profile is static).
        """
        from edgexfer.backends.trt_build import build_engine

        self.require_available()
        self.check_precision(precision)
        trt = trt_runtime.load_trt()
        return build_engine(
            trt, Path(onnx_path), precision, Path(out_dir), dict(options or {}), trt_machine(trt), build_defaults()
        )

    def int8_judge(self, home: Path) -> Any:
        """Scores INT8 candidates on engines built like ``edgexfer build --precision int8`` builds them
        (layers outside the Q/DQ pairs in fp16 where the typing allows it); see trt_judge.py."""
        from edgexfer.backends.trt_judge import TensorRTInt8Judge

        return TensorRTInt8Judge(self, Path(home), {"int8_fp16_fallback": True})

    def load(self, artifact_path: Path, options: Optional[Dict[str, Any]] = None) -> Runner:
        """A runner for a built engine (checked against this machine on activation).

        Options: ``device_memory`` ('polygraphy' | 'cuda-python' | 'torch'; default: the first that works).
        """
        from edgexfer.backends.trt_runner import TensorRTRunner

        options = dict(options or {})
        return TensorRTRunner(Path(artifact_path), device_memory_provider=options.get("device_memory"))


def build_defaults() -> Dict[str, Any]:
    """Every declared TensorRT build option with its default: what :func:`build_engine` accepts."""
    return {option.name: option.default for option in TensorRTBackend.build_options}
