"""What the bench measures and how: :class:`BenchConfig`, one timed :class:`BenchTarget`, the result."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from edgexfer.errors import BackendUnavailableError, ConfigError

BENCH_SCHEMA_VERSION = 1
DEFAULT_MODELS = ("resnet18", "mobilenet_v3_large", "efficientnet_b0")
MODES = ("latency", "throughput")


@dataclass(frozen=True)
class BenchConfig:
    """Options of ``edgexfer bench``. ``backends=None`` means every backend available here; an empty
    ``models`` with ``run_dir`` benches that run's built artifacts instead of random-weight models."""

    models: Tuple[str, ...] = DEFAULT_MODELS
    size: int = 224
    batch_sizes: Tuple[int, ...] = (1, 8)
    backends: Optional[Tuple[str, ...]] = None
    precisions: Tuple[str, ...] = ("fp32", "fp16", "int8")
    run_dir: Optional[Path] = None
    work_dir: Path = Path("runs/bench")
    out_dir: Path = Path("benchmarks/results")
    machine_name: Optional[str] = None
    threads: Optional[int] = None
    end_to_end: bool = True
    uint8_input: bool = True
    calibration: Path = Path("calibration/fashion-mnist")
    calibration_images: int = 64
    warmup: int = 10
    min_iterations: int = 30
    min_time_s: float = 1.0
    max_time_s: float = 4.5
    rounds: int = 3
    seed: int = 0
    progress: bool = True
    mode: str = "latency"
    in_flight: int = 0
    decode_workers: int = 0
    frame: Optional[str] = None
    frame_format: str = "rgb"

    @property
    def frame_spec(self) -> Any:
        """The raw frame of ``--frame`` / ``--frame-format`` (:class:`edgexfer.frames.FrameSpec`), or None."""
        from edgexfer.frames import FrameSpec

        return None if self.frame is None else FrameSpec.parse(self.frame, self.frame_format)

    def _check_frame(self) -> None:
        """``--frame`` makes raw-frame models of the random-weight ``--model`` benches (uint8 input, a frame at
        least the model's crop); with ``--run`` it picks the run's frame builds of that size."""
        from edgexfer.frames import FRAME_FORMATS
        from edgexfer.preprocess import Preprocess

        if str(self.frame_format).lower() not in FRAME_FORMATS:
            raise ConfigError(f"unknown --frame-format '{self.frame_format}'; choose rgb or bgr")
        object.__setattr__(self, "frame_format", str(self.frame_format).lower())
        spec = self.frame_spec
        if self.run_dir is None:
            if not self.uint8_input:
                raise ConfigError("--frame benches models that take raw uint8 frames; drop --float-input")
            spec.check_crop(Preprocess.imagenet(self.size, augment="none"))
        object.__setattr__(self, "frame", spec.text)

    def __post_init__(self) -> None:
        for name in ("models", "batch_sizes", "precisions"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.backends is not None:
            object.__setattr__(self, "backends", tuple(self.backends))
        for name in ("run_dir", "work_dir", "out_dir", "calibration"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        if not self.models and self.run_dir is None:
            raise ConfigError("bench needs at least one --model (or --run RUN_DIR)")
        if not self.batch_sizes or any(int(b) < 1 for b in self.batch_sizes):
            raise ConfigError(f"batch sizes must be integers >= 1, got {list(self.batch_sizes)}")
        from edgexfer.backends.base import BACKENDS, PRECISIONS

        for precision in self.precisions:
            if precision not in PRECISIONS:
                raise ConfigError(f"unknown precision '{precision}'; choose from {', '.join(PRECISIONS)}")
        for backend in self.backends or ():
            if backend not in BACKENDS:
                raise ConfigError(f"unknown backend '{backend}'; choose from {', '.join(BACKENDS)}")
        if self.size < 32:
            raise ConfigError(f"bench input size must be >= 32, got {self.size}")
        if self.mode not in MODES:
            raise ConfigError(f"unknown --mode '{self.mode}'; choose one of {', '.join(MODES)}")
        if self.in_flight < 0 or self.decode_workers < 0:
            raise ConfigError(f"--in-flight and --decode-workers must be >= 0 (0: the runtime's / the "
                              f"machine's choice), got {self.in_flight} and {self.decode_workers}")
        if self.frame is not None:
            self._check_frame()
        if self.rounds < 1:
            raise ConfigError(f"--rounds must be >= 1, got {self.rounds}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.threads}")
        # Checked here, before any model is exported: the timing loop would only fail after that work.
        if not self.min_time_s > 0:
            raise ConfigError(f"--min-time must be > 0 seconds, got {self.min_time_s}")
        if self.min_iterations < 1 or self.warmup < 0:
            raise ConfigError(f"--min-iterations must be >= 1 and warmup >= 0, got {self.min_iterations} "
                              f"and {self.warmup}")


@dataclass(frozen=True)
class BenchTarget:
    """One thing to time: a model's artifact for a backend and precision (the reference: the checkpoint)."""

    model: str
    backend: str
    precision: str
    path: Path
    preprocess: Any
    artifact: str
    frame: Any = None  # the raw frame (edgexfer.frames.FrameSpec) of a model exported with --frame


@dataclass
class BenchPlan:
    """One model's targets and the (backend, precision) pairs that could not be prepared, with why."""

    targets: List[BenchTarget]
    skipped: List[Dict[str, Any]] = field(default_factory=list)


@dataclass
class BenchResult:
    """Where the results went and the measured rows."""

    json_path: Path
    markdown_path: Path
    plot_path: Optional[Path]
    data: Dict[str, Any] = field(repr=False, default_factory=dict)


def selected_backends(config: BenchConfig) -> Tuple[List[str], List[Dict[str, Any]]]:
    """(backends to bench, skipped rows with reasons): every available one unless ``backends`` names them,
    then each named one must be usable here."""
    from edgexfer.backends.base import available_backends

    chosen, skipped = [], []
    for name, ok, reason in available_backends(config.backends):
        if ok:
            chosen.append(name)
        else:
            skipped.append({"backend": name, "reason": reason})
    if config.backends and skipped:
        first = skipped[0]
        raise BackendUnavailableError(f"backend '{first['backend']}' is not usable here: {first['reason']}")
    return chosen, skipped
