"""The Backend / Runner interface every runtime implements, and the registry of backends.

A :class:`Backend` says whether it can run here (and why not), builds an artifact from an ONNX file
for a precision, and loads an artifact into a :class:`Runner`. A runner is a context manager with
``infer(batch) -> logits``. Stages talk to runners only: no ``if backend == "tensorrt"`` outside this
package. Optional runtimes (tensorrt, openvino) are imported inside their backend's methods.
"""

from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from edgexfer.errors import ArtifactError, BackendUnavailableError, ConfigError

# name -> "module:Class"; modules are imported only when the backend is asked for.
BACKENDS: Dict[str, str] = {
    "torch": "edgexfer.backends.torch:TorchBackend",
    "onnxruntime": "edgexfer.backends.onnxruntime:OnnxRuntimeBackend",
    "openvino": "edgexfer.backends.openvino:OpenVinoBackend",
    "tensorrt": "edgexfer.backends.tensorrt:TensorRTBackend",
}
PRECISIONS = ("fp32", "fp16", "int8")
# The float reference every artifact is compared with (verify, bench): the checkpoint run by torch.
REFERENCE_BACKEND = "torch"
# Export-stage artifacts (docs/contracts.md) that are ONNX models ONNX Runtime runs without a build,
# with the precision they compute in.
EXPORT_MODELS: Dict[str, str] = {
    "onnx_int8_cpu": "int8",
    "onnx_int8_openvino": "int8",
    "onnx": "fp32",
    "onnx_uint8": "fp32",
    "onnx_int8_tensorrt": "int8",
}
# Which artifact of a run to use when none is named: fastest first (GPU engines, then CPU INT8, then
# float), the ONNX model last because every machine with ONNX Runtime can run it.
ARTIFACT_PREFERENCE: Tuple[str, ...] = (
    "tensorrt_int8",
    "tensorrt_fp16",
    "onnxruntime_int8",
    "openvino_int8",
    "tensorrt_fp32",
    "openvino_fp16",
    "onnxruntime_fp16",
    "onnxruntime_fp32",
    "openvino_fp32",
    "onnx",
)


@dataclass(frozen=True)
class BuildOption:
    """One option a backend's :meth:`Backend.build` takes; the CLI makes ``--<name>`` from it.

    ``kind`` is ``int``, ``bool`` (a flag; with ``negative`` also ``--no-...``/the named opposite), or
    ``str`` with ``choices``. ``default`` is what the backend uses when the option is not given.
    """

    name: str
    kind: type
    help: str
    default: Any = None
    choices: Tuple[str, ...] = ()
    negative: Optional[str] = None

    @property
    def flag(self) -> str:
        """The command-line spelling, e.g. ``--max-batch``."""
        return "--" + self.name.replace("_", "-")

    def check(self, value: Any) -> None:
        """Raise ConfigError when ``value`` is not of this option's kind (or not one of its choices)."""
        # bool is an int in Python; an int option given ``true`` is a mistake, not 1.
        if not isinstance(value, self.kind) or (self.kind is int and isinstance(value, bool)):
            raise ConfigError(f"{self.flag} takes {_KIND_WORDS.get(self.kind, self.kind.__name__)}, "
                              f"got {value!r}")
        if self.choices and value not in self.choices:
            raise ConfigError(f"{self.flag} must be one of {', '.join(self.choices)}, got {value!r}")


_KIND_WORDS = {bool: "true or false", int: "a whole number", str: "a string"}


@dataclass
class BuildResult:
    """What :meth:`Backend.build` wrote: the artifact file, its kind and facts worth recording.

    The build stage moves the result out of its staging folder with ``dataclasses.replace(result,
    path=...)``: nothing else in it may name the staging folder.
    """

    path: Path
    kind: str
    precision: str
    backend: str
    extra: Dict[str, Any] = field(default_factory=dict)


