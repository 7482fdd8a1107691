"""What predict runs and on what (see :mod:`edgexfer.stages.predict`): the model's metadata, the image
files the arguments name (files, folders, glob patterns, a list file), their headers checked before a
model loads, and the artifact a target names (a file, or the best usable artifact of a run directory)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from edgexfer.errors import ArtifactError, ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass
class ModelInfo:
    """What predict needs to know about a model: class names, preprocessing, and the raw frame it takes
    (``frame``: an :class:`edgexfer.frames.FrameSpec`) where it was exported with ``--frame``."""

    class_names: List[str]
    preprocess: Any
    frame: Any = None


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
    from edgexfer.frames import frame_spec

    props = artifact_metadata(path)
    meta = parse_props(props, source=f"'{path}'")
    return ModelInfo(list(meta.class_names), meta.preprocess, frame_spec(props))


def expand_images(paths: Sequence[Path], list_file: Optional[Path] = None) -> List[Path]:
    """Image files as given; a folder contributes the image files under it (sorted); a path that does
    not exist but has glob characters (``* ? [``) the image files it matches (sorted, ``**`` recursive);
    then the paths in ``list_file`` (one per line, relative to the current folder; blank lines and
    ``#`` comments skipped)."""
    import glob

    from edgexfer.preprocess import is_image_file

    files: List[Path] = []
    for path in list(paths) + read_list_file(list_file):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p.name))
            if not found:
                raise DataError(f"folder '{path}' has no image files (.jpg, .png, ...)")
            files.extend(found)
        elif not path.exists() and glob.has_magic(str(path)):
            found = sorted(Path(p) for p in glob.glob(str(path), recursive=True)
                           if os.path.isfile(p) and is_image_file(os.path.basename(p)))
            if not found:
                raise DataError(f"pattern '{path}' matches no image files (.jpg, .png, ...)")
            files.extend(found)
        else:
            files.append(path)
    return files


def read_list_file(list_file: Optional[Path]) -> List[Path]:
    """The image paths a list file names (one per line), or [] without one."""
    if list_file is None:
        return []
    try:
        lines = Path(list_file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the image list '{list_file}' ({exc}); expected a text file with one "
                        "image path per line") from exc
    paths = [Path(line.strip()) for line in lines if line.strip() and not line.strip().startswith("#")]
    if not paths:
        raise DataError(f"image list '{list_file}' names no images; expected one image path per line")
    return paths


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
def resolve_target(config: Any) -> Tuple[str, str, Path]:
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


def load_options(config: Any, backend: Any, name: str) -> Dict[str, Any]:
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
