"""What a fine-tuning run starts from: the run folder, the data, the model with its ``--weights``, the
preprocessing, and the frozen/trainable split (:func:`prepare`)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple

from edgexfer.data import DataSpec, ImageSamples, describe_data, load_splits
from edgexfer.errors import ArtifactError, ConfigError, ModelError
from edgexfer.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from edgexfer.stages.finetune.config import SMALL_IMAGE_SIZE, STAGE, FinetuneConfig
from edgexfer.training.runtime import Runtime, default_workers, seed_everything

log = logging.getLogger("edgexfer.finetune")


def check_run_dir(out: Path, resume: bool) -> Path:
    """The path of the run's ``last.pt`` (it must exist with ``resume``); clear errors for a bad ``--out``."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out '{out}' is a file; pass a folder for the run")
    last = out / STAGE / "last.pt"
    if resume and not last.is_file():
        raise ArtifactError(f"--resume: '{last}' does not exist; start the run without --resume")
    return last


def choose_preprocess(config: FinetuneConfig, spec: DataSpec, weights_meta: Dict[str, Any]) -> Preprocess:
    """Input size, resize, normalisation, interpolation and augmentation for this data and these weights.

    Small-image datasets (embedded, CIFAR-10, Fashion-MNIST) are resized to 64 (no crop: the object
    fills the frame) with light augmentation (pad + crop + flip); folders get the weights' own
    recipe (224 / 256 for torchvision's ImageNet weights, timm's ``crop_pct`` for timm models) with
    standard augmentation; weights from an edgexfer checkpoint keep the input size that run used.
    Mean/std and interpolation come from the weights, else from the model's own data config (timm's
    ``resolve_data_config``), else ImageNet statistics and bilinear (torchvision).
    """
    from edgexfer.models import model_preprocess

    source = {**model_preprocess(config.model), **weights_meta.get("preprocess", {})}
    small = spec.kind in ("embedded", "torchvision")
    from_run = "class_names" in weights_meta  # an edgexfer checkpoint: keep the size it was trained at
    size = config.size or (
        int(source["size"]) if from_run else SMALL_IMAGE_SIZE if small else int(source.get("size", 224))
    )
    if small:
        resize = size
    elif "crop_pct" in source:  # timm's eval transform: shorter side to floor(size / crop_pct), centre crop
        resize = int(math.floor(size / float(source["crop_pct"])))
    else:
        resize = int(round(size * 256 / 224))
    augment = config.augment or ("light" if small else "standard")
    extra = {k: source[k] for k in ("crop_pct", "source") if k in source}
    return Preprocess(
        size=size,
        resize_size=resize,
        mean=tuple(source.get("mean", IMAGENET_MEAN)),
        std=tuple(source.get("std", IMAGENET_STD)),
        interpolation=source.get("interpolation", "bilinear"),
        augment=augment,
        extra=extra,
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
    from edgexfer.timm_models import is_timm_name, pretrained_state_dict

    # a timm model's own weights file (hub .safetensors, a timm .pth) goes through timm's loader and its
    # checkpoint filters; only an edgexfer checkpoint (a run's best.pt) is read here
    payload = None if path.suffix == ".safetensors" else read_checkpoint_file(path)
    if is_timm_name(arch) and not is_edgexfer_checkpoint(payload):
        state, timm_meta = pretrained_state_dict(arch, file=path.resolve())
        load_backbone_weights(model, state, str(path))
        return f"{timm_meta['source']}#sha256={sha256_file(path)[:16]}", timm_meta
    if payload is None:
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


@dataclass
class Prepared:
    """A run ready to train: its data, its model on the device, and what was decided about them."""

    spec: DataSpec
    train: ImageSamples
    val: ImageSamples
    data_info: Dict[str, Any]
    model: Any
    weights_source: str
    preprocess: Preprocess
    freeze: Dict[str, List[str]]
    hp: Dict[str, Any]
    workers: int
    known_limits: List[str] = field(default_factory=list)  # edgexfer.model_limits lines for this model/size

    @property
    def class_names(self) -> List[str]:
        """The classes, in label order."""
        return list(self.train.class_names)


def prepare(config: FinetuneConfig, runtime: Runtime) -> Prepared:
    """Check the run folder, seed, load the splits, build the model, load weights, apply the strategy."""
    import torch

    from edgexfer.model_limits import check_model_limits
    from edgexfer.models import apply_strategy, build_model

    spec = config.data_spec()
    check_run_dir(config.out, config.resume)
    seed_everything(config.seed)
    train, val = load_splits(spec)
    model = build_model(config.model, len(train.class_names))
    weights_source, weights_meta = load_weights(model, config.weights, config.model)
    preprocess = choose_preprocess(config, spec, weights_meta)
    # a family that cannot reach a deployable model stops here, before training (exit 2)
    limits = check_model_limits(config.model, preprocess.size)
    for line in limits:
        log.warning("%s", line)
    prepared = Prepared(
        spec=spec,
        train=train,
        val=val,
        data_info=describe_data(train, val),
        model=model,
        weights_source=weights_source,
        preprocess=preprocess,
        freeze=apply_strategy(model, config.strategy, config.unfreeze_blocks),
        hp=config.hyperparameters(pretrained=config.weights != "none"),
        workers=config.num_workers if config.num_workers is not None else default_workers(),
        known_limits=limits,
    )
    memory_format = torch.channels_last if runtime.channels_last else torch.preserve_format
    model.to(runtime.device, memory_format=memory_format)
    if runtime.is_main:
        _log_prepared(config, prepared, runtime)
    return prepared


def _log_prepared(config: FinetuneConfig, prepared: Prepared, runtime: Runtime) -> None:
    info = prepared.data_info
    log.info(
        "data: %d train / %d val images, %d classes (%s)%s",
        info["train_images"],
        info["val_images"],
        info["num_classes"],
        ", ".join(prepared.class_names[:10]),
        f"; skipped {info['skipped_files']} unusable file(s)" if info["skipped_files"] else "",
    )
    log.info(
        "model: %s, weights %s, strategy %s (%d trainable / %d frozen tensors), input %dx%d, %s",
        config.model,
        prepared.weights_source,
        config.strategy,
        len(prepared.freeze["trainable"]),
        len(prepared.freeze["frozen"]),
        prepared.preprocess.size,
        prepared.preprocess.size,
        runtime.describe(),
    )