class Runner(abc.ABC):
    """A loaded model. Use as a context manager; call :meth:`infer` inside it.

    ``input_dtype`` is ``np.float32`` for normalised NCHW input or ``np.uint8`` for ``--uint8-input``
    models (layout in ``input_layout``). ``infer`` takes a batch and returns float32 logits
    ``(batch, num_classes)``.
    """

    name: str = "runner"
    input_name: str = "input"
    input_dtype: Any = np.float32
    input_layout: str = "NCHW"
    # Whether infer() may run on several threads at once (the runtime's session is thread-safe): then
    # the default infer_stream keeps several requests in flight; otherwise it runs them one by one.
    concurrent_infer: bool = False

    def __enter__(self) -> "Runner":
        self.activate()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.deactivate()

    def activate(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Acquire resources (sessions, device buffers). Default: nothing."""

    def deactivate(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Release resources. Default: nothing."""

    @abc.abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch; return float32 logits of shape (batch, num_classes)."""

    def infer_stream(self, batches: Iterable[np.ndarray], in_flight: int = 0) -> Iterator[np.ndarray]:
        """Logits of every batch, in input order, with up to ``in_flight`` requests running at once where
        the runtime can (0: :meth:`default_in_flight`); the throughput path of bench and predict.

        The default runs ``infer`` on ``in_flight`` threads when :attr:`concurrent_infer`, else one
        batch after another. A runtime with its own asynchronous requests overrides this.
        """
        in_flight = in_flight or self.default_in_flight()
        if in_flight > 1 and self.concurrent_infer:
            from edgexfer.prefetch import ordered_prefetch

            for _, logits in ordered_prefetch(self.infer, batches, workers=in_flight, window=in_flight):
                yield logits
            return
        for batch in batches:
            yield self.infer(batch)

    def default_in_flight(self) -> int:
        """Requests in flight that :meth:`infer_stream` uses when not told: 2 for a runner whose infer
        may run concurrently (one more request hides the host work between runs), else 1."""
        return 2 if self.concurrent_infer else 1

    def describe(self) -> Dict[str, Any]:
        """Facts about the loaded model for reports (provider, threads, device...)."""
        return {"runner": self.name, "input_dtype": np.dtype(self.input_dtype).name,
                "input_layout": self.input_layout}


class Backend(abc.ABC):
    """A runtime that can build and load artifacts."""

    name: str = "backend"
    precisions: Tuple[str, ...] = ("fp32",)
    # The exported INT8 QDQ artifact (docs/contracts.md) this backend builds ``int8`` from: the x86
    # CPU recipe by default; TensorRT overrides it with its symmetric recipe. ``int8_target`` is the
    # ``export --target`` that makes it.
    int8_source: str = "onnx_int8_cpu"
    int8_target: str = "cpu"
    # Whether export scores this target's INT8 candidates on this backend when it is usable, instead of
    # ONNX Runtime; such a backend defines ``int8_judge(home) -> Int8Judge`` (backends/int8_judge.py).
    judges_int8: bool = False
    # Export artifacts ``int8`` is built from when the run lacks ``int8_source`` (in this order); the build
    # records which one it used.
    int8_fallback_sources: Tuple[str, ...] = ()
    # File suffixes of the artifacts this backend loads (``predict FILE`` picks the backend by them).
    suffixes: Tuple[str, ...] = ()
    # The options :meth:`build` takes (declared here so the CLI and the pipeline derive theirs).
    build_options: Tuple[BuildOption, ...] = ()
    # Option names :meth:`load` takes besides ``threads`` (e.g. ONNX Runtime's ``providers``).
    load_options: Tuple[str, ...] = ()

    @abc.abstractmethod
    def availability(self) -> Tuple[bool, str]:
        """(usable here, reason when not / short description when yes). Must not raise."""

    def require_available(self) -> None:
        """Raise BackendUnavailableError with the reason when this backend cannot run here."""
        ok, reason = self.availability()
        if not ok:
            raise BackendUnavailableError(f"backend '{self.name}' is not usable here: {reason}")

    def check_precision(self, precision: str) -> None:
        """Raise ConfigError when this backend cannot build ``precision``."""
        if precision not in self.precisions:
            raise ConfigError(f"backend '{self.name}' cannot build precision '{precision}'; it supports "
                              f"{', '.join(self.precisions)}")

    @abc.abstractmethod
    def build(self, onnx_path: Path, precision: str, out_dir: Path,
              options: Optional[Dict[str, Any]] = None) -> BuildResult:
        """Build an artifact from an ONNX file (float, or the matching INT8 QDQ one for int8).

        Writes ``out_dir/<backend>_<precision>.<ext>`` and the files :meth:`artifact_files` names.
        The build stage passes a private staging folder as ``out_dir`` and moves those files into the
        run's ``build/`` folder only after its smoke check; state kept between builds (TensorRT's timing
        cache) belongs in :func:`build_home` of ``out_dir``.
        """

    def artifact_files(self, path: Path) -> List[Path]:
        """Every file the artifact at ``path`` is made of; they are moved and hashed together.

        The artifact itself and its sidecar when it has one; backends with more (OpenVINO's weights)
        add theirs. The artifact comes last, so a reader that finds it finds the rest.
        """
        from edgexfer.backends.sidecar import sidecar_path

        path = Path(path)
        sidecar = sidecar_path(path)
        return ([sidecar] if sidecar != path and sidecar.is_file() else []) + [path]

    @abc.abstractmethod
    def load(self, artifact_path: Path, options: Optional[Dict[str, Any]] = None) -> Runner:
        """Load a built artifact into a runner (not yet activated)."""


def backend_for_file(path: "Path | str") -> Optional[str]:
    """The registered backend that loads a file with this suffix, or None."""
    suffix = Path(path).suffix.lower()
    for name in BACKENDS:
        if suffix in _backend_class(name).suffixes:
            return name
    return None


def known_suffixes() -> List[str]:
    """Every artifact suffix some backend loads (for error messages)."""
    return [suffix for name in BACKENDS for suffix in _backend_class(name).suffixes]


def artifact_target(name: str, record: Any) -> Tuple[str, str]:
    """(backend, precision) that runs manifest artifact ``name`` (a build, an export model or the
    checkpoint). The one place that reads it: the build stage records both in ``extra``."""
    if record.stage == "build":
        try:
            return str(record.extra["backend"]), str(record.extra["precision"])
        except KeyError as exc:
            raise ArtifactError(
                f"build record '{name}' has no {exc.args[0]}; rebuild it with 'edgexfer build'"
            ) from exc
    if record.kind == "checkpoint":
        return REFERENCE_BACKEND, "fp32"
    if name in EXPORT_MODELS or record.kind in ("onnx", "onnx-qdq"):
        return "onnxruntime", EXPORT_MODELS.get(name, "int8" if record.kind == "onnx-qdq" else "fp32")
    raise ConfigError(
        f"artifact '{name}' is a {record.kind} from the {record.stage} stage, not a model; name a build "
        f"artifact, an exported ONNX model ({', '.join(EXPORT_MODELS)}) or the checkpoint"
    )


# The build stage stages a build in ``build/.<name>.<random>.partial/`` (see Backend.build).
STAGING_SUFFIX = ".partial"


def build_home(out_dir: Path) -> Path:
    """Where a build's artifacts end up: ``out_dir``, or its parent when ``out_dir`` is the build stage's
    staging folder, which is discarded after the build."""
    out_dir = Path(out_dir)
    if out_dir.name.startswith(".") and out_dir.name.endswith(STAGING_SUFFIX):
        return out_dir.parent
    return out_dir


def check_build_options(backend: str, options: Mapping[str, Any]) -> None:
    """Raise one ConfigError line when ``options`` holds one ``backend`` does not declare (naming the
    backends that take it) or a value of the wrong kind."""
    declared = {option.name: option for option in _backend_class(backend).build_options}
    everyone = all_build_options()
    for key, value in options.items():
        if key in declared:
            declared[key].check(value)
        elif key in everyone:
            option, owners = everyone[key]
            raise ConfigError(f"{option.flag} applies to --backend {'/'.join(owners)}, not {backend}; drop it")
        else:
            raise ConfigError(f"unknown build option '{key}'; build options: {', '.join(sorted(everyone))}")


def all_build_options() -> Dict[str, Tuple[BuildOption, List[str]]]:
    """Every build option any backend declares: name -> (the declaration, backends that take it)."""
    out: Dict[str, Tuple[BuildOption, List[str]]] = {}
    for name in BACKENDS:
        for option in _backend_class(name).build_options:
            out.setdefault(option.name, (option, []))[1].append(name)
    return out


def _backend_class(name: str) -> type:
    module_name, class_name = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def get_backend(name: str) -> Backend:
    """Instantiate a backend by name; unknown names list the known ones with their availability."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend '{name}'; choose one of: {_describe_all()}")
    return _backend_class(name)()


def available_backends(names: Optional[Sequence[str]] = None) -> List[Tuple[str, bool, str]]:
    """(name, usable, reason) for every registered backend (or those named)."""
    rows = []
    for name in names or BACKENDS:
        try:
            ok, reason = get_backend(name).availability()
        except ImportError as exc:
            ok, reason = False, f"cannot import: {exc}"
        rows.append((name, ok, reason))
    return rows


def _describe_all() -> str:
    parts = []
    for name, ok, reason in available_backends():
        parts.append(name if ok else f"{name} (unavailable: {reason})")
    return "; ".join(parts)
