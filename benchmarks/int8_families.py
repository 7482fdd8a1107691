#!/usr/bin/env python3
"""INT8 top-1 drop per model family on trained models and truly held-out images, against the vendors'
defaults on the same float model and calibration images (issue 13's accuracy targets; issue 12's "which
families quantize well").

Per family, the 10-epoch from-scratch run that benchmarks/precise_bn_families.py leaves in
``<runs>/<model>-e<epochs>`` (64 px, 2,400 Fashion-MNIST training images) is taken as a user would have
it: its ``last.pt`` with precise BN (1,024 training images, what ``finetune --precise-bn`` does before
every validation) becomes the checkpoint of a copy of the run in ``<work>/<model>``. Then:

1. ``export --int8 --target all --quantizer auto`` (the real stage, defaults): calibration on 512 images of
   the run's training split, candidates chosen on the run's validation split (600 images);
2. baselines quantized from the same float ONNX model and the same 512 calibration images:
   - ``ort defaults``: ``onnxruntime.quantization.quantize_static(float, out, reader)`` with nothing else
     (QDQ, QInt8 activations and weights, per-tensor);
   - ``ort u8s8 pc``: the same with ``activation_type=QUInt8, weight_type=QInt8, per_channel=True`` (the
     issue's "U8S8 per-channel" row);
   - ``nncf defaults``: ``nncf.quantize(onnx_model, nncf.Dataset(items))`` with nothing else (300 of the
     images, NNCF's default subset), run by ``--nncf-python`` (a venv with ``nncf``; skipped without it);
3. every model scored here, image by image, on ``--test-images`` images of Fashion-MNIST's **test set**
   (never seen by training, calibration or the choice): ONNX Runtime CPU for edgexfer's cpu and tensorrt
   (ONNX Runtime standing in for TensorRT: no GPU here) models and the ORT baselines; OpenVINO CPU for
   edgexfer's openvino model and NNCF's. Drop = float top-1 - INT8 top-1 on the same runtime; "vs" = the
   paired difference in top-1 against a baseline on the same images (positive: edgexfer better) with its
   standard error.

    PYTHONPATH=. .venv/bin/python benchmarks/int8_families.py --runs /work/fam/work \\
        --families resnet18 efficientnet_b0 --nncf-python /tmp/nncfv/bin/python

Writes benchmarks/results/int8_families.{json,md} (rows of other families kept). CPU-heavy.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from precise_bn_families import CLASSES, read_idx  # noqa: E402

NNCF_SCRIPT = """
import sys, numpy as np, onnx, nncf
src, calib, out = sys.argv[1:4]
arrays = np.load(calib)
model = onnx.load(src)
name = model.graph.input[0].name
quantized = nncf.quantize(model, nncf.Dataset([{name: arrays[i:i + 1]} for i in range(len(arrays))]))
onnx.save(quantized, out)
print(nncf.__version__)
"""


def write_test_folder(source: Path, folder: Path, images: int, seed: int) -> Path:
    """``images`` Fashion-MNIST test-set images (equal per class, seeded) as ``folder/<class>/<i>.png``."""
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


def prepare_run(trained: Path, run: Path, images: int, seed: int) -> float:
    """A copy of ``trained`` whose checkpoint is its last.pt with precise BN; the validation top-1."""
    import torch

    from edgexfer.checkpoint import load_checkpoint, save_checkpoint
    from edgexfer.data import samples_for_run
    from edgexfer.manifest import Manifest
    from edgexfer.training import loop, precise_bn
    from edgexfer.training.runtime import resolve_runtime

    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(trained, run, ignore=shutil.ignore_patterns("export", "build", "verify"))
    runtime = resolve_runtime("cpu", "off", "off")
    model, meta = load_checkpoint(run / "finetune" / "last.pt")
    model.train()
    transform = meta.preprocess.eval_transform()
    train = samples_for_run(run, "train")
    loader = precise_bn.make_loader(precise_bn.pick_images(train, images, seed), transform, 64, runtime, seed)
    precise_bn.recompute_bn_stats(model, loader, runtime)
    model.eval()
    path = run / "finetune" / "best.pt"
    save_checkpoint(path, model.state_dict(), meta)
    with Manifest.update(run) as manifest:
        manifest.add_artifact("checkpoint", path, kind="checkpoint", stage="finetune",
                              config={"from": f"{trained}/finetune/last.pt, precise BN on {images} images"})
    val = loop.make_eval_loader(samples_for_run(run, "val"), transform, 64, runtime, 0)
    stats = loop.evaluate(model, val, torch.nn.CrossEntropyLoss(), runtime, False, len(meta.class_names))
    return stats.top1


class Scorer:
    """Top-1 correctness, image by image, of ONNX models on ONNX Runtime or OpenVINO (CPU)."""

    def __init__(self, inputs: np.ndarray, labels: np.ndarray) -> None:
        self.inputs, self.labels = inputs, labels

    def correct(self, path: Path, runtime: str) -> np.ndarray:
        preds = []
        if runtime == "onnxruntime":
            import onnxruntime as ort

            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            for start in range(0, len(self.inputs), 64):
                preds.append(session.run(None, {name: self.inputs[start:start + 64]})[0].argmax(1))
        else:
            import openvino as ov

            compiled = ov.Core().compile_model(str(path), "CPU")
            for start in range(0, len(self.inputs), 64):
                preds.append(np.asarray(compiled(self.inputs[start:start + 64])[0]).argmax(1))
        return np.concatenate(preds) == self.labels


def ort_baseline(float_path: Path, calib: np.ndarray, out: Path, u8s8_per_channel: bool) -> Path:
    """ONNX Runtime's quantize_static with its defaults (or U8S8 per-channel) on ``calib``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"input": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self) -> Optional[Dict[str, np.ndarray]]:
            return next(self.items, None)

    kwargs: Dict[str, Any] = {}
    if u8s8_per_channel:
        kwargs = dict(activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    quantize_static(str(float_path), str(out), Reader(), **kwargs)
    return out


def paired(a: np.ndarray, b: np.ndarray) -> Dict[str, float]:
    """Top-1 of ``a`` minus top-1 of ``b`` on the same images (points) and its standard error."""
    d = a.astype(np.float64) - b.astype(np.float64)
    return {"diff": 100 * d.mean(), "se": 100 * d.std(ddof=1) / np.sqrt(len(d))}


def family(args: argparse.Namespace, model: str, test: Path) -> Dict[str, Any]:
    """One family's row (see the module docstring)."""
    from edgexfer.checkpoint import load_checkpoint
    from edgexfer.manifest import Manifest
    from edgexfer.stages.export import ExportConfig, run_export
    from edgexfer.stages.export.onnx_models import load_eval_slice

    trained = args.runs / f"{model}-e{args.epochs}"
    run = args.work / (model if not args.qat_epochs else f"{model}-qat{args.qat_epochs}")
    val_top1 = prepare_run(trained, run, 1024, args.seed)
    cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    run_export(ExportConfig(run_dir=run, int8=True, target=args.target, quantizer="auto",
                            qat_epochs=args.qat_epochs, qat_images=args.qat_images, progress=False))
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    export = {"wall_s": time.perf_counter() - wall0,
              "cpu_s": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)}
    manifest = Manifest.open(run)
    _, meta = load_checkpoint(run / "finetune" / "best.pt")
    held = load_eval_slice(ExportConfig(run_dir=run, eval_data=test, eval_size=args.test_images), meta)
    scorer = Scorer(held.inputs, held.labels)
    from edgexfer.quant.calibration import run_calibration_set

    calib = run_calibration_set(run, None, meta.preprocess, 512, args.seed).arrays
    float_path = run / "export" / "model.onnx"
    models: Dict[str, Any] = {}
    scratch = Path(tempfile.mkdtemp(prefix="int8fam-"))
    try:
        correct = {"float ort": scorer.correct(float_path, "onnxruntime"),
                   "float ov": scorer.correct(float_path, "openvino")}
        for target, runtime in (("cpu", "onnxruntime"), ("tensorrt", "onnxruntime"), ("openvino", "openvino")):
            if not manifest.has(f"onnx_int8_{target}"):
                continue
            artifact = manifest.get(f"onnx_int8_{target}")
            correct[f"edgexfer {target}"] = scorer.correct(manifest.path_of(f"onnx_int8_{target}"), runtime)
            models[target] = {"kept": artifact.metrics.get("quantizer"),
                              "calib_method": artifact.metrics.get("calib_method"),
                              "candidates": {k: {"agreement": v.get("agreement"), "drop": v.get("drop")}
                                             for k, v in (artifact.metrics.get("candidates") or {}).items()}}
        correct["ort defaults"] = scorer.correct(ort_baseline(float_path, calib, scratch / "d.onnx", False),
                                                 "onnxruntime")
        correct["ort u8s8 pc"] = scorer.correct(ort_baseline(float_path, calib, scratch / "p.onnx", True),
                                                "onnxruntime")
        nncf_version = None
        if args.nncf_python:
            np.save(scratch / "calib.npy", calib)
            done = subprocess.run([args.nncf_python, "-c", NNCF_SCRIPT, str(float_path), str(scratch / "calib.npy"),
                                   str(scratch / "nncf.onnx")], capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"nncf failed: {done.stderr.strip().splitlines()[-1:]}")
            nncf_version = done.stdout.strip().splitlines()[-1]
            correct["nncf defaults"] = scorer.correct(scratch / "nncf.onnx", "openvino")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    top1 = {k: 100 * v.mean() for k, v in correct.items()}
    ref = {"ort": correct["float ort"], "ov": correct["float ov"]}
    drop = {k: 100 * (ref["ov" if k in ("edgexfer openvino", "nncf defaults") else "ort"].mean() - v.mean())
            for k, v in correct.items() if not k.startswith("float")}
    versus = {"cpu vs ort defaults": ("edgexfer cpu", "ort defaults"),
              "cpu vs ort u8s8 pc": ("edgexfer cpu", "ort u8s8 pc"),
              "openvino vs nncf defaults": ("edgexfer openvino", "nncf defaults")}
    versus = {k: paired(correct[a], correct[b]) for k, (a, b) in versus.items() if a in correct and b in correct}
    name = model if not args.qat_epochs else f"{model} (QAT {args.qat_epochs} ep)"
    return {"model": name, "epochs": args.epochs, "val_top1_precise_bn": val_top1, "test_images": len(held.labels),
            "top1": top1, "drop": drop, "versus": versus, "targets": models, "export": export,
            "nncf_version": nncf_version}


