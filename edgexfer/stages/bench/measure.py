"""Timing a model's targets: every runner loaded at once and timed interleaved, model alone, host
preprocessing and end to end, for each batch size; then the speed-ups over the float reference."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np

from edgexfer.errors import EdgexferError
from edgexfer.stages.bench.config import BenchConfig, BenchPlan, BenchTarget
from edgexfer.stages.bench.inputs import (
    end_to_end_call,
    frame_batch,
    host_call,
    input_batch,
    shared_pixels,
    target_photos,
)

log = logging.getLogger(__name__)


def measure_plans(config: BenchConfig, plans: Sequence[BenchPlan], photos: List[Path], threads: int
                  ) -> List[Dict[str, Any]]:
    """Rows for every plan's targets (one plan per model), with ``speedup_vs_torch`` added."""
    rows: List[Dict[str, Any]] = []
    for plan in plans:
        if not plan.targets:
            continue
        pixels = shared_pixels(photos, plan.targets[0].preprocess, max(config.batch_sizes))
        log.info("timing %s: %d artifacts x %d batch sizes", plan.targets[0].model, len(plan.targets),
                 len(config.batch_sizes))
        rows.extend(measure_model(plan.targets, pixels, photos, config, threads))
    add_speedups(rows)
    return rows


def timing_round(config: BenchConfig, index: int) -> Any:
    """Round ``index``'s share of the timing budget (the warm-up is paid in the first round only)."""
    from edgexfer.timing import TimingConfig

    rounds = config.rounds
    return TimingConfig(
        warmup=config.warmup if index == 0 else 2,
        warmup_time_s=2.0 if index == 0 else 0.3,
        min_iterations=max(1, -(-config.min_iterations // rounds)),
        min_time_s=config.min_time_s / rounds,
        max_time_s=max(config.max_time_s / rounds, 0.05),
    )


def _row(target: BenchTarget, batch: int, **facts: Any) -> Dict[str, Any]:
    return {"model": target.model, "backend": target.backend, "precision": target.precision,
            "artifact": target.artifact, "batch": int(batch), **facts}


def _load_all(targets: List[BenchTarget], stack: ExitStack, threads: int
              ) -> Tuple[List[Tuple[BenchTarget, Any]], List[Dict[str, Any]]]:
    """Load every target's runner into ``stack``; a target that fails becomes an error row."""
    from edgexfer.backends.base import get_backend

    loaded, errors = [], []
    for target in targets:
        try:
            backend = get_backend(target.backend)
            backend.require_available()
            loaded.append((target, stack.enter_context(backend.load(target.path, {"threads": threads}))))
        except Exception as exc:  # noqa: BLE001 - one broken artifact is a row, not the end of the bench
            message = str(exc) if isinstance(exc, EdgexferError) else f"{type(exc).__name__}: {exc}"
            errors.append(_row(target, 0, status="error",
                               error=message.splitlines()[0] if message else type(exc).__name__))
    return loaded, errors


def _jobs(loaded: List[Tuple[BenchTarget, Any]], batch: int, pixels: np.ndarray, photos: List[Path],
          config: BenchConfig, rows: List[Dict[str, Any]]) -> Dict[Tuple[int, str], Callable[[], Any]]:
    """The calls to time at one batch size, keyed by (row index, what); appends a row per target."""
    jobs: Dict[Tuple[int, str], Callable[[], Any]] = {}
    for target, runner in loaded:
        row = _row(target, batch, path=str(target.path), status="ok", runner=runner.describe(),
                   input=f"{np.dtype(runner.input_dtype).name} {runner.input_layout}")
        rows.append(row)
        max_batch = getattr(runner, "max_batch", None)  # TensorRT engines have an optimisation profile
        if max_batch and batch > int(max_batch):
            row.update(status="skipped", error=f"artifact's max batch is {max_batch}")
            continue
        files = target_photos(target, photos)
        if target.frame is not None:
            row["frame"] = target.frame.to_dict()
            row["input"] = f"uint8 {target.frame.text} {target.frame.channel_order} frame"
            array = frame_batch(files, target.frame, batch)
        else:
            array = input_batch(pixels[:batch], runner, target.preprocess)
        key = len(rows) - 1
        jobs[(key, "latency")] = lambda r=runner, a=array: r.infer(a)
        if config.end_to_end:
            jobs[(key, "host")] = host_call(runner, target.preprocess, files, batch, target.frame)
            jobs[(key, "e2e")] = end_to_end_call(runner, target.preprocess, files, batch, target.frame)
    return jobs


def measure_model(targets: List[BenchTarget], pixels: np.ndarray, photos: List[Path], config: BenchConfig,
                  threads: int) -> List[Dict[str, Any]]:
    """Rows for every target and batch size of one model: model alone, host preprocessing, end to end.

    All of a model's runners stay loaded and are timed round-robin in ``config.rounds`` rounds, so a
    change in background load hits every backend alike and the ratios stay fair.
    """
    from edgexfer.metrics import latency_stats
    from edgexfer.timing import measure_interleaved

    with ExitStack() as stack:
        loaded, rows = _load_all(targets, stack, threads)
        for batch in config.batch_sizes:
            first = len(rows)  # _jobs appends one row per loaded target, in order
            jobs = _jobs(loaded, batch, pixels, photos, config, rows)
            samples, errors = measure_interleaved(jobs, config.rounds, lambda i: timing_round(config, i))
            for (index, _), exc in errors.items():
                rows[index].update(status="error", error=f"{type(exc).__name__}: {exc}".splitlines()[0])
            for (index, what), seconds in samples.items():
                if rows[index]["status"] == "ok":
                    rows[index][what] = latency_stats(seconds, batch)
            if config.mode == "throughput":
                from edgexfer.stages.bench.throughput import measure_throughput

                measure_throughput([(first + i, pair) for i, pair in enumerate(loaded)
                                    if rows[first + i]["status"] == "ok"], batch, pixels, photos, config, rows)
            for index in sorted({index for index, _ in jobs}):
                row = rows[index]
                if row["status"] == "ok" and "e2e" in row:
                    row["e2e_ratio"] = row["e2e"]["p50_ms"] / row["latency"]["p50_ms"]
                    log.info("%s %s %s batch %d: p50 %.2f ms, e2e %.2f ms", row["model"], row["backend"],
                             row["precision"], batch, row["latency"]["p50_ms"], row["e2e"]["p50_ms"])
    return rows


def add_speedups(rows: List[Dict[str, Any]]) -> None:
    """``speedup_vs_torch``: the reference's p50 / this row's p50 for the same model and batch."""
    from edgexfer.backends.base import REFERENCE_BACKEND

    reference_p50 = {
        (r["model"], r["batch"]): r["latency"]["p50_ms"]
        for r in rows
        if r.get("status") == "ok" and r["backend"] == REFERENCE_BACKEND and r["precision"] == "fp32"
    }
    for row in rows:
        key = (row["model"], row.get("batch"))
        if row.get("status") == "ok" and key in reference_p50:
            row["speedup_vs_torch"] = reference_p50[key] / row["latency"]["p50_ms"]
