#!/usr/bin/env python3
"""Fine-tuning speed, measured side by side in one run (interleaved rounds, medians).

A. images/s of edgexfer's ``full`` strategy (its runtime choices: bf16 autocast / channels_last where
   the machine has them, its loader) against a plain torchvision-style loop (ImageFolder-like dataset,
   torchvision transforms, DataLoader(shuffle=True), SGD, fp32): same model, data, batch and images.
   Target: edgexfer at least as fast (ratio >= 1.0).
B. Epoch time of the ``linear`` strategy with its feature cache (from the second epoch: head only)
   against the same linear probe without a cache (frozen backbone run on every image every epoch).
   Target: 5x or more.

Prints a Markdown table; writes benchmarks/results/bench_finetune.json.
Usage: python benchmarks/bench_finetune.py [--model resnet18] [--size 64] [--per-class 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def plain_epoch_images_per_s(model_name: str, samples, size: int, batch: int, epochs: int = 2) -> float:
    """The textbook loop (PyTorch transfer-learning tutorial style); returns the last epoch's images/s."""
    import torch
    import torchvision
    from torch.utils.data import DataLoader
    from torchvision import transforms

    from edgexfer.models import replace_head

    transform = transforms.Compose(
        [
            transforms.Resize(size),
            transforms.RandomCrop(size, padding=size // 16),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )

    class Plain(torch.utils.data.Dataset):
        """The tutorial's dataset: the image through the transform, and its label."""

        def __len__(self):
            return len(samples)

        def __getitem__(self, index):
            image, label = samples[index]
            return transform(image), label

    model = torchvision.models.get_model(model_name, weights=None)
    replace_head(model, len(samples.class_names))  # the tutorial's `model.fc = Linear(512, n)`, any family
    loader = DataLoader(Plain(), batch_size=batch, shuffle=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    criterion = torch.nn.CrossEntropyLoss()
    model.train()
    rate = 0.0
    for _ in range(epochs):
        started, count = time.perf_counter(), 0
        for images, labels in loader:
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
            count += len(labels)
        rate = count / (time.perf_counter() - started)
    return rate


def linear_without_cache_seconds(model_name: str, samples, preprocess, batch: int) -> float:
    """One epoch of a linear probe that runs the frozen backbone on every image (no cache)."""
    import torch
    from torch.utils.data import DataLoader

    from edgexfer.models import apply_strategy, build_model
    from edgexfer.training.loop import TransformDataset

    model = build_model(model_name, len(samples.class_names))
    apply_strategy(model, "linear")
    model.eval()  # frozen BatchNorm, as in the cached path
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    criterion = torch.nn.CrossEntropyLoss()
    loader = DataLoader(
        TransformDataset(samples, preprocess.eval_transform()), batch_size=batch, shuffle=True
    )
    started = time.perf_counter()
    for images, labels in loader:
        optimizer.zero_grad()
        criterion(model(images), labels).backward()
        optimizer.step()
    return time.perf_counter() - started


def measure_round(args, work: Path, index: int, common: dict, train) -> dict:
    """One interleaved round: edgexfer full vs the plain loop, linear with vs without the feature cache."""
    from edgexfer.preprocess import Preprocess
    from edgexfer.stages.finetune import FinetuneConfig, run_finetune

    full = run_finetune(FinetuneConfig(out=work / f"full{index}", strategy="full", epochs=2, **common))
    plain = plain_epoch_images_per_s(args.model, train, args.size, args.batch)
    linear_started = time.perf_counter()
    linear = run_finetune(FinetuneConfig(out=work / f"linear{index}", strategy="linear", epochs=3, **common))
    cached_seconds = sum(h["train_seconds"] for h in linear.history[1:])
    preprocess = Preprocess(size=args.size, resize_size=args.size, augment="none")
    return {
        "full": full.history[-1]["train_images_per_s"],
        "plain": plain,
        "cached": statistics.median(h["train_seconds"] for h in linear.history[1:]),
        "first_epoch": time.perf_counter() - linear_started - cached_seconds,
        "uncached": linear_without_cache_seconds(args.model, train, preprocess, args.batch),
    }


def print_table(args, rounds: list, runtime: dict, train) -> dict:
    """The Markdown table of the medians; returns them."""
    import torch

    median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    e, p, c, u = median["full"], median["plain"], median["cached"], median["uncached"]
    print(
        f"\nFine-tuning speed: {args.model}, {len(train)} embedded images at {args.size}x{args.size}, batch "
        f"{args.batch}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}; "
        f"edgexfer runtime: amp {runtime['amp']}, channels_last {runtime['channels_last']}; "
        f"median of {args.rounds} interleaved rounds"
    )
    print("| measurement | edgexfer | baseline | ratio | target |")
    print("|---|---|---|---|---|")
    print(
        f"| full strategy, train images/s (2nd epoch) | {e:.0f} | {p:.0f} (plain torchvision loop, fp32) "
        f"| {e / p:.2f}x | >= 1.0x |"
    )
    print(
        f"| linear strategy, epoch time from 2nd epoch | {c * 1000:.1f} ms (feature cache) | {u:.2f} s "
        f"(no cache) | {u / c:.0f}x | >= 5x |"
    )
    print(
        f"| linear strategy, 1st epoch incl. feature extraction (train+val) | "
        f"{median['first_epoch']:.2f} s | {u:.2f} s | - | - |"
    )
    return median


def main() -> None:
    """Parse the options, run the interleaved rounds, print the table, write the JSON."""
    from edgexfer.data import DataSpec, load_splits

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--classes", default="0-1", help="embedded classes (fewer: less validation time)")
    parser.add_argument("--per-class", type=int, default=80, help="training images per class")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgexfer-bench-ft-"))
    train, _ = load_splits(DataSpec(data="embedded", classes=args.classes, max_per_class=args.per_class))
    common = dict(
        model=args.model,
        weights="none",
        data="embedded",
        classes=args.classes,
        max_per_class=args.per_class,
        size=args.size,
        batch_size=args.batch,
        patience=None,
        progress=False,
    )
    rounds = []
    for index in range(args.rounds):
        rounds.append(measure_round(args, work, index, common, train))
        r = rounds[-1]
        print(
            f"round {index + 1}: full {r['full']:.0f} vs plain {r['plain']:.0f} img/s; "
            f"linear epoch {r['cached'] * 1000:.1f} ms cached vs {r['uncached']:.2f} s uncached",
            flush=True,
        )
    manifest = json.loads((work / "full0" / "manifest.json").read_text())
    runtime = manifest["stages"]["finetune"]["config"]["runtime"]
    median = print_table(args, rounds, runtime, train)
    RESULTS.mkdir(parents=True, exist_ok=True)
    results = {
        "args": vars(args),
        "runtime": runtime,
        "full_images_per_s": [r["full"] for r in rounds],
        "plain_images_per_s": [r["plain"] for r in rounds],
        "linear_cached_epoch_s": [r["cached"] for r in rounds],
        "linear_uncached_epoch_s": [r["uncached"] for r in rounds],
        "ratio_full_vs_plain": median["full"] / median["plain"],
        "ratio_linear_cache": median["uncached"] / median["cached"],
    }
    (RESULTS / "bench_finetune.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
