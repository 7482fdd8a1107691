"""The linear strategy's feature cache: the frozen backbone runs once, the head trains on its output."""

from __future__ import annotations

import time
from typing import Any, List, Tuple

from edgexfer.errors import DataError
from edgexfer.training.loop import EpochStats, accumulate, finish_stats, progress_bar, to_device
from edgexfer.training.runtime import Runtime, autocast


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
            for images, labels in progress_bar(loader, progress and runtime.is_main, desc):
                with autocast(runtime):
                    model(to_device(images, runtime))
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
        accumulate(sums, loss, logits, targets)
    return finish_stats(runtime, sums, started, num_classes)


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
            accumulate(sums, loss_fn(logits, targets), logits, targets)
    return finish_stats(runtime, sums, started, num_classes)
