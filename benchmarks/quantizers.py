#!/usr/bin/env python3
"""OpenVINO INT8 by quantizer, side by side in one process: edgexfer's recipe, NNCF defaults, and the
candidate ``export --quantizer auto`` keeps (issue 13).

ResNet-18 at 224x224, batch 1, **random weights** (ImageNet weights cannot be downloaded here, and a
224-pixel fine-tune does not fit a 2-core budget): latency does not depend on the weights' values, and
accuracy is reported as agreement with the float model and top-1 drop on held-out images, which for a
random-weight model measures how much INT8 changes the predictions, not task accuracy.

Rows (all compiled by OpenVINO on the CPU with the same threads and run in interleaved rounds):

- ``openvino fp32``: the float IR (reference for agreement);
- ``edgexfer``: ``export --int8 --target openvino --quantizer edgexfer`` then ``build --backend openvino
  --precision int8`` (the real stages);
- ``nncf defaults``: ``nncf.quantize(ov_model, nncf.Dataset(...))`` on the float IR with nothing but the
  calibration set (batch 1 items, NNCF's defaults): the issue's baseline;
- ``auto``: ``export --quantizer auto`` (every installed quantizer competes on OpenVINO) then build.

Needs ``edgexfer[openvino,nncf]``. Writes benchmarks/results/quantizers_<host>.json and .md.

Usage: python benchmarks/quantizers.py [--calib-size 128] [--eval-size 200] [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CALIB = ROOT / "calibration" / "fashion-mnist"


def export_and_build(run_dir: Path, quantizer: str, args: argparse.Namespace, cache: Path) -> Dict[str, Any]:
    """The real export (openvino target) and OpenVINO int8 build; what the manifest says about them."""
    from edgexfer.manifest import Manifest
    from edgexfer.stages.build import BuildConfig, run_build
    from edgexfer.stages.export import ExportConfig, run_export

    started = time.perf_counter()
    run_export(ExportConfig(
        run_dir=run_dir, int8=True, target="openvino", quantizer=quantizer, calib=CALIB,
        calib_size=args.calib_size, calib_method=args.calib_method, eval_data=args.eval_data,
        eval_size=args.eval_size, parity_images=8, batch_size=16, cache_dir=cache, progress=False,
    ))
    export_seconds = time.perf_counter() - started
    run_build(BuildConfig(run_dir=run_dir, backend="openvino", precision="int8", smoke_data=args.eval_data,
                          progress=False))
    metrics = Manifest.open(run_dir).get("onnx_int8_openvino").metrics
    return {
        "xml": run_dir / "build" / "openvino_int8.xml",
        "export_seconds": round(export_seconds, 1),
        "kept": metrics["quantizer"],
        "reason": metrics["quantizer_reason"],
        "candidates": metrics["candidates"],
    }


def nncf_defaults(float_onnx: Path, calib: np.ndarray, out: Path) -> Dict[str, Any]:
    """``nncf.quantize`` on the float IR with NNCF's defaults and the same calibration images."""
    import nncf
    import openvino as ov

    started = time.perf_counter()
    model = ov.convert_model(str(float_onnx))
    dataset = nncf.Dataset([calib[i : i + 1] for i in range(len(calib))])
    quantized = nncf.quantize(model, dataset, subset_size=len(calib))
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    return {"xml": out, "export_seconds": round(time.perf_counter() - started, 1)}


