"""The float reference of a run: what verify compares every artifact with, and where a run's class names
and preprocessing are read from.

On the workstation it is the checkpoint run by torch (the model the user trained). On a device without
torch (``pip install edgexfer``, no ``train`` extra) it is the float ONNX model the export stage wrote
(artifact ``onnx``, checked there against torch) run by ONNX Runtime on the CPU: the same weights in fp32,
so artifacts are still compared with the float model, not with each other. Which one was used is
recorded (``source``) and, when it is not the checkpoint, why (``note``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from edgexfer.errors import ArtifactError

TORCH_CHECKPOINT = "torch checkpoint"
FLOAT_ONNX = "float ONNX on onnxruntime"


@dataclass(frozen=True)
class FloatReference:
    """The float model of a run and the metadata that travels with it."""

    artifact: str  # manifest name: "checkpoint" or "onnx"
    backend: str  # the backend that runs it: "torch" or "onnxruntime"
    path: Path
    source: str  # TORCH_CHECKPOINT or FLOAT_ONNX
    arch: str
    class_names: List[str]
    preprocess: Any
    note: Optional[str] = None  # why the checkpoint was not used

    def load_options(self, options: Dict[str, Any]) -> Dict[str, Any]:
        """Runner options for this reference: the float ONNX model always runs on the CPU provider."""
        return {**options, "providers": ["cpu"]} if self.backend == "onnxruntime" else dict(options)

    def describe(self) -> Dict[str, Any]:
        """The facts verify.json records about the reference (besides its measurements)."""
        facts: Dict[str, Any] = {"source": self.source, "artifact": self.artifact}
        if self.note:
            facts["note"] = self.note
        return facts


def _no_checkpoint(manifest: Any) -> str:
    """Why a run has no checkpoint: a deploy bundle leaves it on the workstation (its records say so)."""
    if any("checkpoint" in record.get("extra", {}).get("inputs_not_sent", {})
           for record in manifest.data.get("artifacts", {}).values()):
        return "the checkpoint stays on the workstation (deploy sends the ONNX models)"
    return "the run has no checkpoint"


def float_reference(manifest: Any) -> FloatReference:
    """The run's float reference: its checkpoint when torch and torchvision import here, else its float
    ONNX model on ONNX Runtime. Both are checked against the manifest (hash, inputs) first."""
    from edgexfer.backends.base import REFERENCE_BACKEND
    from edgexfer.torchdeps import TRAIN_EXTRA, require_torch, torch_missing

    missing = torch_missing() if manifest.has("checkpoint") else _no_checkpoint(manifest)
    if missing is None:
        manifest.require("checkpoint")
        return _checkpoint_reference(manifest.path_of("checkpoint"), REFERENCE_BACKEND)
    if not manifest.has("onnx"):
        if manifest.has("checkpoint"):
            require_torch(f"comparing with the checkpoint of '{manifest.run_dir}' (it has no float ONNX model)")
        raise ArtifactError(
            f"run '{manifest.run_dir}' has neither a checkpoint nor a float ONNX model ('onnx') to compare "
            f"with; run 'edgexfer export {manifest.run_dir}' on the machine that trained it"
        )
    from edgexfer.onnxmeta import read_metadata

    manifest.require("onnx")
    path = manifest.path_of("onnx")
    meta = read_metadata(path)
    hint = f"; {TRAIN_EXTRA} to compare with the checkpoint" if manifest.has("checkpoint") else ""
    return FloatReference(
        artifact="onnx",
        backend="onnxruntime",
        path=path,
        source=FLOAT_ONNX,
        arch=meta.arch,
        class_names=list(meta.class_names),
        preprocess=meta.preprocess,
        note=f"torch reference unavailable: {missing}{hint}",
    )


def _checkpoint_reference(path: Path, backend: str) -> FloatReference:
    from edgexfer.checkpoint import meta_from_payload, read_checkpoint_file

    meta = meta_from_payload(read_checkpoint_file(path), str(path))
    return FloatReference(
        artifact="checkpoint",
        backend=backend,
        path=path,
        source=TORCH_CHECKPOINT,
        arch=meta.arch,
        class_names=list(meta.class_names),
        preprocess=meta.preprocess,
    )


def reference_label(recorded: Dict[str, Any]) -> str:
    """How reports name a verify.json ``reference``: ``torch`` for the checkpoint (as before), else its
    ``source`` (``float ONNX on onnxruntime``)."""
    backend = recorded.get("backend", "torch")
    return "torch" if backend == "torch" else str(recorded.get("source") or backend)
