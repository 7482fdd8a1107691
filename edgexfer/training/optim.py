"""Optimizer and learning-rate schedule: head vs backbone groups, no decay on norms and biases, warmup + cosine."""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Tuple

from edgexfer.errors import ConfigError

OPTIMIZERS = ("sgd", "adamw")


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
