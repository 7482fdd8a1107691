"""Precise BatchNorm across model families (issue 12): five torchvision families from scratch
(``--weights none``) at 64 px on a 3,000-image, 10-class Fashion-MNIST folder, validation top-1 before
and after precise BN, against the target of >= 60%.

    PYTHONPATH=. .venv/bin/python benchmarks/precise_bn_families.py                 # all five, 10 epochs
    PYTHONPATH=. .venv/bin/python benchmarks/precise_bn_families.py --families resnet18 --epochs 3

The data is what a new user would make: 300 images per class from Fashion-MNIST's training set
(seeded), written as PNGs to ``<work>/data/<class>/``, split by finetune (20% validation: 2,400 train
/ 600 val). ``--source`` is the folder of the idx files (Debian's ``dataset-fashion-mnist`` puts them in
/usr/share/datasets/fashion-mnist).

Per family, ONE training run with ``--precise-bn 0 --patience 0`` (all epochs):

- **before**: its best validation top-1: what best.pt, export and calibration got before precise BN.
- **after**: its ``last.pt`` with the BatchNorm statistics recomputed by
  :func:`edgexfer.training.precise_bn.recompute_bn_stats` on ``--precise-bn`` training images, then
  validated with the same loop. A run with ``--precise-bn N`` trains exactly the same weights (the pass
  draws no random number and changes no weight: tests/unit/test_precise_bn.py checks it), so this is
  that run's last-epoch validation top-1, at the cost of one training run instead of two; its best
  epoch can only be as good or better.
- the validation top-1 with 256 (and ``--also-images``) training images, to show how many images the
  statistics need. The seconds are raw (the epoch while training, the pass afterwards: on a shared
  machine not comparable); benchmarks/precise_bn_cost.py measures the cost side by side.

Prints a Markdown table and writes ``benchmarks/results/precise_bn_families.{json,md}``. CPU-heavy:
name the CPU and expect noise from other processes.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from edgexfer.fsutil import atomic_write_json, atomic_write_text
from edgexfer.training.precise_bn import DEFAULT_IMAGES

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("mobilenet_v3_large", "mobilenet_v3_small", "efficientnet_b0", "regnet_y_400mf", "resnet18")
CLASSES = ("T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot")
TARGET = 0.60


def read_idx(path: Path) -> np.ndarray:
    """An idx file (gzip or not) as a numpy array (Fashion-MNIST / MNIST format)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def write_folder(source: Path, folder: Path, images: int, seed: int) -> Path:
    """``images`` training images (equal per class, seeded) as ``folder/<class>/<i>.png``."""
    from PIL import Image

    if folder.is_dir() and sum(1 for _ in folder.rglob("*.png")) == images:
        return folder
    pixels = read_idx(source / "train-images-idx3-ubyte.gz")
    labels = read_idx(source / "train-labels-idx1-ubyte.gz")
    rng = np.random.default_rng(seed)
    per_class = images // len(CLASSES)
    for index, name in enumerate(CLASSES):
        chosen = rng.choice(np.flatnonzero(labels == index), per_class, replace=False)
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i, item in enumerate(sorted(chosen)):
            Image.fromarray(pixels[item]).save(folder / name / f"{i:04d}.png")
    return folder


def after_precise_bn(run_dir: Path, counts: List[int], seed: int) -> Dict[str, Any]:
    """Validation top-1 of ``last.pt`` with its BatchNorm statistics recomputed on each of ``counts``
    training images (the run's own split and evaluation transform), with the pass's seconds."""
    import torch

    from edgexfer.checkpoint import load_checkpoint
    from edgexfer.data import samples_for_run
    from edgexfer.training import loop, precise_bn
    from edgexfer.training.runtime import resolve_runtime

    runtime = resolve_runtime("cpu", "off", "off")
    model, meta = load_checkpoint(run_dir / "finetune" / "last.pt")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    train, val = samples_for_run(run_dir, "train"), samples_for_run(run_dir, "val")
    transform = meta.preprocess.eval_transform()
    loss = torch.nn.CrossEntropyLoss()
    val_loader = loop.make_eval_loader(val, transform, 64, runtime, 0)
    results: Dict[str, Any] = {}
    for count in counts:
        model.load_state_dict(state)
        model.train()  # as after a training epoch: every BatchNorm layer trains (strategy full)
        loader = precise_bn.make_loader(precise_bn.pick_images(train, count, seed), transform, 64, runtime, seed)
        done = precise_bn.recompute_bn_stats(model, loader, runtime)
        stats = loop.evaluate(model, val_loader, loss, runtime, False, len(meta.class_names))
        results[str(count)] = {"val_top1": stats.top1, "images": done.images, "seconds": done.seconds}
    return results


