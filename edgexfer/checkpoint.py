"""edgexfer checkpoints: weights plus everything a later stage needs (timm's PretrainedCfg idea).

A checkpoint is a ``torch.save`` dict::

    {"format": "edgexfer-checkpoint", "format_version": 1,
     "arch": "resnet18", "num_classes": 5, "class_names": [...],
     "preprocess": Preprocess.to_dict(), "weights_source": "...", "dataset_fingerprint": "...",
     "state_dict": {...}, "epoch": 7, "metrics": {...}, "extra": {...}}

``load_checkpoint`` refuses anything else with one clear line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

from edgexfer.errors import ArtifactError, ModelError
from edgexfer.preprocess import Preprocess

CHECKPOINT_FORMAT = "edgexfer-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass
class CheckpointMeta:
    """Metadata that travels with the weights."""

    arch: str
    class_names: List[str]
    preprocess: Preprocess
    weights_source: str = "unknown"
    dataset_fingerprint: str = ""
    epoch: int = 0
    metrics: Dict[str, Any] = field(default_factory=dict)
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Number of output classes."""
        return len(self.class_names)


def save_checkpoint(path: "os.PathLike[str] | str", state_dict: Dict[str, Any], meta: CheckpointMeta) -> None:
    """Write a checkpoint atomically (a Ctrl-C mid-write keeps the previous file intact)."""
    from edgexfer.torchdeps import require_torch

    require_torch("writing a checkpoint")
    import torch

    from edgexfer.fsutil import atomic_path

    payload = {
        "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION,
        "arch": meta.arch, "num_classes": meta.num_classes, "class_names": list(meta.class_names),
        "preprocess": meta.preprocess.to_dict(), "weights_source": meta.weights_source,
        "dataset_fingerprint": meta.dataset_fingerprint, "epoch": meta.epoch,
        "metrics": dict(meta.metrics), "extra": dict(meta.extra),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_checkpoint_file(path: "os.PathLike[str] | str") -> Any:
    """torch.load a weights file safely (``weights_only``: tensors and plain containers, no code), with
    clear errors."""
    from edgexfer.torchdeps import require_torch

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"weights file '{path}' does not exist")
    require_torch(f"reading the weights file '{path}'")
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle/zip errors of many kinds
        # torch's unpickling errors span many lines; the CLI shows one, so keep the first.
        reason = (str(exc).strip().splitlines() or [""])[0]
        raise ModelError(f"cannot read weights file '{path}': {type(exc).__name__}: {reason}; expected a "
                         "state_dict, a torchvision .pth or an edgexfer checkpoint") from exc


def is_edgexfer_checkpoint(obj: Any) -> bool:
    """Whether a loaded object is an edgexfer checkpoint dict."""
    return isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT


def meta_from_payload(payload: Dict[str, Any], source: str) -> CheckpointMeta:
    """Parse the metadata of a loaded edgexfer checkpoint."""
    if payload.get("format_version") != CHECKPOINT_VERSION:
        raise ModelError(f"{source} is edgexfer checkpoint version {payload.get('format_version')!r}; this "
                         f"edgexfer reads version {CHECKPOINT_VERSION}")
    try:
        return CheckpointMeta(
            arch=payload["arch"], class_names=list(payload["class_names"]),
            preprocess=Preprocess.from_dict(payload["preprocess"]),
            weights_source=payload.get("weights_source", "unknown"),
            dataset_fingerprint=payload.get("dataset_fingerprint", ""), epoch=int(payload.get("epoch", 0)),
            metrics=dict(payload.get("metrics", {})), extra=dict(payload.get("extra", {})),
        )
    except KeyError as exc:
        raise ModelError(f"{source} is not a complete edgexfer checkpoint (missing {exc})") from exc


def load_checkpoint(path: "os.PathLike[str] | str", eval_mode: bool = True) -> "tuple[Any, CheckpointMeta]":
    """Rebuild the model from an edgexfer checkpoint; return ``(model, meta)``."""
    from edgexfer.models import build_model

    payload = read_checkpoint_file(path)
    if not is_edgexfer_checkpoint(payload):
        raise ModelError(f"'{path}' is not an edgexfer checkpoint (no 'format' key); pass a checkpoint "
                         "written by 'edgexfer finetune'")
    meta = meta_from_payload(payload, str(path))
    model = build_model(meta.arch, meta.num_classes)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "state_dict mismatch"
        raise ModelError(f"checkpoint '{path}' does not fit {meta.arch}: {first}") from exc
    if eval_mode:
        model.eval()
    return model, meta


def state_dict_from_any(obj: Any) -> Dict[str, Any]:
    """The state_dict inside a plain state_dict, an edgexfer checkpoint, or a {'state_dict'|'model': ...}."""
    if is_edgexfer_checkpoint(obj):
        return obj["state_dict"]
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                return obj[key]
        if obj and all(hasattr(v, "shape") for v in obj.values()):
            return obj
    raise ModelError("weights file holds no state_dict (expected tensors by parameter name, an edgexfer "
                     "checkpoint, or a dict with 'state_dict')")

