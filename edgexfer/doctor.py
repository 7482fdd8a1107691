"""What this machine has for edgexfer: library versions, usable backends (and why others are not),
CPU features, GPU, TensorRT, Jetson/JetPack facts, and hints that follow from them."""

from __future__ import annotations

import platform
import sys
from typing import Any, Dict, List

from edgexfer import __version__


def doctor_report() -> Dict[str, Any]:
    """Everything ``edgexfer doctor`` prints, as one JSON-safe dict."""
    from edgexfer import hardware
    from edgexfer.backends.base import available_backends
    from edgexfer.provenance import library_versions

    cpu = hardware.cpu_info()
    has_gpu, gpu_line = hardware.gpu_summary()
    report: Dict[str, Any] = {
        "edgexfer": __version__,
        "python": platform.python_version(),
        "executable": sys.executable,
        "os": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "libraries": library_versions(include_missing=True, import_tensorrt=True),
        "backends": [{"name": n, "usable": ok, "detail": why} for n, ok, why in available_backends()],
        "cpu": {**cpu, "int8": hardware.int8_cpu_summary(cpu["features"])},
        "gpu": {
            "present": has_gpu,
            "summary": gpu_line,
            "devices": hardware.nvidia_gpus(),
            "cuda_driver": hardware.cuda_driver_version(),
        },
        "jetson": hardware.jetson_info(),
    }
    report["hints"] = hints(report)
    return report


def hints(report: Dict[str, Any]) -> List[str]:
    """Actionable advice that follows from the facts (missing extras, Jetson clocks, venv setup)."""
    advice = []
    usable = {b["name"]: b["usable"] for b in report["backends"]}
    libraries = report["libraries"]
    if not usable.get("openvino") and report["cpu"]["arch"] in ("x86_64", "AMD64"):
        advice.append("pip install 'edgexfer[openvino]' for the second fast x86 CPU runtime")
    if report["gpu"]["present"] and not usable.get("tensorrt"):
        if report.get("jetson"):
            advice.append(
                "TensorRT on Jetson comes from JetPack: make the venv with --system-site-packages "
                "(make setup VENV_FLAGS=--system-site-packages)"
            )
        else:
            advice.append(
                "pip install 'edgexfer[tensorrt]' (tensorrt + cuda-python) to build engines for this GPU"
            )
    if libraries.get("onnxruntime") and libraries.get("onnxruntime-gpu"):
        advice.append("both onnxruntime and onnxruntime-gpu are installed; they shadow each other, keep one")
    jetson = report.get("jetson")
    if jetson:
        if jetson.get("power_mode") and "MAXN" not in str(jetson["power_mode"]).upper():
            advice.append(
                f"power mode is {jetson['power_mode']}; for benchmarks use 'sudo nvpmodel -m 0' (MAXN)"
            )
        if jetson.get("jetson_clocks") != "on":
            advice.append("run 'sudo jetson_clocks' before benchmarking so clocks do not scale mid-run")
    if (
        "avx512_vnni" not in report["cpu"]["features"]
        and "avx_vnni" not in report["cpu"]["features"]
        and report["cpu"]["arch"] in ("x86_64", "AMD64")
    ):
        advice.append("this CPU has no VNNI: INT8 on CPU will gain less over FP32 than published numbers")
    return advice


def format_report(report: Dict[str, Any]) -> str:
    """The human-readable text of ``edgexfer doctor``."""
    lines = [
        f"edgexfer {report['edgexfer']} on Python {report['python']} ({report['executable']})",
        f"OS: {report['os']}",
        "",
        "Libraries:",
    ]
    for name, version in report["libraries"].items():
        lines.append(f"  {name:<16} {version or '-'}")
    lines += ["", "Backends:"]
    for backend in report["backends"]:
        mark = "yes" if backend["usable"] else "no "
        lines.append(f"  [{mark}] {backend['name']:<12} {backend['detail']}")
    cpu = report["cpu"]
    lines += [
        "",
        f"CPU: {cpu['model']} ({cpu['arch']}), {cpu['physical_cores']} physical cores, "
        f"{cpu['usable_cpus']} usable CPUs",
        f"  features: {', '.join(cpu['features']) or 'none of interest'}",
        f"  INT8: {cpu['int8']}",
    ]
    gpu = report["gpu"]
    lines += ["", f"GPU: {gpu['summary']}"]
    if gpu["cuda_driver"]:
        lines.append(f"  CUDA driver API: {gpu['cuda_driver']}")
    jetson = report.get("jetson")
    if jetson:
        lines += [
            "",
            f"Jetson: {jetson['module']}",
            f"  L4T {jetson['l4t']}, JetPack {jetson['jetpack']}",
            f"  power mode: {jetson['power_mode'] or 'unknown (nvpmodel -q failed)'}",
            f"  jetson_clocks: {jetson['jetson_clocks'] or 'unknown'}",
        ]
    if report["hints"]:
        lines += ["", "Hints:"] + [f"  - {h}" for h in report["hints"]]
    return "\n".join(lines)
