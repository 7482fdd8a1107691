"""The two ways one training epoch runs, behind one interface.

:class:`ImageEngine` (strategies ``partial`` and ``full``) trains the model on augmented images.
:class:`FeatureCacheEngine` (strategy ``linear``) runs the frozen backbone once over un-augmented
images, keeps the head's input features, and then trains only the head on them: an epoch costs
milliseconds instead of a pass of the backbone. :func:`make_engine` picks one by strategy.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Optional, Tuple

from edgexfer.data import ImageSamples
from edgexfer.preprocess import Preprocess
from edgexfer.training import features, loop, precise_bn
from edgexfer.training.runtime import Runtime, all_reduce_sum, wrap_ddp

log = logging.getLogger("edgexfer.finetune")

# The smallest evaluation batch: evaluation keeps no activations, so it can batch wider than training.
EVAL_BATCH = 64


@dataclass
class EngineInputs:
    """What either engine trains on: the model (weights loaded, strategy applied), the splits and how."""

    model: Any
    train: ImageSamples
    val: ImageSamples
    preprocess: Preprocess
    runtime: Runtime
    batch_size: int
    seed: int
    workers: int
    label_smoothing: float
    progress: bool
    requested_augment: Optional[str] = None  # --augment as the user gave it (None: the default)
    precise_bn: int = 0  # training images BatchNorm statistics are recomputed on before validation; 0: off

    @property
    def per_rank_batch(self) -> int:
        """The global batch split over the DDP ranks (at least 1)."""
        return max(1, self.batch_size // self.runtime.world_size)

    @property
    def num_classes(self) -> int:
        """Classes of the data (and outputs of the head)."""
        return len(self.train.class_names)


class Engine(ABC):
    """One epoch of training and validation. ``steps_per_epoch``: the optimizer steps an epoch takes
    (the schedule is laid out from it); ``wrapped``: the module trained, DDP-wrapped under torchrun.

    The image engine recomputes the trained BatchNorm layers' statistics between training and
    validation (:mod:`edgexfer.training.precise_bn`); the feature cache has none to recompute (its
    backbone is frozen, in eval mode)."""

    steps_per_epoch: int
    wrapped: Any
    # the last epoch's precise BatchNorm pass (None: off, or nothing to recompute for this engine)
    precise_bn_result: Optional[precise_bn.PreciseBNResult] = None

    def __init__(self, inputs: EngineInputs):
        import torch

        self.inputs = inputs
        self.loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=inputs.label_smoothing)
        # validation loss stays plain cross-entropy, comparable whatever the smoothing
        self.eval_loss_fn = torch.nn.CrossEntropyLoss()

    @abstractmethod
    def epoch(self, epoch: int, optimizer: Any, scheduler: Any, scaler: Any, desc: str) -> Tuple[Any, Any]:
        """Train one epoch, then validate; return the two :class:`~edgexfer.training.loop.EpochStats`."""


class ImageEngine(Engine):
    """Train the model end to end on augmented images (``partial``, ``full``)."""

    def __init__(self, inputs: EngineInputs):
        super().__init__(inputs)
        runtime, workers = inputs.runtime, inputs.workers
        self.train_loader = loop.make_train_loader(
            inputs.train,
            inputs.preprocess.train_transform(),
            inputs.batch_size,
            inputs.seed,
            runtime,
            workers,
        )
        self.val_loader = loop.make_eval_loader(
            inputs.val.for_preprocess(inputs.preprocess),
            inputs.preprocess.eval_transform(),
            max(inputs.per_rank_batch, EVAL_BATCH),
            runtime,
            workers,
        )
        self.steps_per_epoch = len(self.train_loader)
        self.wrapped = wrap_ddp(inputs.model, runtime)
        self.bn_loader = None
        if inputs.precise_bn > 0:
            self.bn_loader = precise_bn.make_loader(
                precise_bn.pick_images(inputs.train, inputs.precise_bn, inputs.seed),
                inputs.preprocess.eval_transform(),
                inputs.per_rank_batch,
                runtime,
                inputs.seed,
            )

    def epoch(self, epoch: int, optimizer: Any, scheduler: Any, scaler: Any, desc: str) -> Tuple[Any, Any]:
        """One pass over this rank's shard of the training images (in the epoch's order), then validation."""
        inputs = self.inputs
        loop.start_train_epoch(self.train_loader, inputs.seed, epoch)
        inputs.model.train()
        loop.set_frozen_modules_eval(inputs.model)
        train = loop.train_one_epoch(
            self.wrapped,
            self.train_loader,
            optimizer,
            scheduler,
            self.loss_fn,
            inputs.runtime,
            scaler,
            inputs.progress,
            desc,
            inputs.num_classes,
        )
        if self.bn_loader is not None:  # before validation, so the best epoch and best.pt use them
            self.precise_bn_result = precise_bn.recompute_bn_stats(inputs.model, self.bn_loader, inputs.runtime)
        val = loop.evaluate(
            inputs.model, self.val_loader, self.eval_loss_fn, inputs.runtime, False, inputs.num_classes
        )
        return train, val


class FeatureCacheEngine(Engine):
    """Train only the head on cached backbone features of un-augmented images (``linear``)."""

    def __init__(self, inputs: EngineInputs):
        super().__init__(inputs)
        import torch

        runtime = inputs.runtime
        if inputs.requested_augment not in (None, "none") and runtime.is_main:
            log.warning(
                "strategy linear trains on cached features of un-augmented images; --augment %s "
                "is not applied",
                inputs.requested_augment,
            )
        transform = inputs.preprocess.eval_transform()
        batch = max(inputs.per_rank_batch, EVAL_BATCH)
        cached = []
        for name, samples in (("train", inputs.train), ("val", inputs.val)):
            loader = loop.make_eval_loader(
                samples.for_preprocess(inputs.preprocess), transform, batch, runtime, inputs.workers
            )
            cached.append(
                features.extract_features(
                    inputs.model, loader, runtime, inputs.progress, f"features ({name})"
                )
            )
        (self.train_features, self.train_labels), (self.val_features, self.val_labels) = cached
        self.head = features.head_forward(inputs.model)
        # every rank must take the same number of steps or DDP's all-reduce would wait forever
        counts = [0.0] * runtime.world_size
        counts[runtime.rank] = float(len(self.train_labels))
        longest = int(max(all_reduce_sum(runtime, counts)))
        self.steps_per_epoch = math.ceil(longest / inputs.per_rank_batch)
        if len(self.train_labels) < longest:  # pad this shard by repeating items
            extra = torch.arange(longest - len(self.train_labels)) % len(self.train_labels)
            self.train_features = torch.cat([self.train_features, self.train_features[extra]])
            self.train_labels = torch.cat([self.train_labels, self.train_labels[extra]])
        self.wrapped = wrap_ddp(self.head, runtime)

    def epoch(self, epoch: int, optimizer: Any, scheduler: Any, scaler: Any, desc: str) -> Tuple[Any, Any]:
        """One shuffled pass of the head over the cached features (seeded per epoch and rank), then
        validation on the cached validation features. ``scaler`` is unused: the head trains in fp32."""
        import torch

        inputs, runtime = self.inputs, self.inputs.runtime
        generator = torch.Generator().manual_seed(inputs.seed * 100003 + epoch + runtime.rank)
        self.wrapped.train()
        train = features.train_head_epoch(
            self.wrapped,
            self.train_features,
            self.train_labels,
            optimizer,
            scheduler,
            self.loss_fn,
            runtime,
            inputs.per_rank_batch,
            generator,
            inputs.num_classes,
        )
        val = features.evaluate_head(
            self.head, self.val_features, self.val_labels, self.eval_loss_fn, runtime, inputs.num_classes
        )
        return train, val


# Which engine trains which strategy (edgexfer.models.STRATEGIES).
ENGINES = {"linear": FeatureCacheEngine, "partial": ImageEngine, "full": ImageEngine}


def make_engine(strategy: str, inputs: EngineInputs) -> Engine:
    """The engine for ``strategy``; the linear one computes its feature cache here."""
    return ENGINES[strategy](inputs)
