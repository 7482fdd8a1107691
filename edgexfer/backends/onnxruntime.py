"""The ONNX Runtime backend: CPU with tuned session options, CUDA and TensorRT execution providers
where the installed onnxruntime has them.

Build = let ONNX Runtime optimise the graph offline and save the optimised model as the artifact
(``build/onnxruntime_<precision>.onnx``), so loading on the device skips the optimisation work. The
offline level is ``extended`` by default: ``all`` adds layout transformations tied to the CPU that ran
them (NCHWc blocking for its vector width), which ONNX Runtime documents as not portable; the runner
applies them online at load time anyway. INT8 builds take the CPU QDQ model (U8 activations, S8
per-channel weights), whose Q/DQ pairs ONNX Runtime fuses into integer kernels.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgexfer.backends.base import Backend, BuildOption, BuildResult, Runner
from edgexfer.backends.common import ORT_TYPES, as_logits, check_batch, layout_of_shape, static_dim
from edgexfer.errors import ArtifactError, BackendUnavailableError, ConfigError

log = logging.getLogger(__name__)

OPT_LEVELS = ("disable", "basic", "extended", "all")
# Short provider names users type -> ONNX Runtime's names.
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailableError(
            f"onnxruntime is not installed ({exc}); pip install onnxruntime (or onnxruntime-gpu)"
        ) from exc
    return onnxruntime


def opt_level(name: str) -> Any:
    """ONNX Runtime's GraphOptimizationLevel for 'disable' | 'basic' | 'extended' | 'all'."""
    ort = _ort()
    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    if name not in levels:
        raise ConfigError(f"unknown graph optimisation level '{name}'; choose one of {', '.join(OPT_LEVELS)}")
    return levels[name]


def session_options(
    threads: Optional[int] = None,
    level: str = "all",
    optimized_path: Optional[Path] = None,
    spin: bool = False,
) -> Any:
    """Session options tuned for single-stream latency: intra-op threads = physical cores, one
    inter-op thread, sequential execution, the given optimisation level.

    Worker-thread spinning is off unless ``spin``: spinning threads shave a little latency on an idle
    machine but collapse it (measured 3-4x on a 2-core box) as soon as anything else wants the cores,
    which on an edge device is the camera/decode/preprocessing work around every inference.
    """
    from edgexfer.hardware import physical_cores

    # ONNX Runtime takes a negative thread count without complaint; say so instead of guessing.
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 0):
        raise ConfigError(f"--threads must be a whole number >= 1 (or left out for the physical cores), "
                          f"got {threads!r}")
    ort = _ort()
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or physical_cores())
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = opt_level(level)
    options.log_severity_level = 3  # warnings about unused initialisers are noise for users
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "1" if spin else "0")
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    return options


def resolve_providers(
    requested: Optional[Sequence[str]],
    available: Sequence[str],
    cache_dir: Optional[Path] = None,
    precision: str = "fp32",
) -> List[Any]:
    """The provider list for a session: names (short or ORT's) checked against what is installed.

    ``None`` or ``['auto']`` means the fastest installed: TensorRT, then CUDA, then CPU. CPU is always
    appended as the fallback for nodes a GPU provider does not take.
    """
    if not requested or list(requested) == ["auto"]:
        chosen = [p for p in GPU_PROVIDERS if p in available]
    else:
        chosen = []
        for name in requested:
            full = PROVIDERS.get(name, name)
            if full not in available:
                raise BackendUnavailableError(
                    f"ONNX Runtime execution provider '{name}' is not in this onnxruntime build (it has: "
                    f"{', '.join(available)}); install onnxruntime-gpu for CUDA/TensorRT"
                )
            chosen.append(full)
    result: List[Any] = []
    for name in chosen:
        if name == "TensorrtExecutionProvider":
            trt_options: Dict[str, Any] = {
                "trt_fp16_enable": precision != "fp32",
                "trt_int8_enable": precision == "int8",
            }
            if cache_dir is not None:
                trt_options.update(
                    {
                        "trt_engine_cache_enable": True,
                        "trt_engine_cache_path": str(cache_dir),
                        "trt_timing_cache_enable": True,
                    }
                )
            result.append((name, trt_options))
        elif name != "CPUExecutionProvider":
            result.append(name)
    result.append("CPUExecutionProvider")
    return result


