"""The training loop: loaders, one epoch of training, evaluation, the linear strategy's feature cache,
and the optimizer with its warmup + cosine schedule.

Kept free of file writing and of run state: :mod:`edgexfer.training.checkpoints` saves, the
engines (:mod:`edgexfer.training.engines`) call these functions once per epoch.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from edgexfer.data import ImageSamples
from edgexfer.errors import ConfigError, DataError
from edgexfer.training.runtime import Runtime, all_reduce_sum, autocast

OPTIMIZERS = ("sgd", "adamw")


class TransformDataset:
    """A torch map-style dataset over :class:`ImageSamples` applying ``transform`` to each PIL image."""

    def __init__(self, samples: ImageSamples, transform: Callable[[Any], Any]):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        image, label = self.samples[index]
        return self.transform(image), label


def make_train_loader(
    samples: ImageSamples,
    transform: Callable[[Any], Any],
    batch_size: int,
    seed: int,
    runtime: Runtime,
    num_workers: int,
) -> Any:
    """A shuffling loader; under DDP each rank reads its own shard (DistributedSampler, padded).

    Call :func:`start_train_epoch` before each epoch: it sets the epoch's order and its worker seeds.
    """
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    dataset = TransformDataset(samples, transform)
    sampler = DistributedSampler(
        dataset, num_replicas=runtime.world_size, rank=runtime.rank, shuffle=True, seed=seed, drop_last=False
    )
    per_rank = max(1, batch_size // runtime.world_size)
    shard = math.ceil(len(dataset) / runtime.world_size)
    # BatchNorm cannot train on a batch of one; drop the ragged tail when there is more than one batch
    drop_last = shard > per_rank and shard % per_rank == 1
    return DataLoader(
        dataset,
        batch_size=per_rank,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=runtime.device.type == "cuda",
        # workers start afresh each epoch, seeded from (seed, epoch) by start_train_epoch: persistent
        # workers would carry their random streams from epoch to epoch, which a resumed run cannot replay
        persistent_workers=False,
        generator=torch.Generator().manual_seed(seed),
    )


def start_train_epoch(loader: Any, seed: int, epoch: int) -> None:
    """Set ``loader`` (from :func:`make_train_loader`) up for ``epoch``: the sampler's order and the
    base seed of its workers' torch, numpy and Python generators are functions of (seed, epoch) alone,
    so an epoch sees the same augmentation whether the run was resumed or not."""
    loader.sampler.set_epoch(epoch)
    loader.generator.manual_seed(seed * 1_000_003 + epoch)


def make_eval_loader(
    samples: ImageSamples,
    transform: Callable[[Any], Any],
    batch_size: int,
    runtime: Runtime,
    num_workers: int,
) -> Any:
    """An in-order loader over this rank's share (every world_size-th item, no padding, so sums are exact)."""
    from torch.utils.data import DataLoader, Subset

    dataset = TransformDataset(samples, transform)
    indices = list(range(runtime.rank, len(dataset), runtime.world_size))
    return DataLoader(
        Subset(dataset, indices),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=runtime.device.type == "cuda",
    )


def _to_device(batch: Any, runtime: Runtime) -> Any:
    import torch

    batch = batch.to(runtime.device, non_blocking=True)
    if runtime.channels_last and batch.dim() == 4:
        batch = batch.contiguous(memory_format=torch.channels_last)
    return batch


def _progress(iterable: Any, enabled: bool, desc: str, total: Optional[int] = None) -> Any:
    from tqdm import tqdm

    return tqdm(
        iterable,
        desc=desc,
        total=total,
        disable=not enabled,
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
    )


@dataclass
class EpochStats:
    """Loss / accuracy totals of one pass, summed over ranks."""

    loss: float
    top1: float
    top5: Optional[float]
    images: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        """Throughput of the pass."""
        return self.images / self.seconds if self.seconds > 0 else 0.0


def _topk_correct(logits: Any, labels: Any) -> Tuple[int, int]:
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hits = top.eq(labels[:, None])
    return int(hits[:, 0].sum()), int(hits.any(dim=1).sum())


def _finish(runtime: Runtime, sums: Sequence[float], started: float, num_classes: int) -> EpochStats:
    loss, correct1, correct5, count = all_reduce_sum(runtime, list(sums))
    count = max(count, 1.0)
    return EpochStats(
        loss / count,
        correct1 / count,
        correct5 / count if num_classes > 5 else None,
        int(count),
        time.perf_counter() - started,
    )


