#!/usr/bin/env python3
"""INT8 accuracy and export/calibration time on the embedded Fashion-MNIST subset (offline, CPU-sized).

For ResNet-18, MobileNetV3-Large and EfficientNet-B0: a short fine-tune (``run_finetune``, random init:
ImageNet weights cannot be downloaded here), then ``run_export`` with ``--int8 --target all
--calib-method auto`` calibrated on ``calibration/fashion-mnist`` (512 images, none of them in the
embedded train/val sets). Prints float top-1, INT8 top-1 and the drop for every calibration method and
target on the held-out validation images, the method ``auto`` kept, the accuracy guard's layers,
and the export / calibration / quantization seconds; then times a second, cached run of ResNet-18.
Writes benchmarks/results/quantize_<host>.json and .md.

Usage: python benchmarks/bench_quantize.py [--size 64] [--per-class 200] [--epochs 3] [--models ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from edgexfer.errors import ParityError
from edgexfer.stages.export import ExportConfig, run_export
from edgexfer.stages.finetune import FinetuneConfig, run_finetune

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CALIB = ROOT / "calibration" / "fashion-mnist"
BUDGETS = {"resnet18": 0.3, "mobilenet_v3_large": 1.0, "efficientnet_b0": 1.0}  # the drop targets


def export_model(run_dir: Path, arch: str, args: argparse.Namespace, cache: Path) -> dict:
    """run_export with the guard at the model's budget; a guard failure is reported, not raised."""
    config = ExportConfig(
        run_dir=run_dir,
        int8=True,
        target="all",
        calib=CALIB,
        calib_size=512,
        calib_method="auto",
        eval_size=args.eval_size,
        auto_eval_size=args.eval_size,
        max_drop=BUDGETS.get(arch),
        cache_dir=cache,
        progress=False,
    )
    started = time.perf_counter()
    try:
        result = run_export(config)
    except ParityError as exc:
        return {"error": str(exc), "seconds": round(time.perf_counter() - started, 2)}
    return {"seconds": round(time.perf_counter() - started, 2), "metrics": result.metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v3_large", "efficientnet_b0"])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--per-class", type=int, default=100, help="training images per class")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    parser.add_argument("--lr", type=float, default=None, help="learning rate [finetune's default]")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--merge",
        action="store_true",
        help="add these models to the existing results file instead of replacing it",
    )
    parser.add_argument("--eval-size", type=int, default=1000, help="held-out validation images")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgexfer-bench-quantize-"))
    cache = work / "calib-cache"
    report = {"machine": platform.node(), "processor": platform.processor(), "args": vars(args), "models": {}}
    for arch in args.models:
        begin = time.perf_counter()
        trained = run_finetune(
            FinetuneConfig(
                out=work / arch,
                model=arch,
                weights="none",
                data="embedded",
                size=args.size,
                max_per_class=args.per_class,
                epochs=args.epochs,
                batch_size=args.batch_size,
                optimizer=args.optimizer,
                lr=args.lr,
                patience=None,
                progress=False,
                seed=0,
            )
        )
        entry = {
            "finetune_seconds": round(time.perf_counter() - begin, 1),
            "val_top1": round(100 * trained.best_val_top1, 2),
            "training": f"{args.size}px, {args.per_class}/class x {args.epochs} ep, {args.optimizer}"
            + (f" lr {args.lr}" if args.lr else "")
            + f", batch {args.batch_size}",
        }
        entry.update(export_model(trained.run_dir, arch, args, cache))
        if arch == "resnet18" and "metrics" in entry:  # the same command again: float reused, ranges cached
            entry["cached_rerun_seconds"] = export_model(trained.run_dir, arch, args, cache)["seconds"]
        report["models"][arch] = entry
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"quantize_{platform.node() or 'machine'}"
    if args.merge and (RESULTS / f"{name}.json").exists():
        previous = json.loads((RESULTS / f"{name}.json").read_text())
        report["models"] = dict(previous.get("models", {}), **report["models"])
    print_tables(report, args)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (RESULTS / f"{name}.md").write_text("\n".join(tables(report, args)) + "\n")
    print(f"\nwrote {RESULTS / name}.json and .md")


def tables(report: dict, args: argparse.Namespace) -> list:
    """Markdown lines: per model x target x method accuracy, then timings."""
    lines = [
        f"INT8 PTQ on embedded Fashion-MNIST (short training from random init, "
        f"see 'training'), calibration: 512 images of calibration/fashion-mnist, "
        f"evaluation: {args.eval_size} held-out val images (ONNX Runtime CPU for both targets)",
        "",
        "| model | target | method | float top-1 | INT8 top-1 | drop (pts) | agreement | kept |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arch, entry in report["models"].items():
        if "metrics" not in entry:
            lines.append(f"| {arch} | - | - | - | - | guard failed: {entry['error']} | | |")
            continue
        for target in ("cpu", "tensorrt"):
            m = entry["metrics"][f"onnx_int8_{target}"]
            for method, s in m["method_scores"].items():
                kept = "auto" if method == m["calib_method"] else ""
                lines.append(
                    f"| {arch} | {target} | {method} | {m['float_top1']:.2f} | {s['top1']:.2f} | "
                    f"{m['float_top1'] - s['top1']:.2f} | {s['agreement']:.4f} | {kept} |"
                )
            if m["excluded_nodes"]:
                lines.append(
                    f"| {arch} | {target} | {m['calib_method']} + guard ({len(m['excluded_nodes'])} "
                    f"float layers) | {m['float_top1']:.2f} | {m['int8_top1']:.2f} | {m['drop']:.2f} | "
                    f"{m['agreement']:.4f} | final |"
                )
    lines += [
        "",
        "| model | training | val top-1 (finetune) | finetune s | export s (float) | calibration s | "
        "quantize s cpu / tensorrt | export+INT8 total s | cached re-run s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arch, entry in report["models"].items():
        if "metrics" not in entry:
            continue
        metrics = entry["metrics"]
        cpu, trt = metrics["onnx_int8_cpu"], metrics["onnx_int8_tensorrt"]
        lines.append(
            f"| {arch} | {entry.get('training', '')} | {entry['val_top1']:.2f} | {entry['finetune_seconds']:.0f} | "
            f"{metrics['onnx'].get('export_seconds', 0):.2f} | {cpu['calib_seconds']:.2f} | "
            f"{cpu['quantize_seconds']:.1f} / {trt['quantize_seconds']:.1f} | {entry['seconds']:.1f} | "
            f"{entry.get('cached_rerun_seconds', '')} |"
        )
    return lines


def print_tables(report: dict, args: argparse.Namespace) -> None:
    """Print the Markdown tables."""
    print()
    print("\n".join(tables(report, args)))


if __name__ == "__main__":
    main()
