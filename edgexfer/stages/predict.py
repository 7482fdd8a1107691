"""The predict stage: top-k class names and scores for image files from any artifact.

The target is a run directory (the best built artifact usable here, or ``artifact=NAME``) or a file
whose suffix names its backend (``.onnx``, ``.engine``/``.plan``, ``.xml``, an edgexfer checkpoint
``.pt``; see :func:`edgexfer.backends.base.backend_for_file`). Class names and preprocessing come from
the artifact's own metadata (ONNX ``metadata_props``, the sidecar JSON of an engine / IR, or the
checkpoint), so nothing else is needed.

Images are given as files, folders (their image files, sorted), glob patterns (``'photos/*.jpg'``,
quoted so the shell leaves them) or a list file (``list_file``: one path per line). They are streamed
(:func:`edgexfer.stream.pipelined`, the same pipeline ``bench --mode throughput`` times): ``workers``
threads decode and preprocess the images ahead of inference (a bounded window, so memory does not grow
with the number of images) while ``in_flight`` batches run through the runner's ``infer_stream`` at once
(OpenVINO asynchronous requests, ONNX Runtime concurrent runs, TensorRT execution contexts); results come
out in input order, to ``on_prediction`` as each batch finishes where one is given. Before the model is
loaded every file is opened once (header only): a missing file or one that is not an image fails with
one line before any inference. A file whose header reads but whose pixel data is corrupt fails with the
same kind of line when its turn comes; no :class:`PredictResult` is returned then (the CLI's text and
``--json`` outputs print nothing on stdout; ``--jsonl`` has printed the images before it).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgexfer.errors import ArtifactError, ConfigError
from edgexfer.stages.predict_inputs import (  # noqa: F401  (part of this stage's interface)
    ModelInfo,
    check_images,
    expand_images,
    load_options,
    model_info,
    read_list_file,
    resolve_target,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictConfig:
    """Options of ``edgexfer predict``."""

    target: Path
    images: Tuple[Path, ...]
    artifact: Optional[str] = None
    backend: Optional[str] = None
    top_k: int = 5
    batch_size: int = 16
    threads: Optional[int] = None
    provider: Optional[str] = None
    workers: Optional[int] = None
    in_flight: int = 0
    list_file: Optional[Path] = None
    video: Optional[str] = None
    progress: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "target", Path(self.target))
        object.__setattr__(self, "images", tuple(Path(p) for p in self.images))
        if self.list_file is not None:
            object.__setattr__(self, "list_file", Path(self.list_file))
        if self.video is not None and (self.images or self.list_file is not None):
            raise ConfigError("--video reads the frames of one video or camera; leave out IMAGE arguments and --list")
        if not self.images and self.list_file is None and self.video is None:
            raise ConfigError(
                "predict needs at least one image file, folder or glob pattern, --list FILE or --video FILE|CAMERA"
            )
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"--workers must be >= 0 (0: decode on the inference thread), got {self.workers}")
        if self.in_flight < 0:
            raise ConfigError(f"--in-flight must be >= 0 (0: the runtime's choice), got {self.in_flight}")
        if self.top_k < 1:
            raise ConfigError(f"--top-k must be >= 1, got {self.top_k}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.backend is not None:
            from edgexfer.backends.base import BACKENDS

            if self.backend not in BACKENDS:
                raise ConfigError(f"unknown backend '{self.backend}'; choose one of {', '.join(BACKENDS)}")


@dataclass
class PredictResult:
    """Predictions per image: ``[{"image", "top": [{"class", "index", "score"}]}]`` plus the artifact used."""

    artifact: str
    backend: str
    path: Path
    predictions: List[Dict[str, Any]] = field(default_factory=list)
    images: int = 0
    seconds: float = 0.0
    in_flight: int = 1

    @property
    def images_per_s(self) -> float:
        """Images through decode, preprocessing and inference per second of the streaming loop."""
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> Dict[str, Any]:
        """JSON-safe dict (what ``--json`` prints)."""
        return {
            "artifact": self.artifact,
            "backend": self.backend,
            "path": str(self.path),
            "predictions": self.predictions,
            "images": self.images,
            "seconds": round(self.seconds, 4),
            "images_per_s": round(self.images_per_s, 2),
            "in_flight": self.in_flight,
        }


# ---- running ------------------------------------------------------------------------------------
def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable for large logits)."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def top_k(probabilities: np.ndarray, class_names: Sequence[str], k: int) -> List[List[Dict[str, Any]]]:
    """The k best (class, index, score) per row, best first; ties keep the lower index first."""
    k = min(k, probabilities.shape[1])
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [
        [{"class": class_names[i], "index": int(i), "score": float(row[i])} for i in idx]
        for row, idx in zip(probabilities, order)
    ]


def decode_workers(config: PredictConfig) -> int:
    """Decode threads: ``--workers``, else up to 4 (one per CPU core)."""
    return config.workers if config.workers is not None else min(4, os.cpu_count() or 1)


def requests_in_flight(config: PredictConfig, total: Optional[int], batch: int) -> int:
    """Batches inferred at once: ``--in-flight``; else 1 with ``--workers 0`` (decode, then infer, on one
    thread: the sequential path) or when all the images fit in one batch (nothing to overlap), else 0 (the
    runtime's choice, :meth:`Runner.default_in_flight`)."""
    if config.in_flight:
        return config.in_flight
    if decode_workers(config) == 0 or (total is not None and total <= batch):
        return 1
    return 0


def run_predict(
    config: PredictConfig, on_prediction: Optional[Callable[[Dict[str, Any]], None]] = None
) -> PredictResult:
    """Load the chosen artifact and stream the images through it in batches (decode and preprocess as
    the artifact's metadata says on worker threads, infer); top-k per image in the order given.

    With ``on_prediction``, each image's prediction is handed to it as soon as its batch is inferred
    (in input order) instead of being kept in the result (``--jsonl``); otherwise it is kept.
    """
    from functools import partial

    from tqdm import tqdm

    from edgexfer.backends.base import get_backend
    from edgexfer.stream import pipelined

    name, backend_name, path = resolve_target(config)
    info = model_info(path)
    if config.video is not None:
        from edgexfer.video import open_video, read_frames

        capture, description = open_video(config.video)  # fails (exit 2 / 4) before the model loads
        items: Any = enumerate(read_frames(capture, description))
        total, label = None, lambda item: f"{description}#{item[0]}"
        convert: Callable[..., np.ndarray] = _video_row
    else:
        files = expand_images(config.images, config.list_file)
        check_images(files)
        items, total, label, convert = files, len(files), str, _image_row
    backend = get_backend(backend_name)
    backend.require_available()
    options = load_options(config, backend, name)
    result = PredictResult(artifact=name, backend=backend_name, path=path, images=0)
    emit = on_prediction or result.predictions.append
    with backend.load(path, options) as runner:
        prepare = partial(convert, info=info, dtype=runner.input_dtype, layout=runner.input_layout)
        batch = min(config.batch_size, int(getattr(runner, "max_batch", None) or config.batch_size))
        # Resolved before the clock starts: OpenVINO compiles its THROUGHPUT-hinted model here.
        in_flight = requests_in_flight(config, total, batch) or runner.default_in_flight()
        if in_flight > 1:
            runner.default_in_flight()
        start = time.perf_counter()
        with tqdm(total=total, desc="predict", unit="img", disable=not config.progress, leave=False) as bar:
            for chunk, logits in pipelined(runner, prepare, items, batch, decode_workers(config), in_flight):
                if logits.shape[1] != len(info.class_names):
                    raise ArtifactError(
                        f"'{path}' outputs {logits.shape[1]} scores but its metadata names "
                        f"{len(info.class_names)} classes; re-export the model"
                    )
                for item, top in zip(chunk, top_k(softmax(logits), info.class_names, config.top_k)):
                    emit(dict({"image": label(item), "top": top},
                              **({"frame": item[0]} if config.video is not None else {})))
                result.images += len(chunk)
                bar.update(len(chunk))
                if config.progress and result.images:
                    bar.set_postfix_str(f"{result.images / (time.perf_counter() - start):.1f} img/s")
        result.seconds = time.perf_counter() - start
        result.in_flight = int(in_flight)
    return result


def _image_row(file: Path, info: ModelInfo, dtype: Any, layout: str) -> np.ndarray:
    """One image file -> one row of the runner's input (runs on a decode thread, :func:`edgexfer.stream.file_row`)."""
    from edgexfer.stream import file_row

    return file_row(file, info.preprocess, info.frame, dtype, layout)


def _video_row(item: Tuple[int, np.ndarray], info: ModelInfo, dtype: Any, layout: str) -> np.ndarray:
    """One (index, OpenCV BGR frame) -> one row: the frame in the model's channel order (resized only if the
    video's size differs) for a frame model, else the frame as an image, preprocessed."""
    from edgexfer.frames import bgr_to_frame
    from edgexfer.preprocess import image_to_input
    from edgexfer.video import bgr_to_image

    if info.frame is not None:
        return bgr_to_frame(item[1], info.frame)
    return image_to_input(bgr_to_image(item[1]), info.preprocess, dtype, layout)
