"""ResNet-18 batch-1 CPU latency: the CPU INT8 artifact on ONNX Runtime and on OpenVINO vs torch eager float.

One run, side by side, same input, same thread count:

    .venv/bin/python benchmarks/bench_backends.py [--rounds 12] [--per-round 15] [--threads N]

Model: a randomly initialised torchvision resnet18 at 224x224 (latency does not depend on trained
weights; accuracy is not measured here -- `edgexfer verify` does that). It goes through the real
pipeline: an edgexfer checkpoint, ``edgexfer.stages.export`` (float ONNX + the CPU INT8 QDQ recipe, U8
activations / S8 per-channel weights, calibrated on the repository's calibration/fashion-mnist
images), then ``edgexfer.stages.build`` for ONNX Runtime and OpenVINO. If the export stage is missing
it falls back to ``onnxruntime.quantization.quantize_static`` with the same recipe and says so.

Timing: the process is pinned to the first N cores (N = physical cores unless --threads), every
runtime uses N threads, each gets warm-up calls, then the runtimes are measured in interleaved rounds
(A B C D, A B C D, ...) so background load hits all of them alike. Reported: median, IQR, p90 per
runtime and the ratios of medians against the targets (ONNX Runtime INT8 within 1.1x of OpenVINO INT8;
both >= 4x faster than torch eager float).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CALIBRATION = ROOT / "calibration" / "fashion-mnist"


def make_run(run_dir: Path, size: int) -> Dict[str, Any]:
    """A run dir with a random-init resnet18 checkpoint, exported to float + CPU INT8 ONNX."""
    import torch

    from edgexfer.checkpoint import CheckpointMeta, save_checkpoint
    from edgexfer.manifest import Manifest
    from edgexfer.models import build_model
    from edgexfer.preprocess import Preprocess

    torch.manual_seed(0)
    classes = sorted(p.name for p in CALIBRATION.iterdir() if p.is_dir())
    model = build_model("resnet18", len(classes)).eval()
    meta = CheckpointMeta(
        arch="resnet18",
        class_names=classes,
        preprocess=Preprocess.imagenet(size, augment="none"),
        weights_source="random init (latency benchmark)",
    )
    save_checkpoint(run_dir / "finetune" / "best.pt", model.state_dict(), meta)
    with Manifest.update(run_dir, create=True) as manifest:
        manifest.add_artifact(
            "checkpoint", run_dir / "finetune" / "best.pt", kind="checkpoint", stage="finetune"
        )
        manifest.record_stage("finetune", {"arch": "resnet18"})
    how = export(run_dir)
    return {"model": model, "preprocess": meta.preprocess, "quantized_with": how}


def export(run_dir: Path) -> str:
    """Export with the real stage when present, else quantize_static directly; say which."""
    from edgexfer.manifest import Manifest

    try:
        from edgexfer.stages.export import ExportConfig, run_export
    except ImportError:
        run_export = None
    if run_export is not None:
        run_export(
            ExportConfig(
                run_dir=run_dir,
                int8=True,
                target="cpu",
                calib=CALIBRATION,
                calib_size=100,
                calib_method="minmax",
                eval_data=CALIBRATION,
                eval_size=20,
                parity_images=4,
                progress=False,
            )
        )
        return "edgexfer.stages.export (CPU recipe, minmax, 100 images from calibration/fashion-mnist)"
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    import torch

    from edgexfer.checkpoint import load_checkpoint
    from edgexfer.data import folder_samples

    model, meta = load_checkpoint(run_dir / "finetune" / "best.pt")
    float_path = run_dir / "export" / "model.onnx"
    float_path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        torch.zeros(2, 3, meta.preprocess.size, meta.preprocess.size),
        str(float_path),
        input_names=["input"],
        output_names=["logits"],
        opset_version=17,
        dynamo=False,
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    samples = folder_samples(CALIBRATION)
    items = iter(
        [{"input": meta.preprocess.to_array(samples.image(i))[None]} for i in range(0, len(samples), 5)]
    )

    class Reader(CalibrationDataReader):
        def get_next(self) -> Any:
            return next(items, None)

    int8_path = run_dir / "export" / "model_int8_cpu.onnx"
    quantize_static(
        str(float_path),
        str(int8_path),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    with Manifest.update(run_dir) as manifest:
        manifest.add_artifact("onnx", float_path, kind="onnx", stage="export", inputs=["checkpoint"])
        manifest.add_artifact(
            "onnx_int8_cpu", int8_path, kind="onnx-qdq", stage="export", inputs=["checkpoint"]
        )
    return "onnxruntime.quantization.quantize_static directly (export stage missing), U8/S8 per-channel QDQ"


def build(run_dir: Path) -> Dict[str, Path]:
    """Build onnxruntime_int8, openvino_int8 and onnxruntime_fp32 with the build stage."""
    from edgexfer.stages.build import BuildConfig, run_build

    paths = {}
    for backend, precision in (("onnxruntime", "int8"), ("openvino", "int8"), ("onnxruntime", "fp32")):
        outcome = run_build(
            BuildConfig(
                run_dir=run_dir,
                backend=backend,
                precision=precision,
                smoke_data=CALIBRATION,
                smoke_images=10,
                progress=False,
            )
        )
        paths[outcome.name] = outcome.path
        print(f"  built {outcome.name}: smoke cosine {outcome.smoke['mean_cosine']:.4f}", file=sys.stderr)
    return paths


def interleaved(
    calls: Dict[str, Callable[[], Any]], warmup: int, rounds: int, per_round: int
) -> Dict[str, np.ndarray]:
    """Warm every call up, then time them in interleaved rounds; seconds per call for each."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    samples: Dict[str, List[float]] = {name: [] for name in calls}
    clock = time.perf_counter
    for _ in range(rounds):
        for name, fn in calls.items():
            for _ in range(per_round):
                t0 = clock()
                fn()
                samples[name].append(clock() - t0)
    return {name: np.asarray(values) for name, values in samples.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--per-round", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--max-isa",
        default=None,
        metavar="ISA",
        help="Cap oneDNN (OpenVINO's and torch's kernels) at this ISA, e.g. AVX512_CORE_VNNI, to "
        "compare runtimes on the same instructions: on AMX CPUs OpenVINO's INT8 uses AMX "
        "tiles, ONNX Runtime's QLinearConv uses AVX-512 VNNI",
    )
    args = parser.parse_args()
    if args.max_isa:
        os.environ["ONEDNN_MAX_CPU_ISA"] = args.max_isa  # read once when oneDNN loads: set before imports
    # No runtime busy-waits: torch's OpenMP threads sleep like ONNX Runtime's (edgexfer turns spinning
    # off) and OpenVINO's, so a loaded machine does not punish one runtime more than the others.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    import torch

    from edgexfer.backends import get_backend
    from edgexfer.hardware import cpu_info, physical_cores
    from edgexfer.metrics import latency_stats
    from edgexfer.preprocess import load_image

    threads = args.threads or physical_cores()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:threads]))
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="edgexfer-bench-") as tmp:
        run_dir = Path(tmp) / "run"
        print("preparing: random-init resnet18 -> export -> build ...", file=sys.stderr)
        made = make_run(run_dir, args.size)
        paths = build(run_dir)
        image = load_image(next(CALIBRATION.glob("*/*.png")))
        x = made["preprocess"].to_array(image)[None].astype(np.float32)  # the same input for everyone
        model = made["model"]
        runners = {
            "onnxruntime int8 (built)": get_backend("onnxruntime").load(
                paths["onnxruntime_int8"], {"threads": threads}
            ),
            "openvino int8 (built)": get_backend("openvino").load(
                paths["openvino_int8"], {"threads": threads, "pin_threads": True}
            ),
            "onnxruntime fp32 (built)": get_backend("onnxruntime").load(
                paths["onnxruntime_fp32"], {"threads": threads}
            ),
            # ONNX Runtime's own default (spinning worker threads), to show what edgexfer's default avoids
            "onnxruntime int8 (built, spinning)": get_backend("onnxruntime").load(
                paths["onnxruntime_int8"], {"threads": threads, "spin": True}
            ),
        }
        for runner in runners.values():
            runner.activate()
        xt = torch.from_numpy(x)

        def torch_eager() -> Any:
            with torch.inference_mode():
                return model(xt)

        calls: Dict[str, Callable[[], Any]] = {"torch eager fp32": torch_eager}
        calls.update({name: (lambda r=runner: r.infer(x)) for name, runner in runners.items()})
        samples = interleaved(calls, args.warmup, args.rounds, args.per_round)
        for runner in runners.values():
            runner.deactivate()

    stats = {name: latency_stats(s) for name, s in samples.items()}
    torch_ms = stats["torch eager fp32"]["p50_ms"]
    ort_ms = stats["onnxruntime int8 (built)"]["p50_ms"]
    ov_ms = stats["openvino int8 (built)"]["p50_ms"]
    cpu = cpu_info()
    lines = [
        f"# ResNet-18 {args.size}x{args.size}, batch 1, CPU latency ({platform.node()})",
        "",
        f"CPU: {cpu['model']}, {threads} threads pinned, features {', '.join(cpu['features'])}",
        "Model: random-init resnet18 (latency does not need trained weights); "
        f"INT8 via {made['quantized_with']}",
        f"Timing: {args.warmup} warm-up calls each, {args.rounds} interleaved rounds "
        f"x {args.per_round} calls",
        f"oneDNN ISA cap (ONEDNN_MAX_CPU_ISA): {os.environ.get('ONEDNN_MAX_CPU_ISA') or 'none'}; "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; "
        f"load average at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())}",
        "",
        "| runtime | median ms | IQR ms | p90 ms | n | vs torch eager |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in stats.items():
        lines.append(
            f"| {name} | {s['p50_ms']:.2f} | {s['iqr_ms']:.2f} | {s['p90_ms']:.2f} | {s['n']} | "
            f"{torch_ms / s['p50_ms']:.2f}x |"
        )
    checks = [
        ("onnxruntime int8 / openvino int8 (target <= 1.10)", ort_ms / ov_ms, ort_ms / ov_ms <= 1.10),
        ("torch eager / onnxruntime int8 (target >= 4.0)", torch_ms / ort_ms, torch_ms / ort_ms >= 4.0),
        ("torch eager / openvino int8 (target >= 4.0)", torch_ms / ov_ms, torch_ms / ov_ms >= 4.0),
    ]
    lines += ["", "| ratio | value | target met |", "|---|---|---|"]
    lines += [f"| {label} | {value:.2f} | {'yes' if ok else 'NO'} |" for label, value, ok in checks]
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"backends_{platform.node() or 'host'}" + (f"_{args.max_isa.lower()}" if args.max_isa else "")
    (args.out / f"{stem}.md").write_text(text + "\n", encoding="utf-8")
    (args.out / f"{stem}.json").write_text(
        json.dumps(
            {
                "stats": stats,
                "threads": threads,
                "cpu": cpu,
                "quantized_with": made["quantized_with"],
                "max_isa": args.max_isa,
                "loadavg": os.getloadavg(),
                "ratios": {label: value for label, value, _ in checks},
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    print(f"\nwritten: {args.out / (stem + '.md')} and .json", file=sys.stderr)
    return 0 if all(ok for _, _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
