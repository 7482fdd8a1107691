"""The predict stage: top-k class names and scores for image files from any artifact.

The target is a run directory (the best built artifact usable here, or ``artifact=NAME``) or a file
whose suffix names its backend (``.onnx``, ``.engine``/``.plan``, ``.xml``, an edgexfer checkpoint
``.pt``; see :func:`edgexfer.backends.base.backend_for_file`). Class names and preprocessing come from
the artifact's own metadata (ONNX ``metadata_props``, the sidecar JSON of an engine / IR, or the
checkpoint), so nothing else is needed.

Images are streamed: a batch is decoded, preprocessed and run before the next is read, so memory does
not grow with the number of images. Before the model is loaded every file is opened once (header only):
a missing file or one that is not an image fails with one line before any inference. A file whose
header reads but whose pixel data is corrupt fails with the same kind of line when its batch is decoded;
no prediction is returned then (the CLI prints nothing on stdout).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgexfer.errors import ArtifactError, ConfigError, DataError

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

    def __post_init__(self) -> None:
        object.__setattr__(self, "target", Path(self.target))
        object.__setattr__(self, "images", tuple(Path(p) for p in self.images))
        if not self.images:
            raise ConfigError("predict needs at least one image file (or a folder of images)")
        if self.top_k < 1:
            raise ConfigError(f"--top-k must be >= 1, got {self.top_k}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.backend is not None:
            from edgexfer.backends.base import BACKENDS

            if self.backend not in BACKENDS:
                raise ConfigError(f"unknown backend '{self.backend}'; choose one of {', '.join(BACKENDS)}")


@dataclass
class ModelInfo:
    """What predict needs to know about a model: class names and preprocessing."""

    class_names: List[str]
    preprocess: Any


@dataclass
class PredictResult:
    """Predictions per image: ``[{"image", "top": [{"class", "index", "score"}]}]`` plus the artifact used."""

    artifact: str
    backend: str
    path: Path
    predictions: List[Dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-safe dict (what ``--json`` prints)."""
        return {
            "artifact": self.artifact,
            "backend": self.backend,
            "path": str(self.path),
            "predictions": self.predictions,
        }


def model_info(path: Path) -> ModelInfo:
    """Class names and preprocessing of any artifact file, from its checkpoint, ONNX metadata or sidecar."""
    from edgexfer.backends.base import REFERENCE_BACKEND, backend_for_file
    from edgexfer.backends.sidecar import artifact_metadata
    from edgexfer.onnxmeta import parse_props

    path = Path(path)
    if backend_for_file(path) == REFERENCE_BACKEND:  # the reference runs the checkpoint itself
        from edgexfer.checkpoint import meta_from_payload, read_checkpoint_file

        meta = meta_from_payload(read_checkpoint_file(path), str(path))
        return ModelInfo(list(meta.class_names), meta.preprocess)
    meta = parse_props(artifact_metadata(path), source=f"'{path}'")
    return ModelInfo(list(meta.class_names), meta.preprocess)


def expand_images(paths: Sequence[Path]) -> List[Path]:
    """Image files as given; a folder contributes the image files under it (sorted)."""
    from edgexfer.preprocess import is_image_file

    files: List[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p.name))
            if not found:
                raise DataError(f"folder '{path}' has no image files (.jpg, .png, ...)")
            files.extend(found)
        else:
            files.append(path)
    return files


def check_images(files: Sequence[Path]) -> None:
    """Open every file's header (no decoding, nothing kept): one DataError for the first missing file or
    non-image, before a model is loaded. Corrupt pixel data shows when the image is decoded."""
    from PIL import Image

    from edgexfer.preprocess import load_image

    for file in files:
        try:
            with Image.open(file):
                pass
        except Exception:  # noqa: BLE001 - load_image turns every failure into its one-line DataError
            load_image(file)
            raise


