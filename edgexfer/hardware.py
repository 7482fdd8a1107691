"""Facts about this machine: CPU cores and features, NVIDIA GPU, Jetson module, JetPack/L4T, power
mode.

Used by ``edgexfer doctor``, by the backends (threads = physical cores, engine sidecars) and by the
benchmarks (what the numbers were measured on, under which name, and how busy the machine was).
Every reader is pure on the text it is given (``parse_*``) and has a thin function that reads the
real file or command, so the logic is tested without the hardware. Nothing here imports torch,
tensorrt or CUDA libraries unless asked.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

# CPU flags that decide which INT8 kernels a runtime can use on x86 and Arm.
CPU_FEATURES = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_int8",
    "amx_bf16",
    "asimddp",
    "i8mm",
    "sve",
)

# L4T (Linux for Tegra) release -> JetPack release, from NVIDIA's JetPack archive pages. The L4T
# release is what a Jetson reports (/etc/nv_tegra_release); JetPack is what people talk about.
L4T_TO_JETPACK: Dict[str, str] = {
    "32.7.1": "4.6.1",
    "32.7.2": "4.6.2",
    "32.7.3": "4.6.3",
    "32.7.4": "4.6.4",
    "32.7.5": "4.6.5",
    "32.7.6": "4.6.6",
    "35.1.0": "5.0.2",
    "35.2.1": "5.1",
    "35.3.1": "5.1.1",
    "35.4.1": "5.1.2",
    "35.5.0": "5.1.3",
    "35.6.0": "5.1.4",
    "35.6.1": "5.1.5",
    "35.6.2": "5.1.5",
    "36.2.0": "6.0 DP",
    "36.3.0": "6.0",
    "36.4.0": "6.1",
    "36.4.3": "6.2",
    "36.4.4": "6.2.1",
    "38.2.0": "7.0",
}


# ---- CPU -----------------------------------------------------------------------------------------
def parse_cpuinfo(text: str) -> Dict[str, Any]:
    """Model name, flags and physical core count from the text of ``/proc/cpuinfo``.

    Physical cores are the distinct (physical id, core id) pairs; where the kernel does not report
    them (Arm, some VMs) every processor entry counts as a core.
    """
    flags: set = set()
    model = ""
    cores: set = set()
    processors = 0
    current: Dict[str, str] = {}

    def close(entry: Dict[str, str]) -> None:
        if "core id" in entry:
            cores.add((entry.get("physical id", "0"), entry["core id"]))

    for line in text.splitlines() + [""]:
        if not line.strip():
            if current:
                close(current)
            current = {}
            continue
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        current[key] = value
        if key == "processor":
            processors += 1
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
        elif key in ("model name", "Model", "cpu model", "Hardware") and not model:
            model = value
    physical = len(cores) if cores else processors
    return {
        "model": model,
        "flags": sorted(flags),
        "physical_cores": physical or None,
        "logical_cpus": processors or None,
    }


@functools.lru_cache(maxsize=1)
def cpu_info() -> Dict[str, Any]:
    """CPU model, features edgexfer cares about, physical and logical core counts, architecture."""
    try:
        parsed = parse_cpuinfo(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace"))
    except OSError:
        parsed = {"model": platform.processor(), "flags": [], "physical_cores": None, "logical_cpus": None}
    logical = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else logical
    physical = parsed["physical_cores"] or logical
    # A container limited to fewer CPUs than the host has must not spawn a thread per host core.
    physical = max(1, min(physical, usable))
    flags = set(parsed["flags"])
    return {
        "model": parsed["model"] or platform.processor() or "unknown",
        "arch": platform.machine(),
        "physical_cores": physical,
        "logical_cpus": logical,
        "usable_cpus": usable,
        "features": [f for f in CPU_FEATURES if f in flags],
    }


def physical_cores() -> int:
    """Physical cores usable by this process: the thread count runtimes should use for one stream."""
    return int(cpu_info()["physical_cores"])


def int8_cpu_summary(features: List[str]) -> str:
    """One line on what the CPU offers INT8 inference (VNNI/AMX are what make x86 INT8 fast)."""
    have = set(features)
    if "amx_int8" in have:
        return "AMX-INT8 and AVX-512 VNNI: fast INT8"
    if "avx512_vnni" in have or "avx_vnni" in have:
        return "VNNI: fast INT8 (U8 activations x S8 weights)"
    if "avx512bw" in have or "avx2" in have:
        return "no VNNI: INT8 works but gains less over FP32"
    if "asimddp" in have:
        return "Arm dot-product: INT8 supported"
    return "no SIMD INT8 instructions detected"


# ---- NVIDIA GPU ----------------------------------------------------------------------------------
def parse_nvidia_smi(text: str) -> List[Dict[str, str]]:
    """Rows of ``nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total`` in CSV, no header."""
    gpus = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 2 or not parts[0]:
            continue
        gpus.append(
            {
                "name": parts[0],
                "driver": parts[1],
                "compute_capability": parts[2] if len(parts) > 2 else "",
                "memory": parts[3] if len(parts) > 3 else "",
            }
        )
    return gpus


def _run(command: List[str], timeout: float = 10.0) -> Optional[str]:
    """stdout of a command, or None when it is missing, fails or hangs."""
    if shutil.which(command[0]) is None:
        return None
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def nvidia_gpus() -> List[Dict[str, str]]:
    """The NVIDIA GPUs nvidia-smi reports (empty on machines without one, and on Jetson)."""
    out = _run(
        ["nvidia-smi", "--query-gpu=name,driver_version,compute_cap,memory.total", "--format=csv,noheader"]
    )
    return parse_nvidia_smi(out) if out else []


def cuda_driver_version() -> Optional[str]:
    """The CUDA driver API version (e.g. '12.4') via libcuda's cuDriverGetVersion, or None."""
    import ctypes

    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        version = ctypes.c_int(0)
        if lib.cuDriverGetVersion(ctypes.byref(version)) == 0 and version.value:
            return f"{version.value // 1000}.{(version.value % 1000) // 10}"
    return None


