"""Precise BatchNorm: recompute the running statistics of the BatchNorm layers being trained, from a
bounded set of training images, before every validation (so before checkpoint selection and export).

Why: BatchNorm's running mean/variance are an exponential average over past batches, with weight
``momentum`` per batch (PyTorch docs, ``torch.nn.BatchNorm2d``). torchvision's MobileNetV3,
EfficientNet and RegNet use momentum 0.01, so the average spans ~100 steps of weights that have since
moved: on short schedules evaluation normalises with statistics of a different network (issue 12: 10%
validation top-1 for a model at 63% once the statistics were recomputed).

How: the statistics are pooled exactly, each layer's input mean and biased variance per batch
combined over all images by count (E[x], E[x^2]), rather than averaging per-batch estimates as
``momentum=None`` (cumulative average) or fvcore's ``update_bn_stats`` do: an average of per-batch
variances misses the spread of the batch means. Under DDP every rank pools its shard and one
all-reduce of (count, sum, sum of squares) gives every rank the same statistics, as pycls'
``compute_precise_bn_stats`` all-reduces its per-GPU estimates.

The per-batch statistics are BatchNorm's own (momentum 1 for the pass, so its buffers hold the batch's
mean and unbiased variance after each call; a hook turns them into sums), so the pass costs one plain
forward per image.

What runs: only the BatchNorm layers that train (in train mode: frozen ones stay in eval mode,
:func:`edgexfer.training.loop.set_frozen_modules_eval`) normalise with batch statistics, as in training;
every other module is in eval mode (dropout and stochastic depth off: the statistics are those the
network sees at inference). Images go through the evaluation transform, the one validation, export
and calibration use. No random generator is drawn from, and no weight changes, so a run with
precise BN trains exactly the weights of a run without it; only the BatchNorm buffers differ.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, List, Optional

if TYPE_CHECKING:  # kept light: the finetune command reads DEFAULT_IMAGES for its --help
    from edgexfer.data import ImageSamples
    from edgexfer.training.runtime import Runtime

# Images --precise-bn recomputes BatchNorm statistics on by default (README: measured cost per epoch).
DEFAULT_IMAGES = 1024


@dataclass
class PreciseBNResult:
    """What one recomputation did: layers updated, images seen (all ranks), seconds it took."""

    layers: int
    images: int
    seconds: float


def trained_batchnorms(model: Any) -> List[Any]:
    """The BatchNorm layers of ``model`` that are in train mode and keep running statistics."""
    from torch.nn.modules.batchnorm import _BatchNorm

    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]


def lowest_momentum(model: Any) -> Optional[float]:
    """The smallest running-statistics momentum among the BatchNorm layers of ``model`` that train
    (parameters not frozen); None when none does, or all keep cumulative averages."""
    from torch.nn.modules.batchnorm import _BatchNorm

    values = [
        m.momentum
        for m in model.modules()
        if isinstance(m, _BatchNorm)
        and m.track_running_stats
        and m.momentum is not None
        and (not m.affine or any(p.requires_grad for p in m.parameters()))
    ]
    return min(values) if values else None


def pick_images(samples: "ImageSamples", count: int, seed: int) -> "ImageSamples":
    """A seeded random ``count`` of ``samples`` (all of them when there are fewer), in a seeded random
    order, the same every epoch."""
    import numpy as np

    # in shuffled order, never sorted: folders list images class by class, and a batch of one class
    # normalised by its own statistics (train-mode BatchNorm) feeds later layers what training never showed
    order = np.random.default_rng(seed).permutation(len(samples))
    return samples.subset(order[: min(count, len(samples))])


def make_loader(samples: "ImageSamples", transform: Any, batch_size: int, runtime: "Runtime", seed: int) -> Any:
    """An in-order loader over this rank's share of ``samples`` (every world_size-th image) with its own
    generator: a loader without one draws its base seed from torch's global generator each pass,
    which would shift the training run's random stream."""
    import torch

    from edgexfer.training.loop import make_eval_loader

    generator = torch.Generator().manual_seed(seed)
    return make_eval_loader(samples, transform, batch_size, runtime, num_workers=0, generator=generator)


