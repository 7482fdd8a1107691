"""The bench stage: a latency matrix of models x backends x precisions x batch sizes on this machine.

For each model (random weights unless a run directory is given: latency does not depend on the
weights' values) it prepares a run directory through the real stages -- checkpoint, export (float,
uint8-input and INT8 QDQ with calibration images), build per backend -- then measures every artifact
two ways on the same input pixels:

- **model alone**: ``runner.infer`` on a prepared batch (warm-up, then enough timed calls for stable
  percentiles; see :mod:`edgexfer.timing`);
- **end to end**: image files -> decode (PIL) -> resize/crop -> the runner's input format -> infer ->
  top-5, one call per batch.

Threads are pinned to ``threads`` (default: physical cores) in every runtime. Results go to
``<out_dir>/<machine>.json`` with a Markdown table and a PNG chart (see :mod:`edgexfer.report`).
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from edgexfer.errors import ConfigError, EdgexferError

log = logging.getLogger(__name__)

BENCH_SCHEMA_VERSION = 1
DEFAULT_MODELS = ("resnet18", "mobilenet_v3_large", "efficientnet_b0")
# Size of the synthetic photos for the end-to-end path: ImageNet's typical 500x375 JPEG.
E2E_IMAGE_SIZE = (500, 375)
E2E_IMAGES = 16


@dataclass(frozen=True)
class BenchConfig:
    """Options of ``edgexfer bench``. ``backends=None`` means every backend available here."""

    models: Tuple[str, ...] = DEFAULT_MODELS
    size: int = 224
    batch_sizes: Tuple[int, ...] = (1, 8)
    backends: Optional[Tuple[str, ...]] = None
    precisions: Tuple[str, ...] = ("fp32", "fp16", "int8")
    run_dir: Optional[Path] = None
    work_dir: Path = Path("runs/bench")
    out_dir: Path = Path("benchmarks/results")
    machine_name: Optional[str] = None
    threads: Optional[int] = None
    end_to_end: bool = True
    uint8_input: bool = True
    calibration: Path = Path("calibration/fashion-mnist")
    calibration_images: int = 64
    warmup: int = 10
    min_iterations: int = 30
    min_time_s: float = 1.0
    max_time_s: float = 4.5
    rounds: int = 3
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("models", "batch_sizes", "precisions"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.backends is not None:
            object.__setattr__(self, "backends", tuple(self.backends))
        for name in ("run_dir", "work_dir", "out_dir", "calibration"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        if not self.models and self.run_dir is None:
            raise ConfigError("bench needs at least one --model (or --run RUN_DIR)")
        if not self.batch_sizes or any(int(b) < 1 for b in self.batch_sizes):
            raise ConfigError(f"batch sizes must be integers >= 1, got {list(self.batch_sizes)}")
        from edgexfer.backends.base import BACKENDS, PRECISIONS

        for precision in self.precisions:
            if precision not in PRECISIONS:
                raise ConfigError(f"unknown precision '{precision}'; choose from {', '.join(PRECISIONS)}")
        for backend in self.backends or ():
            if backend not in BACKENDS:
                raise ConfigError(f"unknown backend '{backend}'; choose from {', '.join(BACKENDS)}")
        if self.size < 32:
            raise ConfigError(f"bench input size must be >= 32, got {self.size}")
        if self.rounds < 1:
            raise ConfigError(f"--rounds must be >= 1, got {self.rounds}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.threads}")
        # Checked here, before any model is exported: the timing loop would only fail after that work.
        if not self.min_time_s > 0:
            raise ConfigError(f"--min-time must be > 0 seconds, got {self.min_time_s}")
        if self.min_iterations < 1 or self.warmup < 0:
            raise ConfigError(f"--min-iterations must be >= 1 and warmup >= 0, got {self.min_iterations} "
                              f"and {self.warmup}")


@dataclass
class BenchResult:
    """Where the results went and the measured rows."""

    json_path: Path
    markdown_path: Path
    plot_path: Optional[Path]
    data: Dict[str, Any] = field(repr=False, default_factory=dict)


# ---- machine -------------------------------------------------------------------------------------
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


def machine_facts(threads: int) -> Dict[str, Any]:
    """hardware.machine_record() plus the threads used and library versions (what a number depends on)."""
    from edgexfer.hardware import machine_record
    from edgexfer.manifest import tool_versions

    record = machine_record()
    record["threads_used"] = threads
    record["usable_cpus"] = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    )
    record["load_average_start"] = _load_average()
    record["versions"] = tool_versions()
    return record


def busy_warning(machine: Dict[str, Any]) -> List[str]:
    """A warning line when other processes competed for the CPUs while measuring.

    The 1-minute load average before the bench started is other processes only; at the end it also
    holds the bench's own threads, so the threshold there is higher.
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