def train_one_epoch(
    model: Any,
    loader: Any,
    optimizer: Any,
    scheduler: Any,
    loss_fn: Any,
    runtime: Runtime,
    scaler: Any = None,
    progress: bool = True,
    desc: str = "train",
    num_classes: int = 0,
) -> EpochStats:
    """One pass over ``loader``; steps the schedule every batch."""
    sums = [0.0, 0.0, 0.0, 0.0]
    started = time.perf_counter()
    for images, labels in _progress(loader, progress and runtime.is_main, desc):
        images, labels = _to_device(images, runtime), labels.to(runtime.device, non_blocking=True)
        with autocast(runtime):
            logits = model(images)
            loss = loss_fn(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        _accumulate(sums, loss, logits, labels)
    return _finish(runtime, sums, started, num_classes)


def _accumulate(sums: List[float], loss: Any, logits: Any, labels: Any) -> None:
    import torch

    with torch.no_grad():
        top1, top5 = _topk_correct(logits.detach(), labels)
        sums[0] += float(loss.detach()) * len(labels)
        sums[1] += top1
        sums[2] += top5
        sums[3] += len(labels)


def evaluate(
    model: Any, loader: Any, loss_fn: Any, runtime: Runtime, progress: bool = False, num_classes: int = 0
) -> EpochStats:
    """Loss, top-1 and top-5 over the loader (all ranks' shares summed)."""
    import torch

    was_training = model.training
    model.eval()
    sums = [0.0, 0.0, 0.0, 0.0]
    started = time.perf_counter()
    with torch.no_grad():
        for images, labels in _progress(loader, progress and runtime.is_main, "val"):
            images, labels = _to_device(images, runtime), labels.to(runtime.device)
            with autocast(runtime):
                logits = model(images).float()
            _accumulate(sums, loss_fn(logits, labels), logits, labels)
    model.train(was_training)
    return _finish(runtime, sums, started, num_classes)


# ---- the linear strategy's feature cache -------------------------------------------------------
def head_forward(model: Any) -> Any:
    """A module mapping the head's *input* features to logits: the head itself, or for a 1x1-conv head
    (SqueezeNet) the head followed by the ReLU and pooling that come after it in the model."""
    import torch

    from edgexfer.models import find_head

    _, head = find_head(model)
    if not isinstance(head, torch.nn.Conv2d):
        return head

    class ConvHeadTail(torch.nn.Module):
        """SqueezeNet's 1x1-conv head followed by its ReLU and global average pooling."""

        def __init__(self, conv: Any):
            super().__init__()
            self.conv = conv

        def forward(self, features: Any) -> Any:
            pooled = torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(features)), 1)
            return torch.flatten(pooled, 1)

    return ConvHeadTail(head)


def extract_features(
    model: Any, loader: Any, runtime: Runtime, progress: bool = True, desc: str = "features"
) -> Tuple[Any, Any]:
    """Run the frozen backbone once; return (head-input features, labels) as CPU tensors.

    The features are captured with a forward pre-hook on the head, so whatever sits between the
    backbone and the head (pooling, flatten, a hidden classifier layer, dropout in eval mode) is
    included exactly as in the full model.
    """
    import torch

    from edgexfer.models import find_head

    _, head = find_head(model)
    captured: List[Any] = []
    handle = head.register_forward_pre_hook(
        lambda module, args: captured.append(args[0].detach().float().cpu())
    )
    feats, labels_out = [], []
    model.eval()
    try:
        with torch.no_grad():
            for images, labels in _progress(loader, progress and runtime.is_main, desc):
                with autocast(runtime):
                    model(_to_device(images, runtime))
                feats.append(captured.pop())
                labels_out.append(labels)
    finally:
        handle.remove()
    if not feats:
        raise DataError("no images to compute features from")
    return torch.cat(feats), torch.cat(labels_out)


def train_head_epoch(
    head_module: Any,
    features: Any,
    labels: Any,
    optimizer: Any,
    scheduler: Any,
    loss_fn: Any,
    runtime: Runtime,
    batch_size: int,
    generator: Any,
    num_classes: int,
) -> EpochStats:
    """One epoch of the head alone on cached features (``head_module`` may be DDP-wrapped)."""
    import torch

    sums = [0.0, 0.0, 0.0, 0.0]
    started = time.perf_counter()
    order = torch.randperm(len(labels), generator=generator)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        inputs = features[index].to(runtime.device)
        targets = labels[index].to(runtime.device)
        logits = head_module(inputs).float()
        loss = loss_fn(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        _accumulate(sums, loss, logits, targets)
    return _finish(runtime, sums, started, num_classes)


def evaluate_head(
    head_module: Any,
    features: Any,
    labels: Any,
    loss_fn: Any,
    runtime: Runtime,
    num_classes: int,
    batch_size: int = 1024,
) -> EpochStats:
    """Validation of the head on cached validation features."""
    import torch

    sums = [0.0, 0.0, 0.0, 0.0]
    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(labels), batch_size):
            inputs = features[start : start + batch_size].to(runtime.device)
            targets = labels[start : start + batch_size].to(runtime.device)
            logits = head_module(inputs).float()
            _accumulate(sums, loss_fn(logits, targets), logits, targets)
    return _finish(runtime, sums, started, num_classes)


# ---- optimizer and schedule --------------------------------------------------------------------
def param_groups(model: Any, lr: float, weight_decay: float, backbone_lr_mult: float) -> List[Dict[str, Any]]:
    """Trainable parameters in groups: head vs backbone learning rate, no weight decay on norms/biases."""
    from edgexfer.models import head_parameter_names

    head_names = set(head_parameter_names(model))
    groups: Dict[Tuple[bool, bool], List[Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = (name in head_names, param.ndim <= 1)
        groups.setdefault(key, []).append(param)
    result = []
    for (is_head, no_decay), params in sorted(groups.items()):
        result.append(
            {
                "params": params,
                "lr": lr if is_head else lr * backbone_lr_mult,
                "weight_decay": 0.0 if no_decay else weight_decay,
                "name": ("head" if is_head else "backbone") + ("_no_decay" if no_decay else ""),
            }
        )
    return result


def make_optimizer(
    groups: List[Dict[str, Any]], name: str, lr: float, momentum: float, weight_decay: float
) -> Any:
    """SGD with (Nesterov-free) momentum or AdamW over ``groups``."""
    import torch

    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    raise ConfigError(f"unknown optimizer '{name}'; choose one of {', '.join(OPTIMIZERS)}")


def warmup_cosine(total_steps: int, warmup_steps: int, min_factor: float = 0.0) -> Callable[[int], float]:
    """LR factor per step: linear warmup from 1/warmup to 1, then cosine decay to ``min_factor``."""

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(max(progress, 0.0), 1.0)
        return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def set_frozen_modules_eval(model: Any) -> None:
    """Put modules whose parameters are all frozen in eval mode: BatchNorm statistics stay pretrained."""
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        if params and not any(p.requires_grad for p in params):
            module.eval()
