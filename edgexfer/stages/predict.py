"""The predict stage: top-k class names and scores for image files from any artifact.

The target is a run directory (the best built artifact usable here, or ``artifact=NAME``) or a file:
an ONNX model (``.onnx``), a TensorRT engine (``.engine``/``.plan``), OpenVINO IR (``.xml``) or an
edgexfer checkpoint (``.pt``). Class names and preprocessing come from the artifact's own metadata
(ONNX ``metadata_props``, or the sidecar JSON of an engine / IR), so nothing else is needed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgexfer.errors import ArtifactError, ConfigError, DataError

log = logging.getLogger(__name__)

# Which backend runs a file, by suffix.
SUFFIX_BACKENDS = {
    ".onnx": "onnxruntime",
    ".engine": "tensorrt",
    ".plan": "tensorrt",
    ".xml": "openvino",
    ".pt": "torch",
    ".pth": "torch",
}
# Export-stage artifacts that are ONNX models, runnable by ONNX Runtime without a build.
EXPORT_ARTIFACTS = ("onnx_int8_cpu", "onnx", "onnx_uint8", "onnx_int8_tensorrt")
# Preference when a run directory is given: fastest first (GPU engines, then CPU INT8, then float).
PREFERENCE = (
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
    input_format: str = "float_nchw"
    precision: str = "fp32"


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
    """Class names and preprocessing of any artifact file, from its metadata, sidecar or checkpoint."""
    from edgexfer.onnxmeta import parse_props, read_metadata

    path = Path(path)
    if path.suffix in (".pt", ".pth"):
        from edgexfer.checkpoint import meta_from_payload, read_checkpoint_file

        meta = meta_from_payload(read_checkpoint_file(path), str(path))
        return ModelInfo(list(meta.class_names), meta.preprocess)
    if path.suffix == ".onnx":
        meta = read_metadata(path)
    else:
        from edgexfer.backends.sidecar import read_sidecar

        meta = parse_props(dict(read_sidecar(path).get("metadata", {})), source=f"sidecar of '{path}'")
    return ModelInfo(list(meta.class_names), meta.preprocess, meta.input_format, meta.precision)


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


# ---- choosing the artifact ----------------------------------------------------------------------
def resolve_target(config: PredictConfig) -> Tuple[str, str, Path]:
    """(artifact name, backend, path) for the config's target."""
    target = config.target
    if target.is_dir():
        return _from_run_dir(target, config.artifact, config.backend)
    if config.artifact:
        raise ConfigError("--artifact NAME picks from a run directory; with a file path, leave it out")
    if not target.exists():
        raise ArtifactError(
            f"'{target}' does not exist; pass a run directory or an .onnx/.engine/.xml/.pt file"
        )
    backend = config.backend or SUFFIX_BACKENDS.get(target.suffix)
    if backend is None:
        raise ConfigError(
            f"cannot tell which runtime runs '{target.name}'; expected a run directory or a file "
            f"ending in {', '.join(SUFFIX_BACKENDS)}"
        )
    return target.name, backend, target


def _backend_of(name: str, record: Any) -> str:
    if name in EXPORT_ARTIFACTS:
        return "onnxruntime"
    if record.kind == "checkpoint":
        return "torch"
    return str(record.extra.get("backend") or record.config.get("backend") or name.split("_", 1)[0])


def _from_run_dir(run_dir: Path, artifact: Optional[str], backend: Optional[str]) -> Tuple[str, str, Path]:
    from edgexfer.backends.base import get_backend
    from edgexfer.manifest import Manifest

    manifest = Manifest.open(run_dir)
    if artifact:
        record = manifest.require(artifact)
        return artifact, backend or _backend_of(artifact, record), manifest.run_dir / record.path
    skipped = []
    for name in PREFERENCE:
        if not manifest.has(name):
            continue
        chosen = backend or _backend_of(name, manifest.get(name))
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
    """Load the chosen artifact, preprocess every image as its metadata says, return top-k per image."""
    from edgexfer.backends.base import get_backend
    from edgexfer.preprocess import images_to_batch, load_image

    name, backend_name, path = resolve_target(config)
    info = model_info(path)
    files = expand_images(config.images)
    images = [load_image(f) for f in files]  # every image is checked before the model is loaded
    backend = get_backend(backend_name)
    backend.require_available()
    options: Dict[str, Any] = {"threads": config.threads} if config.threads else {}
    if config.provider:
        if backend_name != "onnxruntime":
            raise ConfigError(
                f"--provider chooses an ONNX Runtime execution provider; '{name}' runs on {backend_name}"
            )
        options["providers"] = [config.provider]
    result = PredictResult(artifact=name, backend=backend_name, path=path)
    with backend.load(path, options) as runner:
        logits = []
        for start in range(0, len(images), config.batch_size):
            chunk = images[start : start + config.batch_size]
            logits.append(
                runner.infer(images_to_batch(chunk, info.preprocess, runner.input_dtype, runner.input_layout))
            )
    all_logits = np.concatenate(logits)
    if all_logits.shape[1] != len(info.class_names):
        raise ArtifactError(
            f"'{path}' outputs {all_logits.shape[1]} scores but its metadata names "
            f"{len(info.class_names)} classes; re-export the model"
        )
    for file, top in zip(files, top_k(softmax(all_logits), info.class_names, config.top_k)):
        result.predictions.append({"image": str(file), "top": top})
    return result