class OnnxRuntimeRunner(Runner):
    """An ONNX Runtime session; input dtype and layout are read from the model itself."""

    name = "onnxruntime"
    concurrent_infer = True  # ORT's docs: several threads may call Run() on one InferenceSession at once

    def __init__(
        self,
        model_path: Path,
        providers: Optional[Sequence[str]] = None,
        threads: Optional[int] = None,
        level: str = "all",
        precision: str = "fp32",
        spin: bool = False,
    ):
        self.model_path = Path(model_path)
        self.spin = spin
        self.requested = list(providers) if providers else None
        self.threads = threads
        self.level = level
        self.precision = precision
        self.session: Any = None
        self._spatial: Tuple[Optional[int], Optional[int]] = (None, None)
        self._fixed_batch: Optional[int] = None

    def activate(self) -> None:
        """Create the session (the expensive part: graph optimisation, kernel selection)."""
        ort = _ort()
        if not self.model_path.is_file():
            raise ArtifactError(f"ONNX model '{self.model_path}' does not exist")
        providers = resolve_providers(
            self.requested,
            ort.get_available_providers(),
            cache_dir=self.model_path.parent,
            precision=self.precision,
        )
        options = session_options(self.threads, self.level, spin=self.spin)  # a bad option is not a bad model
        try:
            self.session = ort.InferenceSession(
                str(self.model_path), sess_options=options, providers=providers
            )
        except Exception as exc:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph types
            raise ArtifactError(
                f"ONNX Runtime cannot load '{self.model_path}': "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from exc
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        if first.type not in ORT_TYPES:
            raise ArtifactError(
                f"'{self.model_path}' takes {first.type} input; edgexfer runners feed float32 or uint8 images"
            )
        self.input_dtype = ORT_TYPES[first.type]
        if self.input_dtype == np.float16:
            self.input_dtype = np.float32  # fp16 builds keep float32 I/O; see OnnxRuntimeBackend.build
        shape = list(first.shape)
        self.input_layout = layout_of_shape(shape)
        hw = shape[2:4] if self.input_layout == "NCHW" else shape[1:3]
        self._spatial = (static_dim(hw[0]), static_dim(hw[1])) if len(hw) == 2 else (None, None)
        self._fixed_batch = static_dim(shape[0]) if shape else None
        outputs = [o.name for o in self.session.get_outputs()]
        self.output_name = "logits" if "logits" in outputs else outputs[0]

    def deactivate(self) -> None:
        """Drop the session (frees its memory and threads)."""
        self.session = None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run a batch; a model exported with a fixed batch is run in slices of that size."""
        if self.session is None:
            raise RuntimeError("OnnxRuntimeRunner.infer called outside 'with runner:'")
        array = check_batch(
            batch, self.input_dtype, self.input_layout, self._spatial, f"ONNX model '{self.model_path.name}'"
        )
        step = self._fixed_batch
        if step is None or step == array.shape[0]:
            return self._run(array)
        if array.shape[0] % step:
            raise ConfigError(f"'{self.model_path.name}' has a fixed batch of {step}; pass a multiple of it")
        return np.concatenate([self._run(array[i : i + step]) for i in range(0, array.shape[0], step)])

    def _run(self, array: np.ndarray) -> np.ndarray:
        output = self.session.run([self.output_name], {self.input_name: array})[0]
        return as_logits(output, array.shape[0], f"ONNX model '{self.model_path.name}'")

    def describe(self) -> Dict[str, Any]:
        """Runner facts plus providers, threads, optimisation level and onnxruntime version."""
        ort = _ort()
        facts = super().describe()
        facts.update(
            {
                "model": str(self.model_path),
                "onnxruntime": ort.__version__,
                "providers": self.session.get_providers() if self.session else self.requested,
                "threads": self.threads or session_options().intra_op_num_threads,
                "optimization": self.level,
                "spinning": self.spin,
            }
        )
        return facts


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime: fp32 and int8 (QDQ) on CPU; fp16 where a CUDA or TensorRT provider is installed."""

    name = "onnxruntime"
    precisions = ("fp32", "fp16", "int8")
    suffixes = (".onnx",)
    load_options = ("providers",)
    build_options = (
        BuildOption("threads", int, "ONNX Runtime: threads for the offline optimisation."),
        BuildOption(
            "opt_level",
            str,
            "ONNX Runtime: offline graph optimisation (default extended; 'all' is tied to this CPU).",
            choices=("basic", "extended", "all"),
        ),
    )

    def availability(self) -> Tuple[bool, str]:
        """Usable when onnxruntime imports; the reason lists its execution providers."""
        try:
            ort = _ort()
            providers = ort.get_available_providers()
        except Exception as exc:  # noqa: BLE001 - availability must not raise
            return False, str(exc)
        short = [k for k, v in PROVIDERS.items() if v in providers]
        return True, f"onnxruntime {ort.__version__} (providers: {', '.join(short) or ', '.join(providers)})"

    def check_precision(self, precision: str) -> None:
        """fp16 needs a GPU provider: ONNX Runtime's CPU kernels for fp16 are slower than fp32."""
        super().check_precision(precision)
        if precision == "fp16":
            available = _ort().get_available_providers()
            if not any(p in available for p in GPU_PROVIDERS):
                raise ConfigError(
                    "backend 'onnxruntime' can build fp16 only with a CUDA or TensorRT execution "
                    "provider (install onnxruntime-gpu); on this CPU-only build use fp32 or int8"
                )

    def build(
        self, onnx_path: Path, precision: str, out_dir: Path, options: Optional[Dict[str, Any]] = None
    ) -> BuildResult:
        """Optimise ``onnx_path`` offline and save ``out_dir/onnxruntime_<precision>.onnx``.

        Options: ``opt_level`` (offline optimisation, default 'extended'; 'all' is not portable across
        CPUs), ``threads``. fp16 converts the float model's weights first, keeping float32 I/O.
        """
        from edgexfer.fsutil import atomic_path
        from edgexfer.hardware import cpu_info

        options = dict(options or {})
        self.check_precision(precision)
        level = str(options.get("opt_level", "basic" if precision == "fp16" else "extended"))
        opt_level(level)
        source = Path(onnx_path)
        if not source.is_file():
            raise ArtifactError(f"ONNX model '{source}' does not exist")
        final = Path(out_dir) / f"onnxruntime_{precision}.onnx"
        with atomic_path(final) as tmp:
            model_in = _fp16_copy(source, tmp.with_suffix(".fp16.onnx")) if precision == "fp16" else source
            try:
                _optimise(model_in, tmp, level, options.get("threads"))
            finally:
                if model_in != source and model_in.exists():
                    model_in.unlink()
            _copy_metadata(source, tmp)
        cpu = cpu_info()
        return BuildResult(
            path=final,
            kind="onnxruntime",
            precision=precision,
            backend=self.name,
            extra={
                "optimization": level,
                "onnxruntime": _ort().__version__,
                "source": str(source),
                "cpu": cpu["model"],
                "cpu_features": cpu["features"],
            },
        )

    def load(self, artifact_path: Path, options: Optional[Dict[str, Any]] = None) -> Runner:
        """A runner for any ONNX model (a build artifact or an export artifact).

        Options: ``providers`` (e.g. ['cpu'] or ['cuda'], or ['auto'] for the fastest installed;
        default: CPU, and 'auto' for ``*_fp16`` builds), ``threads``, ``level`` (online
        optimisation, default 'all'), ``precision``,
        ``spin`` (let idle worker threads spin; default off, see :func:`session_options`).
        """
        options = dict(options or {})
        # An fp16 build is for a GPU provider (the CPU provider lacks fp16 kernels for most ops); every
        # other artifact runs on the CPU provider unless asked, which is what it was optimised for.
        default = ["auto"] if Path(artifact_path).stem.endswith("_fp16") else ["cpu"]
        providers = options.get("providers", default)
        if isinstance(providers, str):
            providers = [providers]
        return OnnxRuntimeRunner(
            Path(artifact_path),
            providers=providers,
            threads=options.get("threads"),
            level=str(options.get("level", "all")),
            precision=str(options.get("precision", "fp32")),
            spin=bool(options.get("spin", False)),
        )


def _optimise(model_in: Path, model_out: Path, level: str, threads: Optional[int]) -> None:
    """Have ONNX Runtime optimise ``model_in`` on the CPU provider and write the result to ``model_out``."""
    ort = _ort()
    options = session_options(threads, level, optimized_path=model_out)
    try:
        ort.InferenceSession(str(model_in), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        raise ArtifactError(
            f"ONNX Runtime cannot optimise '{model_in}': "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc


def _fp16_copy(source: Path, dest: Path) -> Path:
    """Write a float16-weight copy of a float model with float32 inputs/outputs kept."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(dest))
    return dest


def _copy_metadata(source: Path, target: Path) -> None:
    """ONNX Runtime's saved model drops ``metadata_props``; put the edgexfer ones back."""
    import onnx

    source_meta = {p.key: p.value for p in onnx.load(str(source), load_external_data=False).metadata_props}
    if not source_meta:
        return
    model = onnx.load(str(target))
    existing = {p.key for p in model.metadata_props}
    for key, value in source_meta.items():
        if key not in existing:
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
    onnx.save(model, str(target))


def session_logits(model: Any, inputs: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Logits of an ONNX model (ModelProto or path) over ``inputs`` with ONNX Runtime on the CPU."""
    import onnxruntime as ort

    from edgexfer.hardware import physical_cores

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, physical_cores())
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    source = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    chunks = [
        session.run(None, {name: inputs[i : i + batch_size]})[0] for i in range(0, len(inputs), batch_size)
    ]
    return np.concatenate(chunks).astype(np.float32)
