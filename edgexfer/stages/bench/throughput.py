"""``bench --mode throughput``: images/s with several requests in flight, model alone and pipelined.

- ``throughput``: the same input batch fed through :meth:`Runner.infer_stream` with ``in_flight``
  requests (OpenVINO: asynchronous requests on a THROUGHPUT-compiled model; ONNX Runtime: concurrent
  runs of one session; others: one after another) for a fixed time;
- ``throughput_sequential``: the same with one request at a time (what the latency rows imply);
- ``pipelined``: image files -> decode and preprocess on worker threads (the predict pipeline) ->
  ``infer_stream`` -> top-5, for the same time: the end-to-end throughput a folder of photos gets.

Each is measured ``config.rounds`` times, every target in turn (round-robin), and the median kept, so
background load hits every target alike.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import numpy as np


def _timed(stream: Callable[[float], Iterator[np.ndarray]], seconds: float) -> Dict[str, float]:
    """Run a stream of logits until ``seconds`` have passed; images/s over the whole stream."""
    start = time.perf_counter()
    deadline = start + seconds
    images = batches = 0
    for logits in stream(deadline):
        images += len(logits)
        batches += 1
    elapsed = time.perf_counter() - start
    return {"images_per_s": images / elapsed, "images": images, "batches": batches, "seconds": elapsed}


def _until(deadline: float, items: Iterator[Any]) -> Iterator[Any]:
    """``items`` until the clock passes ``deadline``."""
    for item in items:
        if time.perf_counter() >= deadline:
            return
        yield item


def model_stream(runner: Any, array: np.ndarray, in_flight: int) -> Callable[[float], Iterator[np.ndarray]]:
    """The same batch, again and again, through ``infer_stream`` with ``in_flight`` requests."""
    return lambda deadline: runner.infer_stream(_until(deadline, itertools.repeat(array)), in_flight)


def pipelined_stream(runner: Any, preprocess: Any, photos: List[Path], batch: int, in_flight: int,
                     workers: int, frame: Any = None) -> Callable[[float], Iterator[np.ndarray]]:
    """Photo files (cycling) through predict's pipeline (:func:`edgexfer.stream.pipelined`: decode on
    ``workers`` threads, batches through ``infer_stream``), top-5 taken."""
    from edgexfer.metrics import topk_indices
    from edgexfer.stream import file_row, pipelined

    def prepare(path: Path) -> np.ndarray:
        return file_row(path, preprocess, frame, runner.input_dtype, runner.input_layout)

    def stream(deadline: float) -> Iterator[np.ndarray]:
        photos_until = _until(deadline, itertools.cycle(photos))
        for _, logits in pipelined(runner, prepare, photos_until, batch, workers, in_flight):
            topk_indices(logits, 5)
            yield logits

    return stream


def measure_throughput(loaded: List[Any], batch: int, pixels: np.ndarray, photos: List[Path],
                       config: Any, rows: List[Dict[str, Any]]) -> None:
    """Add ``throughput``, ``throughput_sequential`` and (with end-to-end on) ``pipelined`` to the
    rows (keyed by index, one per (target, runner) in ``loaded``)."""
    from edgexfer.stages.bench.inputs import frame_batch, input_batch, target_photos

    workers = config.decode_workers or min(4, os.cpu_count() or 1)
    seconds = max(config.min_time_s / config.rounds, 0.2)
    streams: Dict[Any, Callable[[float], Iterator[np.ndarray]]] = {}
    in_flight: Dict[int, int] = {}
    for index, (target, runner) in loaded:
        files = target_photos(target, photos)
        if target.frame is not None:
            array = frame_batch(files, target.frame, batch)
        else:
            array = input_batch(pixels[:batch], runner, target.preprocess)
        in_flight[index] = config.in_flight or runner.default_in_flight()
        streams[(index, "throughput")] = model_stream(runner, array, in_flight[index])
        streams[(index, "throughput_sequential")] = model_stream(runner, array, 1)
        if config.end_to_end:
            streams[(index, "pipelined")] = pipelined_stream(runner, target.preprocess, files, batch,
                                                             in_flight[index], workers, target.frame)
    for stream in streams.values():  # warm-up: compile the throughput models, fill the caches
        _timed(stream, min(0.3, seconds))
    samples: Dict[Any, List[Dict[str, float]]] = {key: [] for key in streams}
    for _round in range(config.rounds):
        for key, stream in streams.items():
            samples[key].append(_timed(stream, seconds))
    for (index, what), runs in samples.items():
        best = sorted(runs, key=lambda r: r["images_per_s"])[len(runs) // 2]  # the median round
        rows[index][what] = {
            "images_per_s": round(best["images_per_s"], 2),
            "in_flight": 1 if what == "throughput_sequential" else in_flight[index],
            **({"decode_workers": workers} if what == "pipelined" else {}),
            "rounds": [round(r["images_per_s"], 2) for r in runs],
        }
    for index in in_flight:
        row = rows[index]
        if "pipelined" in row:
            row["pipelined_ratio"] = row["pipelined"]["images_per_s"] / row["throughput"]["images_per_s"]