def _load_average() -> Optional[float]:
    """The 1-minute load average (None where the OS has none): shows whether the numbers were contended."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


# ---- inputs --------------------------------------------------------------------------------------
def synthetic_photos(folder: Path, count: int = E2E_IMAGES, seed: int = 0) -> List[Path]:
    """Deterministic 500x375 JPEGs with smooth content (compress like photos, not like noise)."""
    from PIL import Image

    from edgexfer.fsutil import atomic_path

    folder.mkdir(parents=True, exist_ok=True)
    width, height = E2E_IMAGE_SIZE
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        path = folder / f"photo_{index:02d}.jpg"
        paths.append(path)
        if path.exists():
            continue
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        phase = rng.uniform(0, 6.28, size=3)
        freq = rng.uniform(0.005, 0.03, size=3)
        pixels = np.stack(
            [127 + 100 * np.sin(freq[c] * (xx + yy * (c + 1)) + phase[c]) for c in range(3)], -1
        )
        pixels += rng.normal(0, 12, size=pixels.shape)
        with atomic_path(path) as tmp:
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(tmp, format="JPEG", quality=90)
    return paths


def input_batch(pixels: np.ndarray, runner: Any, preprocess: Any) -> np.ndarray:
    """The shared uint8 NCHW pixels in ``runner``'s input format (uint8 NCHW/NHWC or normalised float)."""
    layout = getattr(runner, "input_layout", "NCHW")
    if np.dtype(getattr(runner, "input_dtype", np.float32)) == np.uint8:
        return np.ascontiguousarray(pixels.transpose(0, 2, 3, 1) if layout == "NHWC" else pixels)
    mean = np.asarray(preprocess.mean, dtype=np.float32)[None, :, None, None]
    std = np.asarray(preprocess.std, dtype=np.float32)[None, :, None, None]
    array = (pixels.astype(np.float32) / 255.0 - mean) / std
    return np.ascontiguousarray(array.transpose(0, 2, 3, 1) if layout == "NHWC" else array)


def host_call(runner: Any, preprocess: Any, paths: List[Path], batch: int) -> Any:
    """The host side of one end-to-end batch alone: decode and preprocess, no inference."""
    from edgexfer.preprocess import load_image

    uint8 = np.dtype(getattr(runner, "input_dtype", np.float32)) == np.uint8
    layout = getattr(runner, "input_layout", "NCHW")
    position = [0]

    def call() -> np.ndarray:
        images = []
        for _ in range(batch):
            image = load_image(paths[position[0] % len(paths)])
            position[0] += 1
            images.append(preprocess.to_uint8(image, layout) if uint8 else preprocess.to_array(image))
        return np.stack(images)

    return call


def end_to_end_call(runner: Any, preprocess: Any, paths: List[Path], batch: int) -> Any:
    """A function doing one end-to-end batch: decode, resize/crop, format, infer, top-5 (cycling files)."""
    from edgexfer.metrics import topk_indices

    host = host_call(runner, preprocess, paths, batch)

    def call() -> np.ndarray:
        return topk_indices(runner.infer(host()), 5)

    return call


# ---- measuring ----------------------------------------------------------------------
@dataclass(frozen=True)
class BenchTarget:
    """One thing to time: a model's artifact for a backend and precision (torch: the checkpoint)."""

    model: str
    backend: str
    precision: str
    path: Path
    preprocess: Any
    artifact: str


