"""What precise BatchNorm costs per epoch (issue 12), measured side by side: one training step (forward,
backward, SGD step) and one precise-BN batch (edgexfer.training.precise_bn.recompute_bn_stats, hooks
included), interleaved four times after a warm-up, batch 64 at 64 px, from scratch; the median-ish
(second fastest) of each.

    PYTHONPATH=. .venv/bin/python benchmarks/precise_bn_cost.py resnet18 mobilenet_v3_large

Prints per model the ratio and the share of an epoch that ``--precise-bn 1024`` adds to an epoch of
2,400 training images (the 3,000-image Fashion-MNIST folder of benchmarks/precise_bn_families.py). Name
the CPU and expect noise from other processes on a shared machine.
"""

from __future__ import annotations

import json
import sys
import time

import torch
import torchvision

from edgexfer.training import precise_bn
from edgexfer.training.runtime import Runtime

CPU = Runtime(torch.device("cpu"), None, False)


def measure(name: str, repeats: int = 4) -> dict:
    """Seconds of a training step and of a precise-BN batch for torchvision model ``name``."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10)
    images, labels = torch.randn(64, 3, 64, 64), torch.randint(0, 10, (64,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()

    def train_step() -> None:
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def precise_batch() -> None:
        precise_bn.recompute_bn_stats(model, [(images, labels)], CPU)

    train_step()
    precise_batch()
    train, precise = [], []
    for _ in range(repeats):
        for step, times in ((train_step, train), (precise_batch, precise)):
            started = time.perf_counter()
            step()
            times.append(time.perf_counter() - started)
    step_s, batch_s = sorted(train)[1], sorted(precise)[1]
    return {
        "train_step_s": step_s,
        "precise_bn_batch_s": batch_s,
        "ratio": batch_s / step_s,
        "epoch_share_1024_of_2400": (1024 / 64 * batch_s) / (2400 / 64 * step_s),
    }


if __name__ == "__main__":
    for model_name in sys.argv[1:] or ["resnet18", "mobilenet_v3_large"]:
        print(model_name, json.dumps(measure(model_name)), flush=True)