# ---- choosing the artifact ----------------------------------------------------------------------
def resolve_target(config: PredictConfig) -> Tuple[str, str, Path]:
    """(artifact name, backend, path) for the config's target."""
    from edgexfer.backends.base import backend_for_file, known_suffixes

    target = config.target
    if target.is_dir():
        return _from_run_dir(target, config.artifact, config.backend)
    if config.artifact:
        raise ConfigError("--artifact NAME picks from a run directory; with a file path, leave it out")
    if not target.exists():
        raise ArtifactError(
            f"'{target}' does not exist; pass a run directory or a {'/'.join(known_suffixes())} file"
        )
    backend = config.backend or backend_for_file(target)
    if backend is None:
        raise ConfigError(
            f"cannot tell which runtime runs '{target.name}'; expected a run directory or a file "
            f"ending in {', '.join(known_suffixes())}"
        )
    return target.name, backend, target


def _from_run_dir(run_dir: Path, artifact: Optional[str], backend: Optional[str]) -> Tuple[str, str, Path]:
    from edgexfer.backends.base import ARTIFACT_PREFERENCE, artifact_target, get_backend
    from edgexfer.manifest import Manifest

    manifest = Manifest.open(run_dir)
    if artifact:
        record = manifest.require(artifact)
        return artifact, backend or artifact_target(artifact, record)[0], manifest.run_dir / record.path
    skipped = []
    for name in ARTIFACT_PREFERENCE:
        if not manifest.has(name):
            continue
        chosen = backend or artifact_target(name, manifest.get(name))[0]
        if not manifest.is_fresh(name):
            skipped.append(f"{name} (stale)")
            continue
        ok, reason = get_backend(chosen).availability()
        if not ok:
            skipped.append(f"{name} ({reason})")
            continue
        if skipped:
            log.info("predict: skipped %s", "; ".join(skipped))
        return name, chosen, manifest.path_of(name)
    have = ", ".join(sorted(manifest.artifacts)) or "none"
    why = f"; skipped: {'; '.join(skipped)}" if skipped else ""
    raise ArtifactError(
        f"run '{run_dir}' has no ONNX model or built artifact usable here (it has: {have}){why}; "
        f"run 'edgexfer export {run_dir}' first"
    )


def load_options(config: PredictConfig, backend: Any, name: str) -> Dict[str, Any]:
    """The options to load ``name`` with; ``--provider`` only for a backend that declares providers."""
    options: Dict[str, Any] = {"threads": config.threads} if config.threads else {}
    if config.provider:
        if "providers" not in backend.load_options:
            raise ConfigError(
                f"--provider chooses an execution provider, which backend '{backend.name}' (running "
                f"'{name}') does not have; leave it out, or pick an artifact ONNX Runtime runs"
            )
        options["providers"] = [config.provider]
    return options


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


def run_predict(config: PredictConfig) -> PredictResult:
    """Load the chosen artifact and stream the images through it in batches (decode, preprocess as the
    artifact's metadata says, infer); return top-k per image in the order given."""
    from edgexfer.backends.base import get_backend
    from edgexfer.preprocess import images_to_batch

    name, backend_name, path = resolve_target(config)
    info = model_info(path)
    files = expand_images(config.images)
    check_images(files)
    backend = get_backend(backend_name)
    backend.require_available()
    options = load_options(config, backend, name)
    result = PredictResult(artifact=name, backend=backend_name, path=path)
    with backend.load(path, options) as runner:
        for start in range(0, len(files), config.batch_size):
            chunk = files[start : start + config.batch_size]
            batch = images_to_batch(
                [info.preprocess.open(f) for f in chunk], info.preprocess, runner.input_dtype, runner.input_layout
            )
            logits = np.asarray(runner.infer(batch))
            if logits.shape[1] != len(info.class_names):
                raise ArtifactError(
                    f"'{path}' outputs {logits.shape[1]} scores but its metadata names "
                    f"{len(info.class_names)} classes; re-export the model"
                )
            for file, top in zip(chunk, top_k(softmax(logits), info.class_names, config.top_k)):
                result.predictions.append({"image": str(file), "top": top})
    return result
