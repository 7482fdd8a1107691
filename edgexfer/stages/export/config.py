"""Options of the export stage (``edgexfer export``) and the limits they are checked against."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from edgexfer.backends.trt_compat import TRT8_MAX_OPSET
from edgexfer.compare import Tolerance
from edgexfer.errors import ConfigError
from edgexfer.frames import FRAME_FORMATS, FrameSpec
from edgexfer.quant.candidates import QUANTIZER_CHOICES
from edgexfer.quant.ranges import METHOD_CHOICES, METHODS
from edgexfer.quant.recipes import RECIPES, recipe_for

STAGE = "export"
QAT_QUANTIZER = "edgexfer-qat"
DEFAULT_OPSET = TRT8_MAX_OPSET  # the newest opset every supported TensorRT parses
MIN_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear (axis) need 13
MAX_OPSET = 20
TARGET_CHOICES = tuple(RECIPES) + ("all",)
UINT8_LAYOUTS = ("NCHW", "NHWC")


@dataclass(frozen=True)
class ExportConfig:
    """Options of ``edgexfer export``; validated on creation."""

    run_dir: Path
    opset: int = DEFAULT_OPSET
    uint8_input: bool = False
    uint8_layout: str = "NHWC"
    frame: Optional[str] = None
    frame_format: str = "rgb"
    int8: bool = False
    target: str = "all"
    quantizer: str = "auto"
    calib: Optional[Path] = None
    calib_size: int = 512
    calib_method: str = "auto"
    max_drop: Optional[float] = None
    max_fallback: int = 16
    evidence_layers: int = 4
    qat_epochs: int = 0
    qat_lr: float = 1e-3
    qat_images: int = 0
    eval_data: Optional[Path] = None
    eval_size: int = 1000
    auto_eval_size: int = 300
    parity_images: int = 64
    parity_atol: float = 1e-3
    parity_rtol: float = 1e-4
    seed: int = 0
    batch_size: int = 64
    cache_dir: Optional[Path] = None
    shared_cache: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "run_dir", Path(self.run_dir))
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ConfigError(
                f"--opset {self.opset} is not supported; choose {MIN_OPSET}-{MAX_OPSET} "
                f"(default {DEFAULT_OPSET}, the newest TensorRT 8.5/8.6 parse)"
            )
        if self.target not in TARGET_CHOICES:
            raise ConfigError(f"unknown --target '{self.target}'; choose one of {', '.join(TARGET_CHOICES)}")
        for target in self.targets if self.int8 else ():
            rules = recipe_for(target).rules
            if rules.max_opset is not None and self.opset > rules.max_opset:
                raise ConfigError(
                    f"--opset {self.opset} is above {rules.max_opset}, {rules.max_opset_reason}; use "
                    f"--opset {rules.max_opset} or lower with --target {target}/all, or another --target"
                )
        if self.quantizer not in QUANTIZER_CHOICES:
            raise ConfigError(f"unknown --quantizer '{self.quantizer}'; choose one of {', '.join(QUANTIZER_CHOICES)}")
        if self.uint8_layout.upper() not in UINT8_LAYOUTS:
            raise ConfigError(f"unknown --uint8-layout '{self.uint8_layout}'; choose nchw or nhwc")
        object.__setattr__(self, "uint8_layout", self.uint8_layout.upper())
        if self.frame_format.lower() not in FRAME_FORMATS:
            raise ConfigError(f"unknown --frame-format '{self.frame_format}'; choose rgb or bgr")
        object.__setattr__(self, "frame_format", self.frame_format.lower())
        if self.frame is not None:
            if not self.uint8_input:
                raise ConfigError(
                    f"--frame {self.frame} makes a model that takes raw uint8 frames; add --uint8-input"
                )
            if self.uint8_layout != "NHWC":
                raise ConfigError("--frame takes camera frames, which are NHWC; leave --uint8-layout at nhwc")
            object.__setattr__(self, "frame", self.frame_spec.text)  # validated, normalised "HxW"
        if self.calib_method not in METHOD_CHOICES:
            raise ConfigError(
                f"unknown --calib-method '{self.calib_method}'; choose one of {', '.join(METHOD_CHOICES)}"
            )
        for name in ("calib_size", "eval_size", "auto_eval_size", "parity_images", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_drop is not None and self.max_drop < 0:
            raise ConfigError(f"--max-drop must be >= 0 top-1 points, got {self.max_drop}")
        if self.evidence_layers < 0:
            raise ConfigError(f"--evidence-layers must be >= 0 layers, got {self.evidence_layers}")
        self._check_qat()
        if self.max_fallback < 0:
            raise ConfigError(f"--max-fallback must be >= 0 layers, got {self.max_fallback}")
        for name in ("parity_atol", "parity_rtol"):
            if not getattr(self, name) >= 0:  # also NaN
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")

    def _check_qat(self) -> None:
        """--qat-epochs adds the edgexfer-qat candidate: it needs --int8 and a quantizer choice it can join."""
        if self.qat_epochs < 0:
            raise ConfigError(f"--qat-epochs must be >= 0 epochs (0: no QAT), got {self.qat_epochs}")
        if not self.qat_lr > 0:  # also NaN
            raise ConfigError(f"--qat-lr must be > 0, got {self.qat_lr}")
        if self.qat_images < 0:
            raise ConfigError(f"--qat-images must be >= 0 images (0: the whole training split), got {self.qat_images}")
        if self.quantizer == QAT_QUANTIZER and self.qat_epochs == 0:
            raise ConfigError(f"--quantizer {QAT_QUANTIZER} trains: add --qat-epochs N (N >= 1)")
        if self.qat_epochs and not self.int8:
            raise ConfigError("--qat-epochs trains an INT8 candidate; add --int8")
        if self.qat_epochs and self.quantizer not in ("auto", QAT_QUANTIZER):
            raise ConfigError(
                f"--qat-epochs adds the {QAT_QUANTIZER} candidate, which competes under --quantizer auto or alone "
                f"with --quantizer {QAT_QUANTIZER}, not next to --quantizer {self.quantizer} alone"
            )

    @property
    def targets(self) -> Tuple[str, ...]:
        """The target families to quantize for."""
        return tuple(RECIPES) if self.target == "all" else (self.target,)

    @property
    def frame_spec(self) -> Optional[FrameSpec]:
        """The raw frame of ``--frame`` / ``--frame-format``, or None."""
        return None if self.frame is None else FrameSpec.parse(self.frame, self.frame_format)

    @property
    def methods(self) -> Tuple[str, ...]:
        """The calibration methods to try."""
        return METHODS if self.calib_method == "auto" else (self.calib_method,)

    @property
    def parity_tolerance(self) -> Tolerance:
        """The float and uint8 models' gate: max abs logit difference <= atol + rtol * max|reference|."""
        return Tolerance(atol=self.parity_atol, rtol=self.parity_rtol)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-safe dict for the manifest."""
        from edgexfer.config import to_dict

        return to_dict(self)
