"""What verify runs and on what: the built artifacts of a run, the labelled images, and the shared
preprocessed pixels every artifact is fed from (see :mod:`edgexfer.stages.verify`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Tuple

import numpy as np

from edgexfer.errors import ArtifactError, ConfigError, DataError


# Export-stage ONNX models verify can run directly (with ONNX Runtime, which loads any ONNX file).
EXPORT_KINDS = {"onnx": "fp32", "onnx-qdq": "int8"}


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
def built_targets(manifest: Any, config: Any) -> List[Target]:
    """The build-stage artifacts to verify, filtered by ``--backends`` / ``--artifacts``."""
    from edgexfer.backends.base import BACKENDS

    for backend in config.backends or ():
        if backend not in BACKENDS:
            raise ConfigError(f"unknown backend '{backend}' in --backends; choose from {', '.join(BACKENDS)}")
    targets = []
    for name, record in sorted(manifest.artifacts.items()):
        explicit = config.artifacts is not None and name in config.artifacts
        if record.stage != "build" and not explicit:
            continue
        if record.stage == "build":
            backend = str(
                record.extra.get("backend") or record.config.get("backend") or name.split("_", 1)[0]
            )
            precision = str(
                record.extra.get("precision")
                or record.config.get("precision")
                or (name.split("_", 1)[1] if "_" in name else "fp32")
            )
        elif record.kind in EXPORT_KINDS:  # an export-stage ONNX model named with --artifact
            backend, precision = "onnxruntime", EXPORT_KINDS[record.kind]
        else:
            raise ConfigError(
                f"artifact '{name}' is a {record.kind} from the {record.stage} stage, not a model verify can "
                "run; name a build artifact or an exported ONNX model (onnx, onnx_uint8, onnx_int8_cpu, ...)"
            )
        if config.artifacts is not None and not explicit:
            continue
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


# ---- data ----------------------------------------------------------------------------------------
def load_samples(config: Any, class_names: List[str]) -> Tuple[Any, str]:
    """The labelled images: ``--data DIR`` (classes must match the model's) or the run's val split."""
    from edgexfer import data as data_module

    if config.data is not None:
        if not config.data.is_dir():
            raise DataError(f"--data '{config.data}' is not a folder; expected DIR/<class>/<image>")
        # Without class_names every sub-folder is a class, so extra or missing ones show up here
        # (with class_names, folder_samples would silently ignore folders the model does not know).
        found = data_module.folder_samples(config.data).class_names
        source = str(config.data)
        _check_classes(found, class_names, source)
        samples = data_module.folder_samples(config.data, class_names=list(class_names))
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
        self.labels = np.empty(len(indices), dtype=np.int64)
        self.pixels = np.empty((len(indices), 3, preprocess.size, preprocess.size), dtype=np.uint8)
        for row, index in enumerate(
            tqdm(indices, desc="preprocess", unit="img", disable=not progress, leave=False)
        ):
            image, label = samples[int(index)]
            self.pixels[row] = preprocess.to_uint8(image, "NCHW")
            self.labels[row] = int(label)
        mean = np.asarray(preprocess.mean, dtype=np.float32)[None, :, None, None]
        std = np.asarray(preprocess.std, dtype=np.float32)[None, :, None, None]
        self._mean, self._std = mean, std

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, start: int, stop: int, dtype: Any, layout: str) -> np.ndarray:
        """Rows ``start:stop`` in the runner's input format."""
        pixels = self.pixels[start:stop]
        if np.dtype(dtype) == np.uint8:
            return np.ascontiguousarray(pixels.transpose(0, 2, 3, 1) if layout == "NHWC" else pixels)
        array = (pixels.astype(np.float32) / 255.0 - self._mean) / self._std
        return np.ascontiguousarray(array.transpose(0, 2, 3, 1) if layout == "NHWC" else array)


def subset_indices(total: int, limit: Optional[int]) -> np.ndarray:
    """All indices, or ``limit`` evenly spaced ones (keeps every class of a class-sorted set)."""
    if limit is None or limit >= total:
        return np.arange(total)
    return np.unique(np.linspace(0, total - 1, limit).round().astype(np.int64))