def markdown(rows: List[Dict[str, Any]], cpu: str) -> str:
    """The results tables."""
    lines = [f"INT8 by family: trained from scratch (64 px, 10 epochs, 2,400 Fashion-MNIST images, precise BN), "
             f"scored on held-out Fashion-MNIST **test** images; {cpu}.", "",
             "Top-1 drop in points (float top-1 minus INT8 top-1, same runtime and images). edgexfer = the model "
             "`export --int8 --quantizer auto` kept (quantizer in brackets); tensorrt is scored on ONNX Runtime "
             "standing in for TensorRT (no GPU).", "",
             "| model | test images | float top-1 | cpu: edgexfer | ort defaults | ort u8s8 pc | "
             "openvino: edgexfer | nncf defaults | tensorrt: edgexfer | export CPU s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d, t = r["drop"], r["targets"]

        def cell(name: str, target: str = "", d: Dict[str, float] = d, t: Dict[str, Any] = t) -> str:
            if name not in d:
                return "-"
            return f"{d[name]:.2f}" + (f" ({t[target]['kept']})" if target else "")

        lines.append(
            f"| {r['model']} | {r['test_images']} | {r['top1']['float ort']:.2f} | {cell('edgexfer cpu', 'cpu')} | "
            f"{cell('ort defaults')} | {cell('ort u8s8 pc')} | {cell('edgexfer openvino', 'openvino')} | "
            f"{cell('nncf defaults')} | {cell('edgexfer tensorrt', 'tensorrt')} | {r['export']['cpu_s']:.0f} |")
    lines += ["", "Paired differences in top-1 (points, edgexfer minus baseline, same images; +: edgexfer better), "
              "with the standard error:", "", "| model | comparison | diff | SE |", "|---|---|---|---|"]
    for r in rows:
        for name, v in r["versus"].items():
            lines.append(f"| {r['model']} | {name} | {v['diff']:+.2f} | {v['se']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    from edgexfer.hardware import cpu_info
    from edgexfer.fsutil import atomic_write_json, atomic_write_text

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="folder of <model>-e<epochs> finetune runs")
    parser.add_argument("--families", nargs="+", required=True)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--source", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--test-images", type=int, default=3000)
    parser.add_argument("--nncf-python", default=None, help="a Python with nncf installed (NNCF defaults row)")
    parser.add_argument("--work", type=Path, default=Path("runs/int8-families"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", default="all", help="export --target (all: cpu, tensorrt, openvino)")
    parser.add_argument("--qat-epochs", type=int, default=0,
                        help="export --qat-epochs: the edgexfer-qat candidate competes too (row 'model (QAT N ep)')")
    parser.add_argument("--qat-images", type=int, default=0, help="export --qat-images (0: the whole training split)")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    test = write_test_folder(args.source, args.work / "test", args.test_images, args.seed)
    cpu = f"{cpu_info().get('model') or platform.processor()}"
    saved = args.results / "int8_families.json"
    rows = json.loads(saved.read_text())["rows"] if saved.is_file() else []
    for model in args.families:
        row = family(args, model, test)
        rows = [r for r in rows if r["model"] != row["model"]] + [row]
        table = markdown(rows, cpu)
        print(table, flush=True)
        args.results.mkdir(parents=True, exist_ok=True)
        atomic_write_json(saved, {"cpu": cpu, "rows": rows})
        atomic_write_text(args.results / "int8_families.md", table)
    print(f"results: {saved} and {args.results / 'int8_families.md'}")


if __name__ == "__main__":
    main()