def recompute_bn_stats(model: Any, loader: Any, runtime: "Runtime") -> PreciseBNResult:
    """Set the running mean/variance of ``model``'s trained BatchNorm layers to their inputs' exact
    statistics over ``loader`` (all ranks pooled). Modes, momenta and ``num_batches_tracked`` are
    left as they were; a layer no image reached keeps its statistics."""
    import torch

    from edgexfer.training.loop import to_device
    from edgexfer.training.runtime import autocast

    started = time.perf_counter()
    layers = trained_batchnorms(model)
    if not layers:
        return PreciseBNResult(0, 0, 0.0)
    # per layer: [count, sum of x per channel, sum of x^2 per channel], float64
    sums = [torch.zeros(1 + 2 * m.num_features, dtype=torch.float64, device=runtime.device) for m in layers]
    saved = [(m.momentum, m.num_batches_tracked.clone(), m.running_mean.clone(), m.running_var.clone()) for m in layers]
    modes = [(m, m.training) for m in model.modules()]

    def hook_for(acc: Any) -> Any:
        # with momentum 1 the buffers hold this call's batch mean and unbiased variance (computed by
        # BatchNorm itself, so the pass costs a plain forward); n values per channel turn them into sums
        def hook(module: Any, inputs: Any, output: Any) -> None:
            n = inputs[0].numel() // inputs[0].shape[1]
            if n < 2:
                return
            mean = module.running_mean.double()
            var = module.running_var.double() * (n - 1) / n
            acc[0] += n
            acc[1 : 1 + module.num_features] += mean * n
            acc[1 + module.num_features :] += (var + mean * mean) * n

        return hook

    handles = [m.register_forward_hook(hook_for(acc)) for m, acc in zip(layers, sums)]
    images = 0
    try:
        model.eval()
        for m in layers:
            m.train()
            m.reset_running_stats()  # no NaN/inf of the old buffers can leak through 0 x old
            m.momentum = 1.0
        with torch.no_grad():
            for batch, _ in loader:
                if len(batch) < 2:
                    continue  # train-mode BatchNorm needs more than one value per channel
                with autocast(runtime):
                    model(to_device(batch, runtime))
                images += len(batch)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:
            module.training = training
        for m, (momentum, tracked, mean, var) in zip(layers, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)
            m.running_mean.copy_(mean)  # until the pooled statistics replace them below
            m.running_var.copy_(var)
    images = _pool(sums, images, runtime)
    with torch.no_grad():
        for m, acc in zip(layers, sums):
            count = float(acc[0])
            if count < 2:
                continue
            mean = acc[1 : 1 + m.num_features] / count
            var = (acc[1 + m.num_features :] / count - mean * mean).clamp_(min=0.0)
            m.running_mean.copy_(mean.to(m.running_mean.dtype))
            # the running variance BatchNorm keeps is the unbiased one (torch.nn.BatchNorm2d docs)
            m.running_var.copy_((var * count / (count - 1)).to(m.running_var.dtype))
    return PreciseBNResult(len(layers), images, time.perf_counter() - started)


def _pool(sums: List[Any], images: int, runtime: "Runtime") -> int:
    """Add every rank's sums together in place (one all-reduce); return the images seen by all ranks."""
    if not runtime.distributed:
        return images
    import torch
    import torch.distributed as dist

    flat = torch.cat(sums + [torch.tensor([float(images)], dtype=torch.float64, device=runtime.device)])
    dist.all_reduce(flat)
    offset = 0
    for acc in sums:
        acc.copy_(flat[offset : offset + acc.numel()])
        offset += acc.numel()
    return int(flat[-1])
