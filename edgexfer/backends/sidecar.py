"""Sidecar records beside built artifacts that cannot carry ONNX metadata (TensorRT engines, OpenVINO IR).

``build/tensorrt_fp16.engine`` gets ``build/tensorrt_fp16.json``: the edgexfer metadata props of the
ONNX model it was built from (class names, preprocessing, input format), the machine it was built on
(TensorRT, CUDA, driver, GPU and compute capability, JetPack/L4T, power mode) and build facts. Loading
checks it, so an engine from another TensorRT or GPU is refused with a clear line instead of a crash.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Mapping

from edgexfer.errors import ArtifactError

SIDECAR_FORMAT = "edgexfer-sidecar"
SIDECAR_VERSION = 1


def sidecar_path(artifact: Path) -> Path:
    """``x/tensorrt_fp16.engine`` -> ``x/tensorrt_fp16.json``."""
    return Path(artifact).with_suffix(".json")


def onnx_metadata_props(onnx_path: Path) -> Dict[str, str]:
    """The raw ``metadata_props`` of an ONNX file (strings, not parsed)."""
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf DecodeError and friends
        raise ArtifactError(f"'{onnx_path}' is not a readable ONNX model: {exc}") from exc
    return {p.key: p.value for p in model.metadata_props}


def write_sidecar(
    artifact: Path, backend: str, precision: str, metadata: Mapping[str, str], facts: Mapping[str, Any]
) -> Path:
    """Write the sidecar of ``artifact`` atomically; return its path."""
    from edgexfer.fsutil import atomic_write_json
    from edgexfer.provenance import now_iso

    record = {
        "format": SIDECAR_FORMAT,
        "format_version": SIDECAR_VERSION,
        "artifact": Path(artifact).name,
        "backend": backend,
        "precision": precision,
        "created": now_iso(),
        "metadata": dict(metadata),
        "build": dict(facts),
    }
    path = sidecar_path(artifact)
    atomic_write_json(path, record)
    return path


def read_sidecar(artifact: Path) -> Dict[str, Any]:
    """The sidecar of ``artifact``; an ArtifactError says which file is missing or broken."""
    path = sidecar_path(artifact)
    if not path.is_file():
        raise ArtifactError(
            f"'{artifact}' has no sidecar '{path.name}' (it records class names, "
            "preprocessing and the build machine); rebuild it with 'edgexfer build'"
        )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(
            f"sidecar '{path}' is not readable JSON: {exc}; rebuild with 'edgexfer build'"
        ) from exc
    if not isinstance(record, dict) or record.get("format") != SIDECAR_FORMAT:
        raise ArtifactError(f"'{path}' is not an edgexfer sidecar; rebuild with 'edgexfer build'")
    return record


def artifact_metadata(path: Path) -> Dict[str, str]:
    """The raw edgexfer metadata props of any artifact: from the ONNX file itself, else its sidecar."""
    path = Path(path)
    if path.suffix == ".onnx":
        return onnx_metadata_props(path)
    return dict(read_sidecar(path).get("metadata", {}))
