"""What a device needs from a run, staged as a small run directory with a hash for every file.

The bundle for a backend holds the manifest's records of the models the device builds from (the float
``onnx``, the backend's INT8 export, and the runtime artifacts they were made from, so the manifest's hash
chain still holds there), those files at their usual paths, and a labelled validation subset under
``data/`` (class names and preprocessing travel in the ONNX metadata). The training checkpoint stays
here: the device compares with the float ONNX model (verify's reference where torch is missing); the
records name it, with its hash, under ``extra.inputs_not_sent``. ``BUNDLE.json`` lists every file's
sha256: the files are checked against the manifest here and against ``BUNDLE.json`` on the device
before anything is built.

It is staged in ``RUN/.deploy/bundle-<backend>/``. A file whose content did not change keeps its
modification time, so rsync's next delta sends only what changed.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from edgexfer.errors import ArtifactError, DataError
from edgexfer.fsutil import atomic_path, sha256_file

INDEX = "BUNDLE.json"
DATA_DIR = "data"
STAGING = ".deploy"
KEPT_STAGES = ("finetune", "export", "quantize")
# Training-side artifacts the device never needs (torch files, hundreds of MB for big models).
NOT_SENT_KINDS = ("checkpoint",)


@dataclass(frozen=True)
class Bundle:
    """A staged bundle: its folder, file hashes (relative path -> sha256), size and what it carries."""

    root: Path
    files: Dict[str, str]
    total_bytes: int
    artifacts: List[str]
    data_images: int
    class_names: List[str]

    @property
    def has_data(self) -> bool:
        """Whether a validation subset travels with it (else the device has ``--device-data``)."""
        return self.data_images > 0


def needed_artifacts(manifest: Any, backend_int8_source: Optional[str]) -> List[str]:
    """The float ONNX model, the INT8 export (when asked) and every artifact they were made from, but
    the training side (:data:`NOT_SENT_KINDS`: the checkpoint)."""
    wanted = ["onnx"] + ([backend_int8_source] if backend_int8_source else [])
    for name in wanted:
        if not manifest.has(name):
            hint = "'edgexfer export RUN --int8'" if name != "onnx" else "'edgexfer export RUN'"
            raise ArtifactError(f"run '{manifest.run_dir}' has no '{name}' to deploy; make it with {hint}")
    closure: List[str] = []
    stack = list(wanted)
    while stack:
        name = stack.pop()
        if name in closure:
            continue
        if manifest.get(name).kind in NOT_SENT_KINDS:
            continue
        closure.append(name)
        stack.extend(manifest.get(name).inputs)
    return sorted(closure)


def device_record(record: Dict[str, Any], sent: Sequence[str]) -> Dict[str, Any]:
    """A manifest record as the device's manifest holds it: inputs that were not sent (the checkpoint)
    move to ``extra.inputs_not_sent``, so the device checks the chain it has and nothing it lacks."""
    inputs = record.get("inputs", {})
    kept = {name: sha for name, sha in inputs.items() if name in sent}
    if len(kept) == len(inputs):
        return record
    dropped = {name: sha for name, sha in inputs.items() if name not in sent}
    return {**record, "inputs": kept, "extra": {**record.get("extra", {}), "inputs_not_sent": dropped}}


def make_bundle(run_dir: Path, backend: str, int8_source: Optional[str], data: Optional[Path],
                limit: int, send_data: bool) -> Bundle:
    """Stage the bundle for ``backend`` (``int8_source``: the INT8 export it builds from, or None for
    float only). ``data`` is a labelled folder to take the subset from (default: the run's validation
    split); ``limit`` caps its images. Raises ArtifactError for a stale or missing artifact."""
    from edgexfer.manifest import MANIFEST_NAME, Manifest
    from edgexfer.onnxmeta import read_metadata

    manifest = Manifest.open(run_dir)
    names = needed_artifacts(manifest, int8_source)
    root = run_dir / STAGING / f"bundle-{backend}"
    root.mkdir(parents=True, exist_ok=True)
    files: Dict[str, str] = {}
    for name in names:
        record = manifest.require(name)  # the hash check on this side: stale or changed files stop here
        if Path(record.path).is_absolute():
            raise ArtifactError(f"artifact '{name}' lies outside the run ({record.path}); deploy sends a run's own "
                                "files: re-run the stage that made it")
        for relative, sha in [(record.path, record.sha256), *record.companions.items()]:
            _place(run_dir / relative, root / relative, sha)
            files[relative] = sha
    class_names = read_metadata(manifest.path_of("onnx")).class_names
    images = 0
    if send_data:
        images = _stage_data(run_dir, root / DATA_DIR, class_names, data, limit, files)
    trimmed = {k: v for k, v in manifest.data.items() if k != "updated"}  # unchanged run: unchanged file
    trimmed["artifacts"] = {name: device_record(manifest.data["artifacts"][name], names) for name in names}
    trimmed["stages"] = {k: v for k, v in manifest.data.get("stages", {}).items() if k in KEPT_STAGES}
    files[MANIFEST_NAME] = _write_if_changed(root / MANIFEST_NAME, json.dumps(trimmed, indent=2, sort_keys=True))
    _prune(root, set(files) | {INDEX})
    index = {"files": files, "backend": backend, "artifacts": names, "data_images": images,
             "class_names": class_names}
    _write_if_changed(root / INDEX, json.dumps(index, indent=2, sort_keys=True))
    total = sum((root / relative).stat().st_size for relative in files)
    return Bundle(root, files, total, names, images, class_names)


def _place(source: Path, dest: Path, sha: str) -> None:
    """``dest`` becomes the same content as ``source`` (a hard link when possible), untouched when it
    already is, so its modification time (rsync's quick check) stays."""
    if dest.is_file() and (os.path.samefile(source, dest) or sha256_file(dest) == sha):
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copy2(source, tmp)
    if sha256_file(dest) != sha:
        raise ArtifactError(f"{source} changed while the bundle was made; run the deploy again")


def _write_if_changed(path: Path, text: str) -> str:
    """Write ``text`` atomically unless the file already holds it; returns its sha256."""
    import hashlib

    data = text.encode("utf-8")
    if not (path.is_file() and path.read_bytes() == data):
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _stage_data(run_dir: Path, folder: Path, class_names: Sequence[str], data: Optional[Path], limit: int,
                files: Dict[str, str]) -> int:
    """``folder/<class>/<n>.<ext>``: ``limit`` images spread over the classes of ``data`` or of the run's
    validation split (files copied as they are; in-memory images saved as PNG)."""
    import numpy as np

    from edgexfer.stages.verify_data import subset_indices

    samples = _samples(run_dir, class_names, data)
    order = np.argsort(samples.labels, kind="stable")
    chosen = order[subset_indices(len(order), limit)]
    missing = sorted(set(class_names) - {class_names[int(samples.labels[i])] for i in chosen})
    if missing:
        raise DataError(f"the {len(chosen)} validation images sent to the device miss classes {missing}; "
                        "raise --limit or pass --data with images of every class")
    for number, index in enumerate(chosen):
        label = class_names[int(samples.labels[index])]
        if samples.paths:
            source = Path(samples.paths[index])
            relative = f"{DATA_DIR}/{label}/{number:05d}{source.suffix.lower()}"
            sha = sha256_file(source)
            _place(source, folder.parent / relative, sha)
        else:
            relative = f"{DATA_DIR}/{label}/{number:05d}.png"
            sha = _save_png(samples.image(int(index)), folder.parent / relative)
        files[relative] = sha
    return len(chosen)


def _samples(run_dir: Path, class_names: Sequence[str], data: Optional[Path]) -> Any:
    from edgexfer import data as data_module

    if data is not None:
        if not data.is_dir():
            raise DataError(f"--data '{data}' is not a folder; expected DIR/<class>/<image>")
        samples = data_module.folder_samples(data, class_names)
    else:
        try:
            samples = data_module.samples_for_run(run_dir, "val")
        except ArtifactError as exc:
            raise ArtifactError(f"{exc}; or pass --data DIR (labelled <class>/<image> folders) or "
                                "--device-data DIR (a folder on the device)") from exc
    if len(samples) == 0:
        raise DataError(f"no validation images for the device in {data or 'the run validation split'}")
    return samples


def _save_png(image: Any, path: Path) -> str:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not (path.is_file() and path.read_bytes() == buffer.getvalue()):
        with atomic_path(path) as tmp:
            tmp.write_bytes(buffer.getvalue())
    return sha256_file(path)


def _prune(root: Path, keep: set) -> None:
    """Remove staged files of an earlier bundle that this one does not hold."""
    for path in sorted(root.rglob("*"), reverse=True):
        relative = path.relative_to(root).as_posix()
        if path.is_file() and relative not in keep:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
