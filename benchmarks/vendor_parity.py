#!/usr/bin/env python3
"""edgexfer's model-alone p50 next to the runtime's own measurement, on the same artifact, side by side.

OpenVINO (``--xml``): ``benchmark_app -hint latency`` (the tool shipped in the openvino pip package,
its "Median" line), a plain OpenVINO loop (one infer request, the same compile config edgexfer uses,
inputs and outputs shared, no checks), and edgexfer's ``OpenVinoRunner.infer`` timed as ``verify`` and
``bench`` time it (``edgexfer.timing.measure``). ONNX Runtime (``--onnx``): a plain ``session.run`` loop
vs ``OnnxRuntimeRunner.infer`` (``onnxruntime_perf_test`` is not in the pip package; the plain loop is
the equivalent). The three are run in turn, ``--repeat`` times, so background load hits them alike;
the table gives each one's median over the repeats, edgexfer / vendor, and edgexfer's per-call host
overhead (edgexfer - plain loop) as its own column.

Usage: python benchmarks/vendor_parity.py --xml build/openvino_int8.xml [--onnx model.onnx]
       [--threads 2] [--seconds 8] [--repeat 3] [--batch 1]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np


def p50_ms(call: Callable[[], object], seconds: float) -> float:
    """Median milliseconds of ``call`` over ``seconds`` (after a short warm-up), as edgexfer times."""
    from edgexfer.timing import TimingConfig, measure

    config = TimingConfig(warmup=20, warmup_time_s=0.5, min_iterations=50, min_time_s=seconds,
                          max_time_s=seconds * 1.5)
    return float(np.median(measure(call, config))) * 1e3


def benchmark_app_ms(xml: Path, seconds: float, shape: List[int]) -> Optional[float]:
    """``benchmark_app -hint latency``'s median latency in ms (None where the tool is missing)."""
    tool = shutil.which("benchmark_app") or str(Path(sys.executable).with_name("benchmark_app"))
    if not Path(tool).exists():
        return None
    # benchmark_app refuses -nthreads with a hint: its latency hint takes the physical cores, which is
    # edgexfer's default too (pass --threads only to match a machine where they differ).
    command = [tool, "-m", str(xml), "-d", "CPU", "-hint", "latency", "-t", str(int(max(seconds, 1))),
               "-shape", "[" + ",".join(str(d) for d in shape) + "]"]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    match = re.search(r"Median:\s+([0-9.]+)\s*ms", out)
    if not match:
        raise SystemExit(f"no 'Median:' line in benchmark_app's output:\n{out[-2000:]}")
    return float(match.group(1))


def openvino_rows(xml: Path, batch: int, threads: int, seconds: float, repeat: int) -> Dict[str, List[float]]:
    """benchmark_app, a plain OpenVINO loop and edgexfer's runner, each ``repeat`` times in turn."""
    import openvino as ov

    from edgexfer.backends.base import get_backend
    from edgexfer.backends.openvino import inference_precision
    from edgexfer.backends.sidecar import read_sidecar

    precision = read_sidecar(xml).get("precision", "fp32")
    core = ov.Core()
    compiled = core.compile_model(str(xml), "CPU", {
        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
        "INFERENCE_PRECISION_HINT": inference_precision(precision)})
    port = compiled.inputs[0]
    dims = [d.get_length() if d.is_static else batch for d in port.get_partial_shape()]
    dtype = np.uint8 if port.get_element_type().get_type_name() == "u8" else np.float32
    array = np.random.default_rng(0).integers(0, 255, dims).astype(dtype)
    request = compiled.create_infer_request()

    def plain() -> object:
        request.infer({0: array}, share_inputs=True, share_outputs=True)
        return request.get_output_tensor(0).data

    times: Dict[str, List[float]] = {"benchmark_app": [], "plain loop": [], "edgexfer": []}
    with get_backend("openvino").load(xml, {"threads": threads}) as runner:
        for _ in range(repeat):
            vendor = benchmark_app_ms(xml, seconds, dims)
            if vendor is not None:
                times["benchmark_app"].append(vendor)
            times["plain loop"].append(p50_ms(plain, seconds))
            times["edgexfer"].append(p50_ms(lambda: runner.infer(array), seconds))
    return times


def onnxruntime_rows(onnx: Path, batch: int, threads: int, seconds: float, repeat: int) -> Dict[str, List[float]]:
    """A plain ``session.run`` loop and edgexfer's ONNX Runtime runner, each ``repeat`` times in turn."""
    import onnxruntime as ort

    from edgexfer.backends.base import get_backend

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
    meta = session.get_inputs()[0]
    dims = [d if isinstance(d, int) else batch for d in meta.shape]
    dtype = np.uint8 if "uint8" in meta.type else np.float32
    array = np.random.default_rng(0).integers(0, 255, dims).astype(dtype)
    feed = {meta.name: array}
    times: Dict[str, List[float]] = {"plain loop": [], "edgexfer": []}
    with get_backend("onnxruntime").load(onnx, {"threads": threads}) as runner:
        for _ in range(repeat):
            times["plain loop"].append(p50_ms(lambda: session.run(None, feed), seconds))
            times["edgexfer"].append(p50_ms(lambda: runner.infer(array), seconds))
    return times


def print_table(runtime: str, artifact: Path, times: Dict[str, List[float]]) -> None:
    """One Markdown row per artifact: medians over the repeats, ratio to the vendor, host overhead."""
    median = {name: float(np.median(values)) for name, values in times.items() if values}
    vendor = median.get("benchmark_app", median["plain loop"])
    vendor_name = "benchmark_app" if "benchmark_app" in median else "plain loop"
    columns = " | ".join(f"{median[name]:.3f}" for name in times if name in median)
    spread = "; ".join(f"{name} " + "/".join(f"{v:.2f}" for v in values) for name, values in times.items())
    print(f"| {runtime} | {artifact.name} | {columns} | {median['edgexfer'] / vendor:.3f}x {vendor_name} | "
          f"{(median['edgexfer'] - median['plain loop']) * 1e3:+.0f} us | {spread} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--xml", type=Path, help="an OpenVINO IR built by edgexfer (with its sidecar)")
    parser.add_argument("--onnx", type=Path, help="an ONNX model for ONNX Runtime")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="default: physical cores")
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from edgexfer.hardware import physical_cores

    threads = args.threads or physical_cores()
    print(f"batch {args.batch}, {threads} threads, {args.repeat} repeats of {args.seconds:g} s each, "
          f"started {time.strftime('%H:%M:%S')}; medians in ms")
    if args.xml:
        print("\n| runtime | artifact | benchmark_app | plain loop | edgexfer | edgexfer / vendor | "
              "host overhead | every repeat (ms) |\n|---|---|---|---|---|---|---|---|")
        print_table("OpenVINO", args.xml, openvino_rows(args.xml, args.batch, threads, args.seconds,
                                                        args.repeat))
    if args.onnx:
        print("\n| runtime | artifact | plain loop | edgexfer | edgexfer / vendor | host overhead | "
              "every repeat (ms) |\n|---|---|---|---|---|---|---|")
        print_table("ONNX Runtime", args.onnx, onnxruntime_rows(args.onnx, args.batch, threads, args.seconds,
                                                                args.repeat))


if __name__ == "__main__":
    main()
