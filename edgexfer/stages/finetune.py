"""The finetune stage: a torchvision classifier, its head replaced, trained on your images.

``run_finetune(FinetuneConfig)`` loads the data (:mod:`edgexfer.data`), builds the model and loads
weights (:mod:`edgexfer.models`), freezes per strategy, trains (:mod:`edgexfer.training`), and writes
into ``<run>/finetune/``: ``best.pt`` (best val top-1) and ``last.pt`` (for ``--resume``),
``metrics.json`` and ``curves.png``, all recorded in the manifest. Under torchrun only rank 0 writes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from edgexfer.config import to_dict
from edgexfer.data import DataSpec, ImageSamples, resolve_data_arg
from edgexfer.errors import ArtifactError, ConfigError, ModelError
from edgexfer.fsutil import sha256_json
from edgexfer.models import STRATEGIES, check_model_name
from edgexfer.preprocess import AUGMENTATIONS, IMAGENET_MEAN, IMAGENET_STD, Preprocess
from edgexfer.training.loop import OPTIMIZERS
from edgexfer.training.runtime import AUTO_ON_OFF, DEVICES

log = logging.getLogger(__name__)

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
    """Options of ``edgexfer finetune``; None means the per-strategy / per-dataset default."""

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
        check_model_name(self.model)
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
            "patience": self.patience,
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


def choose_preprocess(config: FinetuneConfig, spec: DataSpec, weights_meta: Dict[str, Any]) -> Preprocess:
    """Input size, resize, normalisation and augmentation for this data and these weights.

    Small-image datasets (embedded, CIFAR-10, Fashion-MNIST) are resized to 64 (no crop: the object
    fills the frame) with light augmentation (pad + crop + flip); folders get the weights' own
    recipe (224 / 256 for ImageNet weights) with standard augmentation; weights from an edgexfer
    checkpoint keep the input size that run used. Mean/std always come from
    the weights (ImageNet statistics for torchvision and random-init models alike).
    """
    source = weights_meta.get("preprocess", {})
    small = spec.kind in ("embedded", "torchvision")
    from_run = "class_names" in weights_meta  # an edgexfer checkpoint: keep the size it was trained at
    size = config.size or (
        int(source["size"]) if from_run else SMALL_IMAGE_SIZE if small else int(source.get("size", 224))
    )
    resize = size if small else int(round(size * 256 / 224))
    augment = config.augment or ("light" if small else "standard")
    return Preprocess(
        size=size,
        resize_size=resize,
        mean=tuple(source.get("mean", IMAGENET_MEAN)),
        std=tuple(source.get("std", IMAGENET_STD)),
        augment=augment,
    )


def load_weights(model: Any, weights: str, arch: str) -> Tuple[str, Dict[str, Any]]:
    """Load ``--weights`` into ``model``'s backbone; return (source description, weights meta)."""
    from edgexfer.checkpoint import (
        is_edgexfer_checkpoint,
        meta_from_payload,
        read_checkpoint_file,
        state_dict_from_any,
    )
    from edgexfer.fsutil import sha256_file
    from edgexfer.models import load_backbone_weights, load_imagenet_state_dict

    if weights == "none":
        return "none", {}
    if weights == "imagenet":
        state, meta = load_imagenet_state_dict(arch)
        load_backbone_weights(model, state, meta["source"])
        return meta["source"], meta
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"--weights '{weights}' is not a file; use imagenet, none, or a path to a state_dict, "
            "a torchvision .pth or an edgexfer checkpoint (e.g. runs/x/finetune/best.pt)"
        )
    payload = read_checkpoint_file(path)
    meta: Dict[str, Any] = {}
    source = f"file:{path.resolve()}#sha256={sha256_file(path)[:16]}"
    if is_edgexfer_checkpoint(payload):
        ckpt = meta_from_payload(payload, str(path))
        if ckpt.arch != arch:
            raise ModelError(
                f"--weights '{path}' is an edgexfer checkpoint of {ckpt.arch}, not {arch}; "
                f"pass --model {ckpt.arch}"
            )
        meta = {"preprocess": ckpt.preprocess.to_dict(), "class_names": ckpt.class_names}
        source = f"edgexfer:{path.resolve()}#sha256={sha256_file(path)[:16]}"
    load_backbone_weights(model, state_dict_from_any(payload), str(path))
    return source, meta


def run_finetune(config: FinetuneConfig) -> FinetuneResult:
    """Fine-tune per ``config``; write checkpoints, metrics and plot; record them in the manifest."""
    from edgexfer.training.runtime import resolve_runtime, shutdown_distributed

    runtime = resolve_runtime(config.device, config.amp, config.channels_last)
    try:
        from edgexfer.training.session import FinetuneRun

        return FinetuneRun(config, runtime).run()
    finally:
        shutdown_distributed()


def describe_data(train: ImageSamples, val: ImageSamples) -> Dict[str, Any]:
    """Counts and skipped files for the log and manifest."""
    skipped = {path: reason for path, reason in train.skipped + val.skipped}
    return {
        "train_images": len(train),
        "val_images": len(val),
        "num_classes": len(train.class_names),
        "train_per_class": train.class_counts(),
        "skipped_files": len(skipped),
        "skipped_examples": [f"{p}: {r}" for p, r in list(skipped.items())[:10]],
        "fingerprint": train.fingerprint()[:16] + val.fingerprint()[:16],
    }


def check_run_dir(out: Path, resume: bool) -> Path:
    """The last checkpoint to resume from, or None; clear errors for a bad ``--out``/``--resume``."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out '{out}' is a file; pass a folder for the run")
    last = out / STAGE / "last.pt"
    if resume and not last.is_file():
        raise ArtifactError(f"--resume: '{last}' does not exist; start the run without --resume")
    return last


def default_workers() -> int:
    """DataLoader workers: none on 2 cores (they would steal the cores training needs), else a few."""
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(4, cores // 2)
