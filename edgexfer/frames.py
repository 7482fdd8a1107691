"""Raw camera frames as model input: the frame spec (size, channel order) and the host side of feeding one.

A model exported with ``--uint8-input --frame HxW`` takes the camera's decoded frame as it comes: uint8
NHWC ``(batch, H, W, 3)`` in RGB or BGR order, and does the resize, centre crop, channel swap and
normalisation in its graph (:mod:`edgexfer.framegraph`). Its ONNX metadata says so:
``edgexfer.input_format`` is ``frame_rgb`` or ``frame_bgr`` and ``edgexfer.frame`` is ``HxW``; a
built engine or IR carries the same props in its sidecar. :func:`frame_spec` reads them back.

The host side is then only this module: an image file (or an OpenCV BGR frame) becomes one ``H x W x 3``
array in the model's channel order, resized only where its size differs from the frame (see
:func:`fit_to_frame`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from edgexfer.errors import ConfigError

FRAME_FORMATS = ("rgb", "bgr")
FRAME_INPUT_FORMATS = tuple(f"frame_{f}" for f in FRAME_FORMATS)
MAX_FRAME_SIDE = 16384  # load_image's 16k x 16k limit
_FRAME_RE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


@dataclass(frozen=True)
class FrameSpec:
    """The raw frame a model takes: ``height`` x ``width`` x 3 uint8, channels in ``channel_order``."""

    height: int
    width: int
    channel_order: str = "rgb"

    def __post_init__(self) -> None:
        if self.channel_order not in FRAME_FORMATS:
            raise ConfigError(
                f"unknown frame format '{self.channel_order}'; choose one of {', '.join(FRAME_FORMATS)}"
            )
        for name in ("height", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= MAX_FRAME_SIDE:
                raise ConfigError(f"frame {name} must be 1-{MAX_FRAME_SIDE} pixels, got {value!r}")

    @classmethod
    def parse(cls, text: str, channel_order: str = "rgb") -> "FrameSpec":
        """``"1080x1920"`` (height x width, as ``--frame`` takes it) -> FrameSpec; one clear error if not."""
        match = _FRAME_RE.match(str(text))
        if not match:
            raise ConfigError(f"--frame '{text}' is not HEIGHTxWIDTH; write e.g. --frame 1080x1920 (a 1080p frame)")
        height, width = int(match.group(1)), int(match.group(2))
        if not (1 <= height <= MAX_FRAME_SIDE and 1 <= width <= MAX_FRAME_SIDE):
            raise ConfigError(f"--frame {text}: each side must be 1-{MAX_FRAME_SIDE} pixels")
        return cls(height, width, channel_order.lower())

    @property
    def text(self) -> str:
        """``HxW``: how ``--frame`` and the metadata write it."""
        return f"{self.height}x{self.width}"

    @property
    def input_format(self) -> str:
        """The ``edgexfer.input_format`` of a model taking this frame."""
        return f"frame_{self.channel_order}"

    def check_crop(self, preprocess: Any) -> None:
        """Refuse a frame smaller than the model's centre crop: there is nothing to crop from."""
        if min(self.height, self.width) < preprocess.size:
            raise ConfigError(
                f"--frame {self.text} is smaller than the model's {preprocess.size}x{preprocess.size} crop; "
                f"a frame needs at least {preprocess.size} pixels on each side"
            )

    def to_dict(self) -> dict:
        """JSON-safe dict for manifests and reports."""
        return {"height": self.height, "width": self.width, "format": self.channel_order}


def frame_spec(props: Mapping[str, str]) -> Optional[FrameSpec]:
    """The frame a model's edgexfer metadata props declare (``edgexfer.input_format`` frame_rgb/frame_bgr
    and ``edgexfer.frame`` HxW), or None for a model that takes preprocessed input."""
    from edgexfer.errors import ArtifactError

    input_format = props.get("edgexfer.input_format", "")
    if input_format not in FRAME_INPUT_FORMATS:
        return None
    text = props.get("edgexfer.frame")
    if not text:
        raise ArtifactError(f"model metadata says {input_format} but has no edgexfer.frame (HxW); re-export it")
    try:
        return FrameSpec.parse(text, input_format[len("frame_"):])
    except ConfigError as exc:
        raise ArtifactError(f"model metadata edgexfer.frame is malformed: {exc}") from exc


def fit_to_frame(image: Any, spec: FrameSpec, resample: Optional[int] = None) -> Any:
    """A PIL RGB image the size of the frame: unchanged when it already is; otherwise scaled (aspect ratio
    kept) so that it covers the frame, then centre-cropped to it, in one antialiased resampling of the
    box (PIL, bilinear unless ``resample``): what a camera of that frame size aimed at the same scene
    would deliver, give or take the edges of the longer side. The model's own centre crop then takes the
    middle of it, as the host preprocessing takes the middle of the original image."""
    from PIL import Image

    width, height = image.size
    if (width, height) == (spec.width, spec.height):
        return image
    scale = max(spec.width / width, spec.height / height)
    box_w, box_h = spec.width / scale, spec.height / scale
    left, top = (width - box_w) / 2, (height - box_h) / 2
    return image.resize((spec.width, spec.height), Image.BILINEAR if resample is None else resample,
                        box=(left, top, left + box_w, top + box_h))


def image_to_frame(image: Any, spec: FrameSpec) -> np.ndarray:
    """A PIL image -> one ``H x W x 3`` uint8 frame in the spec's channel order (resized only if needed)."""
    pixels = np.asarray(fit_to_frame(image.convert("RGB") if image.mode != "RGB" else image, spec), np.uint8)
    return np.ascontiguousarray(pixels[:, :, ::-1] if spec.channel_order == "bgr" else pixels)


def load_frame(path: "os.PathLike[str] | str", spec: FrameSpec) -> np.ndarray:
    """An image file -> one frame (:func:`image_to_frame`). A JPEG at least twice the frame in both sides is
    decoded at 1/2, 1/4 or 1/8 scale (PIL's ``draft``, never below the frame), then fitted exactly."""
    from edgexfer.preprocess import load_image

    return image_to_frame(load_image(path, draft_to=(spec.width, spec.height)), spec)


def bgr_to_frame(bgr: np.ndarray, spec: FrameSpec) -> np.ndarray:
    """One OpenCV frame (``H x W x 3`` uint8, BGR) -> the model's frame: channels reordered where the model
    takes RGB, and resized (cover, centre crop) only where the video's size differs from the frame."""
    if bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
        from edgexfer.errors import DataError

        raise DataError(f"a video frame must be H x W x 3 uint8 (BGR), got {bgr.dtype} {tuple(bgr.shape)}")
    if bgr.shape[:2] == (spec.height, spec.width):
        return np.ascontiguousarray(bgr if spec.channel_order == "bgr" else bgr[:, :, ::-1])
    from PIL import Image

    return image_to_frame(Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1])), spec)
