#!/usr/bin/env python3
"""INT8 top-1 drop with and without edgexfer's bias correction, side by side in one export (issue 13).

A depthwise-heavy model (default MobileNetV3-Small, ``--model``) is trained from scratch at 64 px on a
labelled image folder (``--data``, e.g. the 3,000-image Fashion-MNIST folder of
benchmarks/precise_bn_families.py; finetune's split: 80% train / 20% val, precise BN on), then
``export --int8 --quantizer auto`` runs for the cpu and tensorrt targets: edgexfer's recipe
(``edgexfer``) and the same recipe with empirical bias correction (``edgexfer-bc``,
edgexfer/quant/bias_correction.py) are quantized from the same calibration ranges and scored on the same
held-out images (the run's validation split) by the same runtime (ONNX Runtime on the CPU; for tensorrt
a stand-in). Their scores come from the export's manifest, so the table is what the competition saw.

    PYTHONPATH=. .venv/bin/python benchmarks/bias_correction.py --data /path/to/fashion-mnist-folder

Writes benchmarks/results/bias_correction.{json,md}. CPU-heavy: name the CPU, expect noise from others.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any, Dict

ROOT = Path(__file__).resolve().parents[1]


def _run_from_checkpoint(run: Path, checkpoint: Path) -> None:
    """A run directory whose finetune record is ``checkpoint`` (copied), so export takes it."""
    import shutil

    from edgexfer.manifest import Manifest

    shutil.rmtree(run, ignore_errors=True)
    target = run / "finetune" / "best.pt"
    target.parent.mkdir(parents=True)
    shutil.copy(checkpoint, target)
    config = {"weights": f"trained elsewhere ({checkpoint})"}
    with Manifest.update(run, create=True) as manifest:
        manifest.add_artifact("checkpoint", target, kind="checkpoint", stage="finetune", config=config)
        manifest.record_stage("finetune", config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="labelled folder <class>/<image>")
    parser.add_argument("--model", default="mobilenet_v3_small")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--calib-method", default="minmax")
    parser.add_argument("--work", type=Path, default=Path("/tmp/edgexfer-bench-bias-correction"))
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--reuse", action="store_true", help="keep an already trained run in --work")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="an edgexfer checkpoint (finetune/best.pt) trained elsewhere: no training here")
    parser.add_argument("--calib", type=Path, default=None, help="calibration folder [the run's training split]")
    parser.add_argument("--eval-data", type=Path, default=None, help="held-out folder [the run's val split]")
    args = parser.parse_args()

    from edgexfer.hardware import cpu_info, load_average
    from edgexfer.manifest import Manifest
    from edgexfer.stages.export import ExportConfig, run_export
    from edgexfer.stages.finetune import FinetuneConfig, run_finetune

    run = args.work / args.model
    load_start = load_average()
    started = time.perf_counter()
    if args.checkpoint is not None:
        _run_from_checkpoint(run, args.checkpoint)
    elif not (args.reuse and (run / "finetune" / "best.pt").exists()):
        run_finetune(FinetuneConfig(out=run, model=args.model, weights="none", data=str(args.data), size=args.size,
                                    epochs=args.epochs, patience=0, seed=0, progress=False))
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    run_export(ExportConfig(run_dir=run, int8=True, target="all", quantizer="auto", calib_method=args.calib_method,
                            calib=args.calib, eval_data=args.eval_data, calib_size=512, evidence_layers=4,
                            progress=False))
    export_seconds = time.perf_counter() - started
    manifest = Manifest.open(run)
    rows: Dict[str, Any] = {}
    for target in ("cpu", "tensorrt", "openvino"):
        if not manifest.has(f"onnx_int8_{target}"):
            continue
        metrics = manifest.get(f"onnx_int8_{target}").metrics
        rows[target] = {
            "kept": metrics["quantizer"],
            "reason": metrics["quantizer_reason"],
            "scored_on": metrics["scored_on"],
            "float_top1": metrics["float_top1"],
            "images": metrics["eval_images"],
            "candidates": {name: {k: c.get(k) for k in ("top1", "drop", "agreement", "snr_db", "latency_p50_ms")}
                           for name, c in metrics["candidates"].items()},
            "layers_corrected": metrics["candidates"].get("edgexfer-bc", {}).get("bias_correction", {})
            .get("layers_corrected"),
        }
    report = {
        "machine": platform.node(), "cpu": cpu_info()["model"], "model": args.model, "size": args.size,
        "epochs": args.epochs, "checkpoint": str(args.checkpoint), "calib": str(args.calib),
        "eval_data": str(args.eval_data), "calib_method": args.calib_method, "data": str(args.data),
        "load_average": {"start": load_start, "end": load_average()},
        "train_seconds": round(train_seconds, 1), "export_seconds": round(export_seconds, 1), "targets": rows,
    }
    lines = [
        f"# INT8 with and without bias correction: {args.model} {args.size}px, trained from scratch "
        f"{args.epochs} epochs ({report['cpu']}, load average {load_start} -> {report['load_average']['end']})",
        "",
        f"Calibration: up to 512 images from {args.calib or 'the training split'}, {args.calib_method}. Held-out: "
        f"{args.eval_data or 'the validation split'}. "
        "Both candidates quantized from the same ranges and scored by the same runtime in one export.",
        "",
        "| target | scored on | float top-1 | edgexfer drop | edgexfer-bc drop | agreement (plain / bc) | "
        "layers corrected | kept |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for target, row in rows.items():
        plain, bc = row["candidates"].get("edgexfer", {}), row["candidates"].get("edgexfer-bc", {})
        lines.append(
            f"| {target} | {row['scored_on']} | {row['float_top1']:.2f} | {plain.get('drop', float('nan')):.2f} | "
            f"{bc.get('drop', float('nan')):.2f} | {plain.get('agreement', 0):.4f} / {bc.get('agreement', 0):.4f} | "
            f"{row['layers_corrected']} | {row['kept']} |"
        )
    lines += ["", f"Training {report['train_seconds']} s, export (every target, every candidate, evidence) "
              f"{report['export_seconds']} s.", ""]
    text = "\n".join(lines)
    print(text)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "bias_correction.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.results / "bias_correction.md").write_text(text)


if __name__ == "__main__":
    main()
