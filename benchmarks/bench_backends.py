"""ResNet-18 batch-1 CPU latency: the CPU INT8 artifact on ONNX Runtime and on OpenVINO vs torch eager float.

One run, side by side, same input, same thread count:

    .venv/bin/python benchmarks/bench_backends.py [--rounds 12] [--per-round 15] [--threads N]

Model: a randomly initialised torchvision resnet18 at 224x224 (latency does not depend on trained
weights; accuracy is not measured here -- `edgexfer verify` does that). It goes through the real
pipeline: an edgexfer checkpoint (``edgexfer.random_run``), ``edgexfer.stages.export`` (float ONNX +
the CPU INT8 QDQ recipe, U8 activations / S8 per-channel weights, calibrated on the repository's
calibration/fashion-mnist images), then ``edgexfer.stages.build`` for ONNX Runtime and OpenVINO.

Timing: the process is pinned to the first N cores (N = physical cores unless --threads), every
runtime uses N threads, each gets warm-up calls, then the runtimes are measured in interleaved rounds
(A B C D, A B C D, ...; ``edgexfer.timing.measure_interleaved``) so background load hits all of them
alike. Reported: median, IQR, p90 per runtime and the ratios of medians against this project's
development targets (ONNX Runtime INT8 within 1.1x of OpenVINO INT8; both >= 4x faster than
torch eager float). The targets live here, not in ``edgexfer bench``, which prints facts only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CALIBRATION = ROOT / "calibration" / "fashion-mnist"
# This project's development targets for the ratios of medians (budgets of this benchmark).
ORT_VS_OPENVINO_INT8_MAX = 1.10
TORCH_VS_INT8_MIN = 4.0


def make_run(run_dir: Path, size: int) -> Dict[str, Any]:
    """A run dir with a random-init resnet18 checkpoint, exported to float + CPU INT8 ONNX."""
    from edgexfer.checkpoint import load_checkpoint
    from edgexfer.preprocess import Preprocess
    from edgexfer.random_run import write_random_run
    from edgexfer.stages.export import ExportConfig, run_export

    classes = sorted(p.name for p in CALIBRATION.iterdir() if p.is_dir())
    write_random_run(run_dir, "resnet18", classes, Preprocess.imagenet(size, augment="none"), seed=0)
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
    model, meta = load_checkpoint(run_dir / "finetune" / "best.pt")
    return {
        "model": model.eval(),
        "preprocess": meta.preprocess,
        "quantized_with": "edgexfer.stages.export (CPU recipe, minmax, 100 images from calibration/fashion-mnist)",
    }


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
    """Warm every call up in the first round, then ``per_round`` timed calls each per round, round-robin;
    seconds per call for each (a failing runtime stops the benchmark: its numbers would be missing)."""
    from edgexfer.timing import TimingConfig, measure_interleaved

    def round_config(index: int) -> TimingConfig:
        return TimingConfig(warmup=warmup if index == 0 else 0, warmup_time_s=math.inf,
                            min_iterations=per_round, max_iterations=per_round, min_time_s=0.0,
                            max_time_s=math.inf)

    samples, errors = measure_interleaved(calls, rounds, round_config)
    if errors:
        name, exc = next(iter(errors.items()))
        raise RuntimeError(f"{name} failed while timing: {exc}") from exc
    return samples


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
    low, high = TORCH_VS_INT8_MIN, ORT_VS_OPENVINO_INT8_MAX
    checks = [
        (f"onnxruntime int8 / openvino int8 (target <= {high:.2f})", ort_ms / ov_ms, ort_ms / ov_ms <= high),
        (f"torch eager / onnxruntime int8 (target >= {low:.1f})", torch_ms / ort_ms, torch_ms / ort_ms >= low),
        (f"torch eager / openvino int8 (target >= {low:.1f})", torch_ms / ov_ms, torch_ms / ov_ms >= low),
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
