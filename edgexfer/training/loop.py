"""The training loop: loaders, one epoch of training on images, evaluation, and the per-pass totals
(:class:`EpochStats`) that the feature cache (:mod:`edgexfer.training.features`) shares.

Kept free of file writing and of run state: :mod:`edgexfer.training.checkpoints` saves, the
engines (:mod:`edgexfer.training.engines`) call these functions once per epoch.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

from edgexfer.data import ImageSamples
from edgexfer.training.runtime import Runtime, all_reduce_sum, autocast


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
    generator: Any = None,
) -> Any:
    """An in-order loader over this rank's share (every world_size-th item, no padding, so sums are exact).
    ``generator``: the loader's own (a loader without one draws its base seed from torch's global
    generator each pass, even with no workers)."""
    from torch.utils.data import DataLoader, Subset

    dataset = TransformDataset(samples, transform)
    indices = list(range(runtime.rank, len(dataset), runtime.world_size))
    return DataLoader(
        Subset(dataset, indices),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=runtime.device.type == "cuda",
        generator=generator,
    )


def to_device(batch: Any, runtime: Runtime) -> Any:
    """An image batch on the run's device, in its memory format."""
    import torch

    batch = batch.to(runtime.device, non_blocking=True)
    if runtime.channels_last and batch.dim() == 4:
        batch = batch.contiguous(memory_format=torch.channels_last)
    return batch


def progress_bar(iterable: Any, enabled: bool, desc: str, total: Optional[int] = None) -> Any:
    """``iterable`` with a tqdm bar on stderr when ``enabled``."""
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


def finish_stats(runtime: Runtime, sums: Sequence[float], started: float, num_classes: int) -> EpochStats:
    """The pass's :class:`EpochStats` from its :func:`accumulate` sums, all ranks added up."""
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
    for images, labels in progress_bar(loader, progress and runtime.is_main, desc):
        images, labels = to_device(images, runtime), labels.to(runtime.device, non_blocking=True)
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
        accumulate(sums, loss, logits, labels)
    return finish_stats(runtime, sums, started, num_classes)


def accumulate(sums: List[float], loss: Any, logits: Any, labels: Any) -> None:
    """Add one batch to ``sums``: loss x items, top-1 hits, top-5 hits, items."""
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
        for images, labels in progress_bar(loader, progress and runtime.is_main, "val"):
            images, labels = to_device(images, runtime), labels.to(runtime.device)
            with autocast(runtime):
                logits = model(images).float()
            accumulate(sums, loss_fn(logits, labels), logits, labels)
    model.train(was_training)
    return finish_stats(runtime, sums, started, num_classes)


def set_frozen_modules_eval(model: Any) -> None:
    """Put modules whose parameters are all frozen in eval mode: BatchNorm statistics stay pretrained."""
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        if params and not any(p.requires_grad for p in params):
            module.eval()