# ---- Jetson ----------------------------------------------------------------------------------------
def parse_l4t_release(text: str) -> Optional[str]:
    """The L4T release ('35.4.1') from ``/etc/nv_tegra_release`` ('# R35 (release), REVISION: 4.1, ...')."""
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    if not match:
        return None
    revision = match.group(2).rstrip(".")
    return f"{match.group(1)}.{revision}" if revision.count(".") else f"{match.group(1)}.{revision}.0"


def jetpack_for_l4t(l4t: Optional[str]) -> Optional[str]:
    """The JetPack release of an L4T release, or a best guess by major version, or None."""
    if not l4t:
        return None
    if l4t in L4T_TO_JETPACK:
        return L4T_TO_JETPACK[l4t]
    major = l4t.split(".")[0]
    family = {"32": "4.x", "35": "5.x", "36": "6.x", "38": "7.x"}.get(major)
    return f"{family} (L4T {l4t} not in edgexfer's table)" if family else None


def parse_nvpmodel(text: str) -> Optional[str]:
    """The power mode from ``nvpmodel -q`` output ('NV Power Mode: MAXN' + mode number)."""
    match = re.search(r"NV Power Mode:\s*(\S.*)", text)
    if not match:
        return None
    mode = match.group(1).strip()
    number = re.search(r"^\s*(\d+)\s*$", text[match.end() :], re.MULTILINE)
    return f"{mode} ({number.group(1)})" if number else mode


@functools.lru_cache(maxsize=1)
def jetson_info() -> Optional[Dict[str, Any]]:
    """Jetson module, L4T and JetPack releases, power mode, jetson_clocks state; None off a Jetson."""
    release_file = Path("/etc/nv_tegra_release")
    model_file = Path("/proc/device-tree/model")
    if not release_file.exists():
        return None
    l4t = parse_l4t_release(_read(release_file))
    model = _read(model_file).replace("\x00", "").strip() or "unknown Jetson"
    nvp = _run(["nvpmodel", "-q"])
    clocks = _run(["jetson_clocks", "--show"])
    return {
        "module": model,
        "l4t": l4t,
        "jetpack": jetpack_for_l4t(l4t),
        "power_mode": parse_nvpmodel(nvp) if nvp else None,
        "jetson_clocks": _clocks_state(clocks),
    }


