"""What verify runs and on what: the built artifacts of a run, the labelled images, the shared
preprocessed pixels every artifact is fed from, and feeding them to a runner (see
:mod:`edgexfer.stages.verify`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from edgexfer.errors import ArtifactError, ConfigError, DataError


@dataclass(frozen=True)
class Target:
    """One built artifact to verify: its manifest name, backend, precision and path."""

    name: str
    backend: str
    precision: str
    path: Path
    sha256: str
    requested: bool


# ---- selecting artifacts -------------------------------------------------------------------------
# Export-stage models verified without being named: the float raw-frame model (its in-graph resize,
# crop and normalisation against the reference's host preprocessing, on the same images).
DEFAULT_EXPORT_TARGETS = ("onnx_frame",)


def built_targets(manifest: Any, config: Any) -> List[Target]:
    """The build-stage artifacts and ``onnx_frame`` to verify, filtered by ``--backends`` / ``--artifact``;
    another export-stage ONNX model is verified when named with ``--artifact``."""
    from edgexfer.backends.base import BACKENDS

    for backend in config.backends or ():
        if backend not in BACKENDS:
            raise ConfigError(f"unknown backend '{backend}' in --backends; choose from {', '.join(BACKENDS)}")
    targets = []
    for name, record in sorted(manifest.artifacts.items()):
        explicit = config.artifacts is not None and name in config.artifacts
        default = record.stage == "build" or name in DEFAULT_EXPORT_TARGETS
        if (not default and not explicit) or (config.artifacts is not None and not explicit):
            continue
        backend, precision = _runnable(name, record)
        if config.backends is not None and backend not in config.backends:
            continue
        targets.append(
            Target(
                name,
                backend,
                precision,
                manifest.run_dir / record.path,
                record.sha256,
                requested=bool(explicit or config.backends),
            )
        )
    missing = sorted(set(config.artifacts or ()) - {t.name for t in targets})
    if missing:
        have = ", ".join(sorted(manifest.artifacts)) or "none"
        raise ArtifactError(f"run '{manifest.run_dir}' has no artifact {', '.join(missing)} (it has: {have})")
    if not targets:
        which = f" for backends {', '.join(config.backends)}" if config.backends else ""
        raise ArtifactError(
            f"run '{manifest.run_dir}' has no built artifacts{which}; build one first, e.g. "
            f"'edgexfer build {manifest.run_dir} --backend onnxruntime --precision int8'"
        )
    return targets


def _runnable(name: str, record: Any) -> Tuple[str, str]:
    """(backend, precision) verify runs a manifest artifact with. The checkpoint is the reference every
    artifact is compared with, and reports or plots are no models: both are refused."""
    from edgexfer.backends.base import EXPORT_MODELS, REFERENCE_BACKEND, artifact_target

    try:
        backend, precision = artifact_target(name, record)
    except ConfigError:
        backend, precision = REFERENCE_BACKEND, ""
    if backend == REFERENCE_BACKEND:
        raise ConfigError(
            f"artifact '{name}' is a {record.kind} from the {record.stage} stage, not a model verify can "
            f"run; name a build artifact or an exported ONNX model ({', '.join(EXPORT_MODELS)})"
        )
    return backend, precision


# ---- data ----------------------------------------------------------------------------------------
def load_samples(config: Any, class_names: List[str]) -> Tuple[Any, str]:
    """The labelled images: ``--data DIR`` (classes must match the model's) or the run's val split."""
    from edgexfer import data as data_module

    if config.data is not None:
        if not config.data.is_dir():
            raise DataError(f"--data '{config.data}' is not a folder; expected DIR/<class>/<image>")
        # Scanned without the model's class names, so every sub-folder is a class and extra or missing
        # ones show up (given names, folder_samples ignores folders the model does not know). Scanned
        # once: the scan decodes every image to check it.
        found = data_module.folder_samples(config.data)
        source = str(config.data)
        _check_classes(found.class_names, class_names, source)
        samples = _in_class_order(found, class_names)
    else:
        try:
            samples = data_module.samples_for_run(config.run_dir, "val")
        except ArtifactError as exc:
            raise ArtifactError(f"{exc}; or pass --data DIR (labelled <class>/<image> folders)") from exc
        source = "run validation split"
    _check_classes(list(samples.class_names), class_names, source)
    if list(samples.class_names) != list(class_names):
        raise DataError(
            f"the class order of {source} ({', '.join(samples.class_names)}) is not the model's "
            f"({', '.join(class_names)}); re-run finetune or pass --data"
        )
    if len(samples) == 0:
        raise DataError(f"{source} holds no images; expected DIR/<class>/<image>")
    return samples, source


def _in_class_order(samples: Any, class_names: List[str]) -> Any:
    """A folder's samples relabelled to the model's class order, items grouped in that order (what
    ``folder_samples(path, class_names)`` returns, without scanning and decoding the folder again)."""
    from edgexfer.data import ImageSamples

    new_label = np.array([list(class_names).index(name) for name in samples.class_names], dtype=np.int64)
    labels = new_label[samples.labels]
    order = np.argsort(labels, kind="stable")
    return ImageSamples(
        list(class_names),
        labels[order],
        paths=[samples.paths[i] for i in order],
        skipped=samples.skipped,
        source=samples.source,
    )


def _check_classes(found: List[str], class_names: List[str], source: str) -> None:
    """DataError naming the extra and missing classes when a data set's classes are not the model's."""
    if set(found) == set(class_names):
        return
    extra = sorted(set(found) - set(class_names))
    absent = sorted(set(class_names) - set(found))
    detail = "; ".join(
        part
        for part in (
            f"not in the model: {', '.join(extra)}" if extra else "",
            f"missing: {', '.join(absent)}" if absent else "",
        )
        if part
    )
    raise DataError(
        f"the classes of {source} do not match the model's ({detail}); expected sub-folders "
        f"{', '.join(class_names)}"
    )


class InputCache:
    """Resized, cropped uint8 NCHW pixels of every image, made once and shared by all artifacts.

    Float, uint8 NCHW and uint8 NHWC inputs all derive from these bytes exactly as
    :meth:`Preprocess.to_array` / :meth:`Preprocess.to_uint8` would make them, so every artifact sees
    the same pixels and decoding is not repeated per artifact.
    """

    def __init__(self, samples: Any, indices: np.ndarray, preprocess: Any, progress: bool):
        from tqdm import tqdm

        self.preprocess = preprocess
        self.samples, self.indices = samples, indices  # the raw images, for frame models (frames())
        self._frames: Dict[Any, FrameInputs] = {}
        samples = samples.for_preprocess(preprocess)
        self.labels = np.empty(len(indices), dtype=np.int64)
        self.pixels = np.empty((len(indices), 3, preprocess.size, preprocess.size), dtype=np.uint8)
        for row, index in enumerate(
            tqdm(indices, desc="preprocess", unit="img", disable=not progress, leave=False)
        ):
            image, label = samples[int(index)]
            self.pixels[row] = preprocess.to_uint8(image, "NCHW")
            self.labels[row] = int(label)
        self.progress = progress

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, start: int, stop: int, dtype: Any, layout: str) -> np.ndarray:
        """Rows ``start:stop`` in the runner's input format."""
        pixels = self.pixels[start:stop]
        if np.dtype(dtype) != np.uint8:
            pixels = self.preprocess.normalize(pixels, "NCHW")
        return np.ascontiguousarray(pixels.transpose(0, 2, 3, 1) if layout == "NHWC" else pixels)


    def frames(self, spec: Any) -> "FrameInputs":
        """The same images as raw frames of ``spec`` (for a model exported with ``--frame``), made once."""
        if spec not in self._frames:
            self._frames[spec] = FrameInputs(self.samples, self.indices, spec, self.progress)
        return self._frames[spec]


class FrameInputs:
    """The held-out images as a raw-frame model takes them, prepared as ``predict`` prepares an image for
    it (:func:`edgexfer.frames.load_frame`: scaled to cover the frame, centre-cropped, uint8 ``H x W x 3``
    in the model's channel order), in the same order as :class:`InputCache`'s rows and labels.

    Frames are kept when they all fit in :data:`FRAME_CACHE_BYTES` (decoded once, shared by every frame
    model of that size); otherwise each batch is decoded when asked for.
    """

    def __init__(self, samples: Any, indices: np.ndarray, spec: Any, progress: bool):
        self.samples, self.indices, self.spec = samples, indices, spec
        self.cached: Optional[np.ndarray] = None
        if len(indices) * spec.height * spec.width * 3 <= FRAME_CACHE_BYTES:
            from tqdm import tqdm

            rows = tqdm(range(len(indices)), desc=f"frames {spec.text}", unit="img", disable=not progress,
                        leave=False)
            self.cached = np.stack([self._frame(row) for row in rows])

    def __len__(self) -> int:
        return len(self.indices)

    def _frame(self, row: int) -> np.ndarray:
        from edgexfer.frames import image_to_frame, load_frame

        index = int(self.indices[row])
        if self.samples.paths:
            return load_frame(self.samples.paths[index], self.spec)
        return image_to_frame(self.samples.image(index), self.spec)

    def batch(self, start: int, stop: int, dtype: Any, layout: str) -> np.ndarray:
        """Frames ``start:stop`` as ``(n, H, W, 3)`` uint8 (a frame model's only input format)."""
        if np.dtype(dtype) != np.uint8 or layout != "NHWC":
            raise ArtifactError(f"a {self.spec.text} frame model must take uint8 NHWC input, this one takes "
                                f"{np.dtype(dtype).name} {layout}; re-export it with --uint8-input --frame")
        if self.cached is not None:
            return self.cached[start:stop]
        return np.stack([self._frame(row) for row in range(start, min(stop, len(self)))])


# Raw frames verify keeps in memory per frame size (beyond this, each batch is decoded when needed).
FRAME_CACHE_BYTES = 512 * 1024 * 1024


def subset_indices(total: int, limit: Optional[int]) -> np.ndarray:
    """All indices, or ``limit`` evenly spaced ones (keeps every class of a class-sorted set)."""
    if limit is None or limit >= total:
        return np.arange(total)
    return np.unique(np.linspace(0, total - 1, limit).round().astype(np.int64))


# ---- feeding a runner ----------------------------------------------------------------------------
def run_logits(runner: Any, inputs: InputCache, batch_size: int, progress: bool, desc: str) -> np.ndarray:
    """Logits of every cached image through ``runner`` (batched, in the runner's input format)."""
    from tqdm import tqdm

    max_batch = getattr(runner, "max_batch", None)  # a TensorRT profile caps the batch
    step = min(batch_size, int(max_batch)) if max_batch else batch_size
    chunks = []
    for start in tqdm(
        range(0, len(inputs), step), desc=desc, unit="batch", disable=not progress, leave=False
    ):
        batch = inputs.batch(start, start + step, runner.input_dtype, runner.input_layout)
        chunks.append(np.asarray(runner.infer(batch), dtype=np.float32))
    return np.concatenate(chunks, axis=0)


def measure_latency(runner: Any, inputs: InputCache, count: int, timing: Any) -> Dict[str, Any]:
    """Latency stats of ``runner.infer`` on the first ``count`` images (the same for every artifact)."""
    from edgexfer.metrics import latency_stats
    from edgexfer.timing import measure

    count = min(count, len(inputs))
    batch = inputs.batch(0, count, runner.input_dtype, runner.input_layout)
    samples = measure(lambda: runner.infer(batch), timing)
    return latency_stats(samples, batch_size=count)
