"""The finetune stage's options (:class:`FinetuneConfig`, with its per-strategy defaults) and its result."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from edgexfer.config import to_dict
from edgexfer.data import DataSpec, resolve_data_arg
from edgexfer.errors import ConfigError
from edgexfer.fsutil import sha256_json
from edgexfer.model_limits import check_model_limits
from edgexfer.models import STRATEGIES, check_model_name
from edgexfer.torchdeps import require_torch
from edgexfer.preprocess import AUGMENTATIONS
from edgexfer.training.optim import OPTIMIZERS
from edgexfer.training.precise_bn import DEFAULT_IMAGES as PRECISE_BN_IMAGES
from edgexfer.training.runtime import AUTO_ON_OFF, DEVICES

STAGE = "finetune"
# Small-image datasets (28x28 Fashion-MNIST, 32x32 CIFAR) are upscaled to this: fast on 2 CPU cores,
# yet large enough that an ImageNet backbone's 32x downsampling still leaves a 2x2 feature map.
SMALL_IMAGE_SIZE = 64
# Per-strategy defaults: (epochs, SGD lr, AdamW lr, warmup epochs)
STRATEGY_DEFAULTS = {
    "linear": (15, 0.1, 1e-3, 0.0),
    "partial": (10, 0.01, 1e-3, 1.0),
    "full": (10, 0.01, 5e-4, 1.0),
}
# Hyperparameters that change what a resumed run would train; resume refuses a mismatch.
_RESUME_KEYS = (
    "model",
    "weights",
    "data",
    "classes",
    "val_fraction",
    "max_per_class",
    "strategy",
    "unfreeze_blocks",
    "batch_size",
    "optimizer",
    "lr",
    "backbone_lr_mult",
    "momentum",
    "weight_decay",
    "label_smoothing",
    "size",
    "augment",
    "seed",
)


@dataclass(frozen=True)
class FinetuneConfig:
    """Options of ``edgexfer finetune``; None means the per-strategy / per-dataset default.

    ``patience``: epochs without a val top-1 gain before training stops early; 0 or None never stops
    early (0 is stored as None, so the CLI's ``--patience 0`` and a pipeline's ``patience: 0`` agree).
    ``precise_bn``: training images the trained BatchNorm layers' running statistics are recomputed on
    before every validation (0: never). Not a resume key: it changes no weight, only the statistics.
    """

    out: Path
    model: str = "resnet18"
    weights: str = "imagenet"
    data: str = "embedded"
    classes: Optional[str] = None
    val_fraction: float = 0.2
    max_per_class: Optional[int] = None
    strict: bool = False
    strategy: str = "full"
    unfreeze_blocks: int = 1
    epochs: Optional[int] = None
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: Optional[float] = None
    backbone_lr_mult: Optional[float] = None
    momentum: float = 0.9
    weight_decay: Optional[float] = None
    warmup_epochs: Optional[float] = None
    label_smoothing: float = 0.1
    size: Optional[int] = None
    augment: Optional[str] = None
    precise_bn: int = PRECISE_BN_IMAGES
    amp: str = "auto"
    channels_last: str = "auto"
    device: str = "auto"
    patience: Optional[int] = 5
    seed: int = 0
    resume: bool = False
    num_workers: Optional[int] = None
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        if self.patience is not None and self.patience < 0:
            raise ConfigError(f"patience must be >= 0 (0 disables early stopping), got {self.patience}")
        if self.patience == 0:
            object.__setattr__(self, "patience", None)
        require_torch("edgexfer finetune")  # before the model name is checked against torchvision's zoo
        check_model_name(self.model)
        check_model_limits(self.model, self.size)  # blocking limits of the family, before any data is read
        choices = (
            ("strategy", STRATEGIES),
            ("optimizer", OPTIMIZERS),
            ("amp", AUTO_ON_OFF),
            ("channels_last", AUTO_ON_OFF),
            ("device", DEVICES),
        )
        for name, valid in choices:
            if getattr(self, name) not in valid:
                raise ConfigError(f"unknown {name} '{getattr(self, name)}'; choose one of {', '.join(valid)}")
        if self.augment is not None and self.augment not in AUGMENTATIONS:
            raise ConfigError(f"unknown augment '{self.augment}'; choose one of {', '.join(AUGMENTATIONS)}")
        positive = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "unfreeze_blocks": self.unfreeze_blocks,
        }
        for name, value in positive.items():
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be > 0, got {value}")
        if self.size is not None and self.size < 16:
            raise ConfigError(f"size must be >= 16 pixels, got {self.size}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.backbone_lr_mult is not None and self.backbone_lr_mult < 0:
            raise ConfigError(f"backbone_lr_mult must be >= 0, got {self.backbone_lr_mult}")
        if self.precise_bn < 0:
            raise ConfigError(f"precise_bn must be >= 0 images (0 disables it), got {self.precise_bn}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {self.num_workers}")
        DataSpec(
            data=self.data,
            classes=self.classes,
            val_fraction=self.val_fraction,
            seed=self.seed,
            max_per_class=self.max_per_class,
            strict=self.strict,
        )

    # ---- effective values ----------------------------------------------------------------------
    def data_spec(self) -> DataSpec:
        """The data spec with folders resolved to absolute paths (what the manifest records)."""
        return DataSpec(
            data=resolve_data_arg(self.data),
            classes=self.classes,
            val_fraction=self.val_fraction,
            seed=self.seed,
            max_per_class=self.max_per_class,
            strict=self.strict,
        )

    def hyperparameters(self, pretrained: bool) -> Dict[str, Any]:
        """The effective training hyperparameters after per-strategy defaults."""
        epochs, sgd_lr, adamw_lr, warmup = STRATEGY_DEFAULTS[self.strategy]
        lr = self.lr if self.lr is not None else (sgd_lr if self.optimizer == "sgd" else adamw_lr)
        # a pretrained backbone is protected by a smaller step; a random one needs the full step
        mult = self.backbone_lr_mult if self.backbone_lr_mult is not None else (0.1 if pretrained else 1.0)
        decay = (
            self.weight_decay
            if self.weight_decay is not None
            else (1e-4 if self.optimizer == "sgd" else 0.05)
        )
        return {
            "epochs": self.epochs or epochs,
            "lr": lr,
            "backbone_lr_mult": mult,
            "weight_decay": decay,
            "warmup_epochs": self.warmup_epochs if self.warmup_epochs is not None else warmup,
        }

    def resume_key(self) -> str:
        """Hash of the options a resumed run must share with the run it continues."""
        return sha256_json({k: to_dict(self)[k] for k in _RESUME_KEYS})[:16]


@dataclass
class FinetuneResult:
    """What finetune produced."""

    run_dir: Path
    checkpoint: Path
    last_checkpoint: Path
    metrics_path: Path
    plot_path: Path
    best_val_top1: float
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    class_names: List[str]
    history: List[Dict[str, Any]] = field(default_factory=list)
    skipped_files: int = 0
    collapse: Optional[str] = None  # the collapse line (edgexfer.training.collapse), None when it trained
