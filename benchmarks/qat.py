"""QAT vs post-training quantization (issue 13): top-1 drop of edgexfer's recipe (PTQ) and of the
``edgexfer-qat`` candidate, side by side in one export, on held-out Fashion-MNIST images.

    PYTHONPATH=. .venv/bin/python benchmarks/qat.py                                   # mobilenet_v3_small
    PYTHONPATH=. .venv/bin/python benchmarks/qat.py --models resnet18 --qat-epochs 1

Data: ``--images`` images of Fashion-MNIST's training set as a folder (benchmarks/precise_bn_families.py's
writer; finetune splits it 80/20), trained from scratch (``--weights none``) at ``--size`` px for
``--epochs``. Held out: ``--eval-images`` of the official test set (t10k, never seen in training or
calibration), written as a second folder and passed as ``--eval-data``. One ``export --int8 --qat-epochs N``
per model and target: every candidate (edgexfer, edgexfer-bc, edgexfer-qat ...) is scored on the same
held-out images on the target's runtime, so the drops are paired. Calibration: ``--calib-size`` images of
the training split, as the export does by default.

Prints a Markdown table and writes ``benchmarks/results/qat.{json,md}``. CPU-heavy: name the CPU, expect
noise from other processes (the seconds are raw wall and CPU seconds of this process).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from edgexfer.fsutil import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from precise_bn_families import CLASSES, read_idx, write_folder  # noqa: E402


def write_test_folder(source: Path, folder: Path, images: int, seed: int) -> Path:
    """``images`` images of the t10k test set (equal per class, seeded) as ``folder/<class>/<i>.png``."""
    from PIL import Image

    if folder.is_dir() and sum(1 for _ in folder.rglob("*.png")) == images:
        return folder
    pixels = read_idx(source / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(source / "t10k-labels-idx1-ubyte.gz")
    rng = np.random.default_rng(seed)
    for index, name in enumerate(CLASSES):
        chosen = rng.choice(np.flatnonzero(labels == index), images // len(CLASSES), replace=False)
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i, item in enumerate(sorted(chosen)):
            Image.fromarray(pixels[item]).save(folder / name / f"{i:04d}.png")
    return folder


def run_model(model: str, args: argparse.Namespace, data: Path, test: Path) -> List[Dict[str, Any]]:
    """Finetune ``model`` once, then one export per target with QAT; a row per target."""
    from edgexfer.manifest import Manifest
    from edgexfer.stages.export import ExportConfig, run_export
    from edgexfer.stages.finetune import FinetuneConfig, run_finetune

    out = args.work / f"{model}-s{args.size}-e{args.epochs}"
    if not (out / "finetune" / "best.pt").is_file():
        run_finetune(FinetuneConfig(out=out, model=model, weights="none", data=str(data), size=args.size,
                                    epochs=args.epochs, patience=0, seed=args.seed, progress=False))
    rows = []
    for target in args.targets:
        wall, cpu = time.perf_counter(), time.process_time()
        run_export(ExportConfig(run_dir=out, int8=True, target=target, qat_epochs=args.qat_epochs,
                                eval_data=test, eval_size=args.eval_images, calib_size=args.calib_size,
                                evidence_layers=0, seed=args.seed, progress=False))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        metrics = Manifest.open(out).artifacts[f"onnx_int8_{target}"].metrics
        qat = metrics["candidates"]["edgexfer-qat"]
        rows.append({
            "model": model, "size": args.size, "epochs": args.epochs, "target": target,
            "float_top1": metrics["float_top1"], "kept": metrics["quantizer"],
            "candidates": metrics["candidates"], "images": metrics["eval_images"],
            "export_wall_s": round(wall, 1), "export_cpu_s": round(cpu, 1), "qat_epochs": args.qat_epochs,
            "qat": qat.get("qat", {}),
        })
    return rows


def markdown(rows: List[Dict[str, Any]], cpu: str) -> str:
    """The side-by-side table."""
    lines = [
        f"# QAT vs PTQ (edgexfer recipe), Fashion-MNIST, held-out t10k images\n\nCPU: {cpu} "
        "(2 cores shared with other jobs: seconds are noisy). Drops in top-1 points vs the float model on the "
        "same images, each candidate scored on the target's runtime (tensorrt: ONNX Runtime standing in).\n",
        "| model | px | train ep | target | images | float top-1 | PTQ drop | PTQ-bc drop | QAT drop | PTQ agree "
        "| QAT agree | kept | QAT ep | QAT train s (CPU s) | export wall s (CPU s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = r["candidates"]
        bc = c.get("edgexfer-bc", {}).get("drop")
        lines.append(
            f"| {r['model']} | {r['size']} | {r['epochs']} | {r['target']} | {r['images']} | {r['float_top1']:.2f} "
            f"| {c['edgexfer']['drop']:.2f} | {'-' if bc is None else f'{bc:.2f}'} | {c['edgexfer-qat']['drop']:.2f} "
            f"| {c['edgexfer']['agreement']:.4f} | {c['edgexfer-qat']['agreement']:.4f} | {r['kept']} "
            f"| {r['qat_epochs']} | {r['qat'].get('train_seconds', '-')} ({r['qat'].get('train_cpu_seconds', '-')}) "
            f"| {r['export_wall_s']} ({r['export_cpu_s']}) |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Parse options, run the models, print and write the table."""
    from edgexfer.hardware import cpu_info

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--work", type=Path, default=Path("runs/qat-bench"))
    parser.add_argument("--models", nargs="+", default=["mobilenet_v3_small"])
    parser.add_argument("--targets", nargs="+", default=["cpu", "tensorrt"])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--qat-epochs", type=int, default=2)
    parser.add_argument("--images", type=int, default=3000, help="training-set images in the data folder")
    parser.add_argument("--eval-images", type=int, default=1000, help="held-out t10k images")
    parser.add_argument("--calib-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    data = write_folder(args.source, args.work / "data", args.images, args.seed)
    test = write_test_folder(args.source, args.work / "test", args.eval_images, args.seed)
    cpu = f"{cpu_info().get('model') or platform.processor()}"
    saved = args.results / "qat.json"
    rows = json.loads(saved.read_text())["rows"] if saved.is_file() else []
    for model in args.models:
        for row in run_model(model, args, data, test):
            key = (row["model"], row["size"], row["epochs"], row["target"], row["qat_epochs"])
            rows = [r for r in rows if (r["model"], r["size"], r["epochs"], r["target"], r["qat_epochs"]) != key]
            rows.append(row)
        table = markdown(rows, cpu)
        print(table, flush=True)
        args.results.mkdir(parents=True, exist_ok=True)
        atomic_write_json(saved, {"cpu": cpu, "rows": rows})
        atomic_write_text(args.results / "qat.md", table)


if __name__ == "__main__":
    main()