def run_family(
    model: str, data: Path, work: Path, epochs: int, images: int, seed: int, extra_counts: List[int]
) -> Dict[str, Any]:
    """One training run without precise BN, then its last.pt with precise BN (see the module docstring)."""
    from edgexfer.stages.finetune import FinetuneConfig, run_finetune

    out = work / f"{model}-e{epochs}"
    started = time.perf_counter()
    result = run_finetune(
        FinetuneConfig(out=out, model=model, weights="none", data=str(data), size=64, epochs=epochs,
                       precise_bn=0, patience=0, seed=seed, progress=False)
    )
    train_seconds = time.perf_counter() - started
    history = result.history
    after = after_precise_bn(out, sorted({256, images} | set(extra_counts)), seed)
    chosen = after[str(images)]
    epoch_seconds = float(np.median([row["train_seconds"] for row in history]))
    return {
        "model": model,
        "epochs": len(history),
        "before_best_val_top1": result.best_val_top1,
        "before_last_val_top1": history[-1]["val_top1"],
        "last_train_top1": history[-1]["train_top1"],
        "collapse_line_before": result.collapse,
        "after_last_val_top1": chosen["val_top1"],
        "after_by_images": after,
        "precise_bn_seconds": chosen["seconds"],
        "train_epoch_seconds": epoch_seconds,
        "precise_bn_cost": chosen["seconds"] / epoch_seconds,
        "run_seconds": train_seconds,
        "history": history,
    }


def markdown(rows: List[Dict[str, Any]], images: int, cpu: str) -> str:
    """The results table."""
    lines = [
        f"Precise BN across families: from scratch, 64 px, 3,000 Fashion-MNIST images (2,400 train / 600 val); "
        f"{cpu}; precise BN on {images} training images.",
        "",
        "| model | epochs | val top-1 before (best) | after (last epoch) | target 60% | after, by images | "
        "train top-1 (last) | epoch s (median) | precise BN s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        by = row["after_by_images"]
        counts = ", ".join(f"{k}: {100 * by[k]['val_top1']:.1f}%" for k in sorted(by, key=int))
        met = "met" if row["after_last_val_top1"] >= TARGET else "MISSED"
        lines.append(
            f"| {row['model']} | {row['epochs']} | {100 * row['before_best_val_top1']:.1f}% | "
            f"{100 * row['after_last_val_top1']:.1f}% | {met} | "
            f"{counts} | {100 * row['last_train_top1']:.1f}% | "
            f"{row['train_epoch_seconds']:.0f} | {row['precise_bn_seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Parse options, run the families, print and write the table."""
    from edgexfer.hardware import cpu_info

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--work", type=Path, default=Path("runs/precise-bn-bench"))
    parser.add_argument("--families", nargs="+", default=list(FAMILIES))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--precise-bn", type=int, default=DEFAULT_IMAGES)
    parser.add_argument("--images", type=int, default=3000, help="images in the data folder (all classes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--also-images", type=int, nargs="*", default=[], help="more precise BN sizes to try")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    data = write_folder(args.source, args.work / "data", args.images, args.seed)
    cpu = f"{cpu_info().get('model') or platform.processor()}"
    saved = args.results / "precise_bn_families.json"
    # rows of earlier invocations (other families or epochs) stay; a rerun replaces its own row
    rows = json.loads(saved.read_text())["rows"] if saved.is_file() else []
    for model in args.families:
        row = run_family(model, data, args.work, args.epochs, args.precise_bn, args.seed, args.also_images)
        rows = [r for r in rows if (r["model"], r["epochs"]) != (model, row["epochs"])] + [row]
        table = markdown(rows, args.precise_bn, cpu)
        print(table, flush=True)
        args.results.mkdir(parents=True, exist_ok=True)
        atomic_write_json(saved, {"cpu": cpu, "rows": rows})
        atomic_write_text(args.results / "precise_bn_families.md", table)


if __name__ == "__main__":
    main()
