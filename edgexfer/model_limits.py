"""Known limits of model families, measured by the model matrix (``make zoo``, docs/models.md).

A family that cannot go through a stage says so at ``finetune``, before any time is spent training it,
not at ``export`` or ``build``. Two kinds:

- **blocking** (nothing deployable would come out: the export fails, or the model refuses the input
  size): ``finetune`` stops with one line (exit 2) naming the reason and what would work;
- **per target** (one build or one INT8 target fails, the others work): ``finetune`` logs a warning and
  records it in ``metrics.json`` and the manifest, and training goes on.

Each entry names what the zoo saw; a family not listed here went through every stage in the last zoo run.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import List, Optional, Tuple

from edgexfer.errors import ConfigError


@dataclass(frozen=True)
class Limit:
    """One known limit: the models it applies to (fnmatch pattern), the stage that fails, and why."""

    pattern: str
    stage: str
    reason: str
    blocking: bool = False
    # the only input size the family accepts (None: any size); blocking only when another size is asked for
    fixed_size: Optional[int] = None

    def applies(self, model: str, size: Optional[int]) -> bool:
        """Whether this limit applies to ``model`` trained at ``size`` (None: size not known yet)."""
        if not fnmatch.fnmatchcase(model, self.pattern):
            return False
        if self.fixed_size is not None:
            return size is not None and size != self.fixed_size
        return True


LIMITS: Tuple[Limit, ...] = (
    # torchvision's VisionTransformer asserts the input height/width equal its image_size (224 for the
    # b/l 16/32 models; models/vision_transformer.py, _process_input): "Wrong image height!"
    Limit("vit_[bl]_*", "finetune", "torchvision's ViT accepts only its image_size (224x224 input); pass --size 224",
          blocking=True, fixed_size=224),
    # zoo, swin_t at 32 px: the float model exports, passes parity and builds for ONNX Runtime fp32, but INT8
    # quantization stops in onnxruntime's quantization pre-processing (symbolic shape inference over the
    # shifted-window reshapes); swin_s / swin_b share the architecture (not run by the zoo)
    Limit("swin_[tsb]", "export --int8", "onnxruntime's symbolic shape inference (INT8 pre-processing) fails "
          "on torchvision's Swin graph ('Incomplete symbolic shape inference'), so no INT8 model for any target; "
          "the float model exports and builds (fp32)"),
    Limit("vit_h_14", "finetune", "torchvision's ViT-H/14 accepts only its image_size (518x518 input); "
          "pass --size 518", blocking=True, fixed_size=518),
)


def known_limits(model: str, size: Optional[int] = None) -> List[Limit]:
    """The limits that apply to ``model`` at ``size``."""
    return [limit for limit in LIMITS if limit.applies(model, size)]


def check_model_limits(model: str, size: Optional[int] = None) -> List[str]:
    """Raise ConfigError for a blocking limit; return the per-target limits' lines (for a warning)."""
    limits = known_limits(model, size)
    for limit in limits:
        if limit.blocking:
            raise ConfigError(f"--model {model} cannot go through {limit.stage}: {limit.reason} "
                              "(known limits: docs/models.md)")
    return [f"{model}: {limit.stage} is known to fail: {limit.reason} (docs/models.md)" for limit in limits]
