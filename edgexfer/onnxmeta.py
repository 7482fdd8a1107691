"""The edgexfer metadata inside ONNX models (``model.metadata_props``), see docs/contracts.md.

An exported model carries what a device needs to use it with nothing else at hand: the architecture,
the class names, the preprocessing spec, the input format (float NCHW, uint8 NCHW/NHWC, or a raw uint8
camera frame with its size), the precision and, for INT8 models, the target family whose QDQ rules it follows.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from edgexfer.errors import ArtifactError, ConfigError
from edgexfer.preprocess import Preprocess

PREFIX = "edgexfer."
INPUT_FORMATS = ("float_nchw", "uint8_nchw", "uint8_nhwc", "frame_rgb", "frame_bgr")  # frame_*: edgexfer.frames
PRECISIONS = ("fp32", "int8")
TARGETS = ("cpu", "tensorrt", "openvino")


@dataclass(frozen=True)
class OnnxMeta:
    """The parsed edgexfer metadata of one ONNX model."""

    arch: str
    class_names: List[str]
    preprocess: Preprocess
    input_format: str = "float_nchw"
    precision: str = "fp32"
    target: Optional[str] = None
    extra: Optional[Dict[str, str]] = None

    def __post_init__(self) -> None:
        if self.input_format not in INPUT_FORMATS:
            raise ConfigError(
                f"unknown input format '{self.input_format}'; choose one of {', '.join(INPUT_FORMATS)}"
            )
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision '{self.precision}'; choose one of {', '.join(PRECISIONS)}")
        if self.target is not None and self.target not in TARGETS:
            raise ConfigError(f"unknown target '{self.target}'; choose one of {', '.join(TARGETS)}")

    def to_props(self) -> Dict[str, str]:
        """The ``metadata_props`` key/value strings (JSON for the list and the preprocessing)."""
        props = {
            PREFIX + "arch": self.arch,
            PREFIX + "class_names": json.dumps(list(self.class_names)),
            PREFIX + "preprocess": json.dumps(self.preprocess.to_dict(), sort_keys=True),
            PREFIX + "input_format": self.input_format,
            PREFIX + "precision": self.precision,
        }
        if self.target:
            props[PREFIX + "target"] = self.target
        for key, value in (self.extra or {}).items():
            props[PREFIX + key] = str(value)
        return props


def set_metadata(model: Any, meta: OnnxMeta) -> Any:
    """Replace the edgexfer props of an ``onnx.ModelProto`` in place (others are kept); return it."""
    kept = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith(PREFIX)]
    del model.metadata_props[:]
    for key, value in kept + sorted(meta.to_props().items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model


def parse_props(props: Dict[str, str], source: str = "model") -> OnnxMeta:
    """Parse ``metadata_props`` (as a dict) into :class:`OnnxMeta`; one clear error if incomplete."""
    missing = [k for k in ("arch", "class_names", "preprocess") if PREFIX + k not in props]
    if missing:
        raise ArtifactError(
            f"{source} has no edgexfer metadata ({', '.join(PREFIX + m for m in missing)} "
            "missing); export it with 'edgexfer export RUN_DIR'"
        )
    try:
        class_names = json.loads(props[PREFIX + "class_names"])
        preprocess = Preprocess.from_dict(json.loads(props[PREFIX + "preprocess"]))
    except (ValueError, TypeError) as exc:
        raise ArtifactError(f"{source} has malformed edgexfer metadata: {exc}") from exc
    if not isinstance(class_names, list) or not all(isinstance(c, str) for c in class_names):
        raise ArtifactError(f"{source}: {PREFIX}class_names must be a JSON list of strings")
    known = {"arch", "class_names", "preprocess", "input_format", "precision", "target"}
    extra = {
        k[len(PREFIX) :]: v
        for k, v in props.items()
        if k.startswith(PREFIX) and k[len(PREFIX) :] not in known
    }
    return OnnxMeta(
        arch=props[PREFIX + "arch"],
        class_names=class_names,
        preprocess=preprocess,
        input_format=props.get(PREFIX + "input_format", "float_nchw"),
        precision=props.get(PREFIX + "precision", "fp32"),
        target=props.get(PREFIX + "target") or None,
        extra=extra or None,
    )


def read_metadata(path: "os.PathLike[str] | str") -> OnnxMeta:
    """The parsed edgexfer metadata of the ONNX file at ``path`` (weights are not loaded)."""
    import onnx

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ArtifactError(f"ONNX model '{path}' does not exist")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf decode errors of many kinds
        raise ArtifactError(f"'{path}' is not a readable ONNX model: {type(exc).__name__}: {exc}") from exc
    return parse_props({p.key: p.value for p in model.metadata_props}, source=f"ONNX model '{path}'")