def _timing_round(config: BenchConfig, first: bool) -> Any:
    """One round's share of the timing budget (the warm-up is paid in the first round only)."""
    from edgexfer.timing import TimingConfig

    rounds = config.rounds
    return TimingConfig(
        warmup=config.warmup if first else 2,
        warmup_time_s=2.0 if first else 0.3,
        min_iterations=max(1, -(-config.min_iterations // rounds)),
        min_time_s=config.min_time_s / rounds,
        max_time_s=max(config.max_time_s / rounds, 0.05),
    )


def _load_all(
    targets: List[BenchTarget], stack: Any, threads: int
) -> Tuple[List[Tuple[BenchTarget, Any]], List[Dict[str, Any]]]:
    """Load every target's runner into ``stack``; a target that fails becomes an error row."""
    from edgexfer.backends.base import get_backend

    loaded, errors = [], []
    for target in targets:
        try:
            backend = get_backend(target.backend)
            backend.require_available()
            loaded.append((target, stack.enter_context(backend.load(target.path, {"threads": threads}))))
        except Exception as exc:
            message = str(exc) if isinstance(exc, EdgexferError) else f"{type(exc).__name__}: {exc}"
            errors.append(
                {
                    "model": target.model,
                    "backend": target.backend,
                    "precision": target.precision,
                    "artifact": target.artifact,
                    "batch": 0,
                    "status": "error",
                    "error": message.splitlines()[0] if message else type(exc).__name__,
                }
            )
    return loaded, errors


def measure_model(
    targets: List[BenchTarget], pixels: np.ndarray, photos: List[Path], config: BenchConfig, threads: int
) -> List[Dict[str, Any]]:
    """Rows for every target and batch size of one model: model alone, host preprocessing, end to end.

    All of a model's runners stay loaded and are timed round-robin in ``config.rounds`` rounds, so a
    change in background load hits every backend alike and the ratios stay fair.
    """
    from contextlib import ExitStack

    from edgexfer.metrics import latency_stats
    from edgexfer.timing import measure

    with ExitStack() as stack:
        loaded, rows = _load_all(targets, stack, threads)
        for batch in config.batch_sizes:
            jobs: List[Tuple[Dict[str, Any], str, Any]] = []
            for target, runner in loaded:
                row = {
                    "model": target.model,
                    "backend": target.backend,
                    "precision": target.precision,
                    "artifact": target.artifact,
                    "path": str(target.path),
                    "batch": int(batch),
                    "input": f"{np.dtype(runner.input_dtype).name} {runner.input_layout}",
                    "runner": runner.describe(),
                    "status": "ok",
                }
                rows.append(row)
                max_batch = getattr(runner, "max_batch", None)
                if max_batch and batch > int(max_batch):
                    row.update(status="skipped", error=f"artifact's max batch is {max_batch}")
                    continue
                array = input_batch(pixels[:batch], runner, target.preprocess)
                jobs.append((row, "latency", lambda r=runner, a=array: r.infer(a)))
                if config.end_to_end:
                    jobs.append((row, "host", host_call(runner, target.preprocess, photos, batch)))
                    jobs.append((row, "e2e", end_to_end_call(runner, target.preprocess, photos, batch)))
            samples: Dict[Tuple[int, str], List[np.ndarray]] = {}
            for round_index in range(config.rounds):
                timing = _timing_round(config, round_index == 0)
                for row, what, call in jobs:
                    if row["status"] != "ok":
                        continue
                    try:
                        samples.setdefault((id(row), what), []).append(measure(call, timing))
                    except Exception as exc:
                        row.update(status="error", error=f"{type(exc).__name__}: {exc}".splitlines()[0])
            for row, what, _ in jobs:
                if row["status"] == "ok":
                    row[what] = latency_stats(np.concatenate(samples[(id(row), what)]), batch)
            for row, _, _ in jobs:
                if row["status"] == "ok" and "e2e" in row and "e2e_ratio" not in row:
                    row["e2e_ratio"] = row["e2e"]["p50_ms"] / row["latency"]["p50_ms"]
                    log.info(
                        "%s %s %s batch %d: p50 %.2f ms, e2e %.2f ms",
                        row["model"],
                        row["backend"],
                        row["precision"],
                        batch,
                        row["latency"]["p50_ms"],
                        row["e2e"]["p50_ms"],
                    )
    return rows


def add_speedups(rows: List[Dict[str, Any]]) -> None:
    """``speedup_vs_torch``: torch fp32 p50 / this row's p50 for the same model and batch."""
    torch_p50 = {
        (r["model"], r["batch"]): r["latency"]["p50_ms"]
        for r in rows
        if r.get("status") == "ok" and r["backend"] == "torch" and r["precision"] == "fp32"
    }
    for row in rows:
        key = (row["model"], row.get("batch"))
        if row.get("status") == "ok" and key in torch_p50:
            row["speedup_vs_torch"] = torch_p50[key] / row["latency"]["p50_ms"]


def headlines(rows: List[Dict[str, Any]]) -> List[str]:
    """The two targets of the issue, per model at batch 1: INT8 speedup over torch and e2e overhead."""
    lines = []
    models = sorted({r["model"] for r in rows}, key=[r["model"] for r in rows].index)
    for model in models:
        ok = [r for r in rows if r["model"] == model and r.get("status") == "ok" and r["batch"] == 1]
        torch_rows = [r for r in ok if r["backend"] == "torch"]
        int8 = sorted((r for r in ok if r["precision"] == "int8"), key=lambda r: r["latency"]["p50_ms"])
        if torch_rows and int8:
            best, ref = int8[0], torch_rows[0]
            speedup = ref["latency"]["p50_ms"] / best["latency"]["p50_ms"]
            lines.append(
                f"{model} batch 1: fastest INT8 is {best['backend']} at {best['latency']['p50_ms']:.2f} ms "
                f"vs torch eager fp32 {ref['latency']['p50_ms']:.2f} ms: {speedup:.2f}x "
                f"(target >= 4x: {'met' if speedup >= 4 else 'NOT met'})"
            )
            if best.get("e2e"):
                ratio = best["e2e_ratio"]
                lines.append(
                    f"{model} batch 1 {best['backend']} int8 ({best['input']} input): end to end "
                    f"{best['e2e']['p50_ms']:.2f} ms vs model alone {best['latency']['p50_ms']:.2f} ms: "
                    f"{ratio:.2f}x (target <= 1.3x: {'met' if ratio <= 1.3 else 'NOT met'})"
                )
    return lines


# ---- the stage -----------------------------------------------------------------------------------
def selected_backends(config: BenchConfig) -> Tuple[List[str], List[Dict[str, Any]]]:
    """(backends to bench, skipped rows with reasons): every available one unless --backend was given."""
    from edgexfer.backends.base import available_backends

    chosen, skipped = [], []
    for name, ok, reason in available_backends(config.backends):
        if ok:
            chosen.append(name)
        else:
            skipped.append({"backend": name, "reason": reason})
    if config.backends and skipped:
        from edgexfer.errors import BackendUnavailableError

        first = skipped[0]
        raise BackendUnavailableError(f"backend '{first['backend']}' is not usable here: {first['reason']}")
    return chosen, skipped


def run_bench(config: BenchConfig) -> BenchResult:
    """Measure the matrix and write ``<machine>.json``, ``<machine>.md`` and ``<machine>.png``."""
    from tqdm import tqdm

    from edgexfer import __version__
    from edgexfer.config import to_dict
    from edgexfer.hardware import physical_cores
    from edgexfer.manifest import now_iso
    from edgexfer.stages import bench_prepare

    started, clock = now_iso(), time.perf_counter()
    threads = int(config.threads or physical_cores())
    backends, skipped = selected_backends(config)
    machine = machine_facts(threads)
    name = config.machine_name or machine_slug(machine)
    photos = synthetic_photos(config.work_dir / "e2e-photos", seed=config.seed)
    if config.run_dir is not None:
        plans = [bench_prepare.run_targets(config.run_dir, backends, config)]
    else:
        plans = [
            bench_prepare.model_targets(model, backends, config)
            for model in tqdm(config.models, desc="prepare models", unit="model", disable=not config.progress)
        ]
    rows: List[Dict[str, Any]] = []
    for targets, not_built in plans:
        skipped.extend(not_built)
        if not targets:
            continue
        preprocess = targets[0].preprocess
        from edgexfer.preprocess import load_image

        # The same pixels for every backend of this model: the first photos, resized and cropped once.
        pixels = np.stack(
            [
                preprocess.to_uint8(load_image(photos[i % len(photos)]), "NCHW")
                for i in range(max(config.batch_sizes))
            ]
        )
        log.info(
            "timing %s: %d artifacts x %d batch sizes",
            targets[0].model,
            len(targets),
            len(config.batch_sizes),
        )
        rows.extend(measure_model(targets, pixels, photos, config, threads))
    add_speedups(rows)
    machine["load_average_end"] = _load_average()
    notes = headlines(rows) + busy_warning(machine)
    weights = (
        "random initialisation (latency does not depend on weight values; accuracy is meaningless)"
        if config.run_dir is None
        else f"trained weights of run {config.run_dir}"
    )
    data = {
        "schema_version": BENCH_SCHEMA_VERSION,
        "kind": "edgexfer-bench",
        "created": started,
        "edgexfer_version": __version__,
        "machine_name": name,
        "machine": machine,
        "threads": threads,
        "versions": machine["versions"],
        "config": to_dict(config),
        "weights_note": weights,
        "e2e_images": {"count": len(photos), "size": list(E2E_IMAGE_SIZE), "format": "JPEG q90"},
        "results": rows,
        "skipped": skipped,
        "headlines": notes,
        "elapsed_s": time.perf_counter() - clock,
    }
    return write_bench_outputs(config, data, name)


def write_bench_outputs(config: BenchConfig, data: Dict[str, Any], name: str) -> BenchResult:
    """JSON, Markdown and PNG into the output folder (a run's ``bench/`` folder, recorded, for --run)."""
    from edgexfer import report
    from edgexfer.fsutil import atomic_write_json, atomic_write_text

    out = config.out_dir if config.run_dir is None else config.run_dir / "bench"
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    plot_path = report.bench_plot(data, out / f"{name}.png")
    data["plot"] = plot_path.name if plot_path else None
    atomic_write_json(json_path, data)
    markdown = report.bench_markdown(data)
    atomic_write_text(md_path, markdown)
    if config.run_dir is not None:
        from edgexfer.manifest import Manifest

        with Manifest.update(config.run_dir) as manifest:
            manifest.add_artifact(
                "bench_json", json_path, kind="report", stage="bench", inputs=["checkpoint"]
            )
            manifest.add_artifact(
                "bench_report", md_path, kind="report", stage="bench", inputs=["checkpoint"]
            )
            manifest.record_stage("bench", data["config"], metrics={"rows": len(data["results"])})
    return BenchResult(json_path=json_path, markdown_path=md_path, plot_path=plot_path, data=data)
