#!/usr/bin/env python3
"""Transfer check on the embedded Fashion-MNIST subset (offline, CPU-sized).

1. Pretrain a backbone with ``edgexfer finetune`` on classes 0-4 (T-shirt, Trouser, Pullover, Dress, Coat).
2. Fine-tune on classes 5-9 (Sandal, Shirt, Sneaker, Bag, Ankle boot) from that checkpoint, with a small
   target training set, against the same model trained from scratch with the same budget
   (same epochs, images, schedule, seed). Prints a table and writes benchmarks/results/transfer_check.json.

Usage: python benchmarks/transfer_check.py [--model resnet18] [--size 32] [--target-per-class 30]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from edgexfer.stages.finetune import FinetuneConfig, run_finetune

RESULTS = Path(__file__).resolve().parent / "results"


def train_runs(args, work: Path) -> list:
    """The source run, then the four target runs; returns [(name, FinetuneResult)]."""
    common = dict(
        model=args.model,
        data="embedded",
        size=args.size,
        seed=args.seed,
        patience=None,
        progress=False,
        batch_size=64,
    )
    source = run_finetune(
        FinetuneConfig(
            out=work / "source",
            weights="none",
            classes="0-4",
            strategy="full",
            max_per_class=args.source_per_class,
            epochs=args.source_epochs,
            **common,
        )
    )
    rows = [("source: classes 0-4, from scratch", source)]
    target = dict(classes="5-9", max_per_class=args.target_per_class, epochs=args.target_epochs, **common)
    runs = {
        "target 5-9: scratch, full": dict(weights="none", strategy="full"),
        "target 5-9: from source, full": dict(weights=str(source.checkpoint), strategy="full"),
        "target 5-9: from source, full, backbone lr x1": dict(
            weights=str(source.checkpoint), strategy="full", backbone_lr_mult=1.0
        ),
        "target 5-9: from source, linear": dict(weights=str(source.checkpoint), strategy="linear"),
    }
    for name, options in runs.items():
        out = work / name.split(":")[1].strip().replace(", ", "-").replace(" ", "-")
        rows.append((name, run_finetune(FinetuneConfig(out=out, **target, **options))))
    return rows


def report(args, rows: list) -> list:
    """Print the Markdown table; return its rows as dicts."""
    scratch = rows[1][1].best_val_top1
    print(
        f"\nTransfer check: {args.model} at {args.size}x{args.size}, embedded Fashion-MNIST, "
        f"seed {args.seed}, "
        f"target train {args.target_per_class}/class x {args.target_epochs} epochs, val 200/class"
    )
    print("| run | train images | epochs | best val top-1 | vs scratch |")
    print("|---|---|---|---|---|")
    table = []
    for name, result in rows:
        summary = json.loads(Path(result.metrics_path).read_text())["summary"]
        delta = "" if name.startswith("source") else f"{100 * (result.best_val_top1 - scratch):+.1f} pt"
        print(
            f"| {name} | {summary['train_images']} | {result.epochs_run} | {100 * result.best_val_top1:.1f}% "
            f"| {delta} |"
        )
        table.append(
            {
                "run": name,
                "best_val_top1": result.best_val_top1,
                "epochs": result.epochs_run,
                "train_images": summary["train_images"],
            }
        )
    return table


def main() -> None:
    """Parse the options, train the runs, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--source-per-class", type=int, default=400)
    parser.add_argument("--source-epochs", type=int, default=6)
    parser.add_argument("--target-per-class", type=int, default=30)
    parser.add_argument("--target-epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgexfer-transfer-"))
    started = time.perf_counter()
    table = report(args, train_runs(args, work))
    print(f"total {time.perf_counter() - started:.0f} s; runs in {work}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "transfer_check.json").write_text(
        json.dumps({"args": vars(args), "rows": table}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
