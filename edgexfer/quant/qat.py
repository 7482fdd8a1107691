"""Quantization-aware training of the float ONNX graph under the recipe's own fake quantization.

:func:`train_qat` trains the module of :func:`edgexfer.quant.qat_graph.build_module` (the shipped graph,
BatchNorm folded by the export; any BatchNormalization left runs on its frozen running statistics) for
``epochs`` passes over the run's training split, on CPU: SGD with momentum, a small learning rate decayed
to zero (cosine), loss = KL divergence to the float model's own predictions (distillation; the labels only
with :data:`LABEL_WEIGHT`). The candidate competes on agreement with the float model first: with the labels
in the loss (weight 1), an under-trained MobileNetV3-Small kept training instead (held-out top-1 +2.2 points
above float, agreement with it 0.615 vs PTQ's 0.699; benchmarks/results/qat.md). Activation ranges stay at
the calibrated ones, so the QDQ model quantized from the trained weights with those ranges runs exactly
what training simulated.

Fake quantization: torch's own ``fake_quantize_per_channel_affine`` / ``fake_quantize_per_tensor_affine``
(ATen ops, straight-through estimator). ``torch.ao.quantization`` (its observers and ``prepare_qat``) warns
in torch 2.14 that it is deprecated for torchao; NNCF's and ModelOpt's torch QAT insert quantizers by their
own placement rules and defaults, not edgexfer's recipe, and are heavy extras (docs/int8.md says more).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Dict, Tuple

import numpy as np

log = logging.getLogger(__name__)

# cross-entropy on the labels, next to the distillation loss (weight 1, temperature 1: plain probabilities)
LABEL_WEIGHT = 0.0


@dataclass(frozen=True)
class QatSettings:
    """How QAT trains: epochs over the training split, learning rate, batch, seed, images (0: all)."""

    epochs: int
    lr: float = 1e-3
    batch_size: int = 32
    seed: int = 0
    max_images: int = 0


def training_arrays(samples: Any, preprocess: Any, max_images: int = 0, seed: int = 0,
                    progress: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """(uint8 NCHW pixels through the evaluation preprocessing, labels) of the training split."""
    from tqdm import tqdm

    count = len(samples) if max_images <= 0 else min(max_images, len(samples))
    order = np.sort(np.random.default_rng(seed).permutation(len(samples))[:count])
    view = samples.for_preprocess(preprocess) if hasattr(samples, "for_preprocess") else samples
    size = preprocess.size
    pixels = np.empty((count, 3, size, size), dtype=np.uint8)
    for slot, index in enumerate(tqdm(order, desc="QAT images", disable=not progress, leave=False)):
        pixels[slot] = preprocess.to_uint8(view.image(int(index)), "NCHW")
    return pixels, np.asarray(samples.labels)[order].astype(np.int64)


def train_qat(float_model: Any, plan: Any, pixels: np.ndarray, labels: np.ndarray, preprocess: Any,
              settings: QatSettings, progress: bool = False) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """Train ``float_model`` (named by :func:`~edgexfer.quant.qat_graph.name_nodes`) under ``plan``'s fake
    quantization; return (the trained initializers by name, what to record)."""
    import torch
    from tqdm import tqdm

    from edgexfer.quant.qat_graph import build_module

    torch.manual_seed(settings.seed)
    student = build_module(float_model, plan).train()
    teacher = build_module(float_model, None).eval()
    optimizer = torch.optim.SGD(student.parameters(), lr=settings.lr, momentum=0.9)
    rng = np.random.default_rng(settings.seed)
    steps_per_epoch = math.ceil(len(labels) / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    step, losses = 0, []
    started, cpu_started = time.perf_counter(), time.process_time()
    bar = tqdm(total=total, desc="QAT", disable=not progress, leave=False)
    try:
        for _ in range(settings.epochs):
            order = rng.permutation(len(labels))
            epoch_loss = 0.0
            for begin in range(0, len(order), settings.batch_size):
                chosen = order[begin:begin + settings.batch_size]
                batch = pixels[chosen]
                flip = rng.random(len(chosen)) < 0.5  # the one augmentation: horizontal flips
                batch = np.where(flip[:, None, None, None], batch[..., ::-1], batch)
                inputs = torch.from_numpy(np.ascontiguousarray(preprocess.normalize(batch, "NCHW")))
                target = torch.from_numpy(labels[chosen])
                with torch.no_grad():
                    soft = torch.softmax(teacher(inputs), dim=1)
                logits = student(inputs)
                loss = torch.nn.functional.kl_div(torch.log_softmax(logits, dim=1), soft, reduction="batchmean")
                if LABEL_WEIGHT:
                    loss = loss + LABEL_WEIGHT * torch.nn.functional.cross_entropy(logits, target)
                for group in optimizer.param_groups:  # cosine decay to zero over every step
                    group["lr"] = settings.lr * 0.5 * (1 + math.cos(math.pi * step / max(total, 1)))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                epoch_loss += float(loss.detach()) * len(chosen)
                bar.update(1)
            losses.append(round(epoch_loss / len(labels), 5))
            log.info("QAT epoch %d/%d: loss %.4f", len(losses), settings.epochs, losses[-1])
    finally:
        bar.close()
    record = {
        "epochs": settings.epochs, "lr": settings.lr, "batch_size": settings.batch_size, "images": int(len(labels)),
        "steps": step, "epoch_losses": losses, "loss": f"KL to float + {LABEL_WEIGHT} x CE",
        "optimizer": "SGD 0.9, cosine",
        "fake_quant": "torch.fake_quantize_per_channel_affine / per_tensor_affine (STE)", "batchnorm": "folded",
        "train_seconds": round(time.perf_counter() - started, 3),
        "train_cpu_seconds": round(time.process_time() - cpu_started, 3), "plan": plan.describe(),
    }
    return student.trained(), record
