"""What a fine-tuning run starts from: the run folder, the data, the model with its ``--weights``, the
preprocessing, and the frozen/trainable split (:func:`prepare`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
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

    @property
    def class_names(self) -> List[str]:
        """The classes, in label order."""
        return list(self.train.class_names)


def prepare(config: FinetuneConfig, runtime: Runtime) -> Prepared:
    """Check the run folder, seed, load the splits, build the model, load weights, apply the strategy."""
    import torch

    from edgexfer.models import apply_strategy, build_model

    spec = config.data_spec()
    check_run_dir(config.out, config.resume)
    seed_everything(config.seed)
    train, val = load_splits(spec)
    model = build_model(config.model, len(train.class_names))
    weights_source, weights_meta = load_weights(model, config.weights, config.model)
    prepared = Prepared(
        spec=spec,
        train=train,
        val=val,
        data_info=describe_data(train, val),
        model=model,
        weights_source=weights_source,
        preprocess=choose_preprocess(config, spec, weights_meta),
        freeze=apply_strategy(model, config.strategy, config.unfreeze_blocks),
        hp=config.hyperparameters(pretrained=config.weights != "none"),
        workers=config.num_workers if config.num_workers is not None else default_workers(),
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