def _clocks_state(text: Optional[str]) -> Optional[str]:
    """'on' when jetson_clocks pinned the clocks (MinFreq == MaxFreq on the CPUs), 'off', or None."""
    if not text:
        return None
    pairs = re.findall(r"MinFreq=(\d+)\s+MaxFreq=(\d+)", text)
    if not pairs:
        return None
    return "on" if all(lo == hi for lo, hi in pairs) else "off"


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


# ---- one record for sidecars and reports --------------------------------------------------------
def machine_record() -> Dict[str, Any]:
    """Everything edgexfer records about where an artifact was built or a number measured."""
    cpu = cpu_info()
    gpus = nvidia_gpus()
    record: Dict[str, Any] = {
        "hostname": platform.node(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "cpu": cpu["model"],
        "arch": cpu["arch"],
        "physical_cores": cpu["physical_cores"],
        "cpu_features": cpu["features"],
        "gpus": gpus,
        "cuda_driver": cuda_driver_version(),
    }
    jetson = jetson_info()
    if jetson:
        record["jetson"] = jetson
    return record


def gpu_summary() -> Tuple[bool, str]:
    """(has an NVIDIA GPU, one line describing it or why none was found)."""
    gpus = nvidia_gpus()
    if gpus:
        first = gpus[0]
        more = f" (+{len(gpus) - 1} more)" if len(gpus) > 1 else ""
        return True, f"{first['name']}, compute {first['compute_capability']}, driver {first['driver']}{more}"
    jetson = jetson_info()
    if jetson:
        return True, f"{jetson['module']} integrated GPU (L4T {jetson['l4t']})"
    if shutil.which("nvidia-smi") is None:
        return False, "no NVIDIA GPU found (nvidia-smi is not installed)"
    return False, "no NVIDIA GPU found (nvidia-smi lists none)"


# ---- the machine a measurement was taken on -----------------------------------------------------
def machine_slug(record: Dict[str, Any]) -> str:
    """A stable file name for this machine: CPU (or Jetson module / GPU) and core count."""
    if record.get("jetson"):
        base = record["jetson"].get("module", "jetson")
    elif record.get("gpus"):
        base = f"{record['cpu']}-{record['gpus'][0]['name']}"
    else:
        base = record.get("cpu", "cpu")
    base = re.sub(r"\((r|tm|c)\)", "", base, flags=re.IGNORECASE)
    base = re.sub(r"\b(processor|cpu|@.*)\b", "", base, flags=re.IGNORECASE)
    slug = re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-") or "machine"
    return f"{slug}-{record.get('physical_cores', 0)}c"


def measurement_record(threads: int) -> Dict[str, Any]:
    """:func:`machine_record` plus what a latency depends on besides: threads used, CPUs usable, the load
    before measuring and the library versions."""
    from edgexfer.provenance import tool_versions

    record = machine_record()
    record["threads_used"] = threads
    record["usable_cpus"] = cpu_info()["usable_cpus"]
    record["load_average_start"] = load_average()
    record["versions"] = tool_versions()
    return record


def load_average() -> Optional[float]:
    """The 1-minute load average (None where the OS has none): shows whether numbers were contended."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def busy_warning(machine: Dict[str, Any]) -> List[str]:
    """A warning line when other processes competed for the CPUs while measuring.

    The 1-minute load average before measuring is other processes only; at the end it also holds the
    measurement's own threads, so the threshold there is higher.
    """
    cpus = machine.get("usable_cpus") or 1
    start, end = machine.get("load_average_start"), machine.get("load_average_end")
    if (start is not None and start > 0.75 * cpus) or (end is not None and end > 1.5 * cpus):
        return [
            f"WARNING: the machine was busy (1-min load average {start} before, {end} after, on {cpus} "
            "CPUs): other processes competed for the cores, which inflates latencies (torch's OpenMP "
            "threads worst of all) and distorts ratios; rerun on an idle machine for numbers to publish"
        ]
    return []