def measure(models: Dict[str, Path], inputs: np.ndarray, labels: np.ndarray, args: argparse.Namespace
            ) -> Dict[str, Dict[str, float]]:
    """p50 latency (batch 1, interleaved rounds, alternating order) and accuracy of every model."""
    import contextlib

    from edgexfer.backends.openvino import OpenVinoRunner

    names = list(models)
    with contextlib.ExitStack() as stack:
        runners = {n: stack.enter_context(OpenVinoRunner(models[n], "int8", threads=args.threads)) for n in names}
        logits = {n: np.concatenate([r.infer(inputs[i : i + 16]) for i in range(0, len(inputs), 16)])
                  for n, r in runners.items()}
        one = inputs[:1]
        times: Dict[str, List[float]] = {n: [] for n in names}
        for runner in runners.values():
            for _ in range(10):
                runner.infer(one)
        for round_index in range(args.rounds):
            for name in names if round_index % 2 == 0 else names[::-1]:
                for _ in range(args.runs):
                    begin = time.perf_counter()
                    runners[name].infer(one)
                    times[name].append(time.perf_counter() - begin)
    reference = logits["openvino fp32"].argmax(1)
    float_top1 = 100.0 * float(np.mean(reference == labels))
    out = {}
    for name in names:
        top1 = 100.0 * float(np.mean(logits[name].argmax(1) == labels))
        out[name] = {
            "p50_ms": 1000.0 * float(np.median(times[name])),
            "p90_ms": 1000.0 * float(np.percentile(times[name], 90)),
            "agreement": float(np.mean(logits[name].argmax(1) == reference)),
            "top1": top1,
            "drop": float_top1 - top1,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib-size", type=int, default=128)
    parser.add_argument("--calib-method", default="minmax", help="edgexfer's calibration method(s) [minmax]")
    parser.add_argument("--eval-size", type=int, default=200)
    parser.add_argument("--eval-data", type=Path, default=CALIB, help="labelled held-out images")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--runs", type=int, default=20, help="batch-1 runs per model per round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temp one)")
    args = parser.parse_args()

    from edgexfer.backends.openvino import OpenVinoBackend
    from edgexfer.data import folder_samples
    from edgexfer.hardware import cpu_info, load_average
    from edgexfer.manifest import Manifest
    from edgexfer.preprocess import Preprocess
    from edgexfer.quant.calibration import folder_calibration_set
    from edgexfer.random_run import write_random_run

    work = args.keep or Path(tempfile.mkdtemp(prefix="edgexfer-bench-quantizers-"))
    cache = work / "calib-cache"
    classes = tuple(sorted(p.name for p in CALIB.iterdir() if p.is_dir()))
    preprocess = Preprocess.imagenet(224, augment="none")
    load_start = load_average()
    runs = {}
    for quantizer in ("edgexfer", "auto"):
        run_dir = work / f"resnet18-224-{quantizer}"
        shutil.rmtree(run_dir, ignore_errors=True)
        write_random_run(run_dir, "resnet18", classes, preprocess, seed=0)
        runs[quantizer] = export_and_build(run_dir, quantizer, args, cache)
    float_onnx = Manifest.open(work / "resnet18-224-auto").path_of("onnx")
    calib = folder_calibration_set(CALIB, preprocess, args.calib_size, seed=0)
    defaults = nncf_defaults(float_onnx, calib.arrays, work / "nncf_defaults.xml")
    fp32 = OpenVinoBackend().build(float_onnx, "fp32", work / "fp32").path
    samples = folder_samples(args.eval_data, class_names=list(classes))
    chosen = np.random.default_rng(1).permutation(len(samples))[: args.eval_size]
    inputs = np.stack([preprocess.to_array(samples.image(int(i))) for i in chosen])
    labels = np.asarray(samples.labels)[chosen]
    models = {
        "openvino fp32": fp32,
        "edgexfer": runs["edgexfer"]["xml"],
        "nncf defaults": defaults["xml"],
        f"auto (kept {runs['auto']['kept']})": runs["auto"]["xml"],
    }
    scores = measure(models, inputs, labels, args)
    base = scores["nncf defaults"]["p50_ms"]
    cpu = cpu_info()
    report = {
        "machine": platform.node(),
        "cpu": cpu["model"],
        "threads": args.threads,
        "load_average": {"start": load_start, "end": load_average()},
        "args": {k: str(v) for k, v in vars(args).items()},
        "weights": "random (seed 0)",
        "rows": {name: dict(s, ratio_vs_nncf_defaults=s["p50_ms"] / base) for name, s in scores.items()},
        "auto": {k: v for k, v in runs["auto"].items() if k != "xml"},
        "edgexfer_export_seconds": runs["edgexfer"]["export_seconds"],
        "nncf_defaults_seconds": defaults["export_seconds"],
    }
    lines = [
        f"# OpenVINO INT8 by quantizer: ResNet-18 224x224 batch 1, random weights ({cpu['model']}, "
        f"{args.threads} threads, load average {load_start} -> {report['load_average']['end']})",
        "",
        f"Held-out images: {len(labels)} from {args.eval_data.name}; calibration: {len(calib)} images. "
        "Agreement: top-1 class equal to the OpenVINO fp32 model's.",
        "",
        "| model | p50 ms | p90 ms | vs NNCF defaults | agreement | top-1 drop (points) |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in report["rows"].items():
        lines.append(f"| {name} | {s['p50_ms']:.2f} | {s['p90_ms']:.2f} | {s['ratio_vs_nncf_defaults']:.3f}x | "
                     f"{s['agreement']:.4f} | {s['drop']:.2f} |")
    lines += ["", f"auto kept **{runs['auto']['kept']}**: {runs['auto']['reason']}", "",
              "| candidate (export, scored on OpenVINO) | agreement | top-1 | p50 ms |", "|---|---|---|---|"]
    for name, c in runs["auto"]["candidates"].items():
        lines.append(f"| {name} | {c['agreement']:.4f} | {c['top1']:.2f} | {c['latency_p50_ms']} |")
    lines += ["", f"export seconds: edgexfer {runs['edgexfer']['export_seconds']}, auto "
              f"{runs['auto']['export_seconds']} (float export + calibration + every candidate + scoring); "
              f"nncf defaults {defaults['export_seconds']}"]
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    slug = platform.node().split(".")[0] or "host"
    (RESULTS / f"quantizers_{slug}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (RESULTS / f"quantizers_{slug}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
