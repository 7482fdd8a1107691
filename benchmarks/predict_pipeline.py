#!/usr/bin/env python3
"""``predict``'s pipeline over camera-sized JPEGs against the model alone, side by side in one process.

Writes ``--count`` photo-like JPEGs (1920x1080 unless ``--size``; benchmarks/decode.py's generator), loads
the artifact once, and then, alternately ``--repeat`` times and each for ``--seconds``, with the same
inference threads:

- ``model alone, 1 in flight``: one batch of the real pixels again and again, one request at a time;
- ``model alone, N in flight``: the same batch through ``infer_stream`` with N requests in flight (the
  runtime's choice unless ``--in-flight``): the model's own throughput, the issue's yardstick;
- ``pipelined, workers 0, 1 in flight``: the files (cycling) through :func:`edgexfer.stream.pipelined`,
  predict's pipeline, decoding on the inference thread, one batch after another (edgexfer before it);
- ``pipelined, workers W, N in flight``: the same with W decode threads and N batches in flight, softmax
  and top-5 per batch as predict does: what ``predict FOLDER`` streams once its model is loaded;
- ``run_predict (load + all files)``: the whole stage once per repeat over the ``--count`` files, model
  load and compilation included (what one ``edgexfer predict`` command costs), for reference.

Per row: images/s (median of the repeats), the ratio to the model alone with N in flight (target >= 0.8
for the pipelined row), and the process CPU milliseconds per image (``time.process_time``, all threads).
On a machine whose cores the model already fills, decoding can only overlap inference by taking CPU from
it, so the pipelined ratio is bounded by model CPU / (model CPU + decode CPU) per image; the CPU column
shows both. The load average before and after is printed: on a shared machine, say so next to the figures.

Usage: python benchmarks/predict_pipeline.py ARTIFACT (.xml / .onnx with edgexfer metadata)
       [--count 32] [--batch 8] [--workers 2] [--threads 2] [--in-flight 0] [--repeat 3] [--seconds 3]
       [--size 1920x1080]
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import cpu_name, photo_like_jpeg  # noqa: E402  (the sibling benchmark's JPEG generator)


def timed(run: Callable[[], int]) -> Tuple[float, float]:
    """(images/s of wall time, CPU seconds per image) of ``run()``, which returns the images it did."""
    wall, cpu = time.perf_counter(), time.process_time()
    images = run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return images / wall, cpu / max(images, 1)


def model_alone(runner, array: np.ndarray, in_flight: int, seconds: float) -> int:
    """Images through ``infer_stream`` (the same batch, ``in_flight`` requests) for about ``seconds``."""
    deadline = time.perf_counter() + seconds

    def batches():
        for batch in itertools.repeat(array):
            if time.perf_counter() >= deadline:
                return
            yield batch

    return sum(len(logits) for logits in runner.infer_stream(batches(), in_flight))


def pipelined_stream(runner, info, files, batch: int, workers: int, in_flight: int, seconds: float) -> int:
    """Images through predict's pipeline (files cycling) for about ``seconds``, softmax + top-5 per batch."""
    from edgexfer.stages.predict import softmax, top_k
    from edgexfer.stream import file_row, pipelined

    deadline = time.perf_counter() + seconds

    def items():
        for path in itertools.cycle(files):
            if time.perf_counter() >= deadline:
                return
            yield path

    def prepare(path):
        return file_row(path, info.preprocess, info.frame, runner.input_dtype, runner.input_layout)

    images = 0
    for chunk, logits in pipelined(runner, prepare, items(), batch, workers, in_flight):
        top_k(softmax(logits), info.class_names, 5)
        images += len(chunk)
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--count", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--in-flight", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each steady-state measurement")
    parser.add_argument("--size", default="1920x1080")
    args = parser.parse_args()
    from edgexfer.backends.base import get_backend
    from edgexfer.stages.predict import PredictConfig, model_info, run_predict
    from edgexfer.stream import file_row

    width, height = (int(v) for v in args.size.split("x"))
    artifact = args.artifact
    info = model_info(artifact)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch:
        files = []
        for index in range(args.count):
            path = Path(scratch) / f"frame_{index:03d}.jpg"
            path.write_bytes(photo_like_jpeg(width, height, seed=index))
            files.append(path)
        with get_backend(_backend(artifact)).load(artifact, {"threads": args.threads}) as runner:
            in_flight = args.in_flight or runner.default_in_flight()
            array = np.stack([file_row(f, info.preprocess, info.frame, runner.input_dtype, runner.input_layout)
                              for f in files[: args.batch]])
            model_alone(runner, array, in_flight, 0.5)  # warm-up: compiles the throughput model
            names = ["model alone, 1 in flight", f"model alone, {in_flight} in flight (yardstick)",
                     "pipelined, workers 0, 1 in flight", f"pipelined, workers {args.workers}, {in_flight} in flight",
                     f"run_predict (load + {args.count} files), workers {args.workers}"]
            results: Dict[str, List[Tuple[float, float]]] = {name: [] for name in names}

            def predict() -> int:
                config = PredictConfig(target=artifact, images=tuple(files), batch_size=args.batch,
                                       threads=args.threads, workers=args.workers, in_flight=args.in_flight)
                return run_predict(config, on_prediction=lambda item: None).images

            runs = [lambda: model_alone(runner, array, 1, args.seconds),
                    lambda: model_alone(runner, array, in_flight, args.seconds),
                    lambda: pipelined_stream(runner, info, files, args.batch, 0, 1, args.seconds),
                    lambda: pipelined_stream(runner, info, files, args.batch, args.workers, in_flight, args.seconds),
                    predict]
            for _ in range(args.repeat):
                for name, run in zip(names, runs):
                    results[name].append(timed(run))
    load_after = os.getloadavg()
    print(f"CPU: {cpu_name()} ({os.cpu_count()} logical cores); {artifact.name}, batch {args.batch}, "
          f"{args.threads} inference threads, {args.workers} decode workers, {args.count} {width}x{height} JPEGs, "
          f"{args.repeat} alternating repeats of {args.seconds:g} s; load average {load_before[0]:.1f} before, "
          f"{load_after[0]:.1f} after")
    yardstick = float(np.median([v for v, _ in results[names[1]]]))
    print("| path | images/s (median) | vs model alone, same in flight | CPU ms / image | every repeat |")
    print("|---|---|---|---|---|")
    for name, values in results.items():
        speed = float(np.median([v for v, _ in values]))
        cpu = float(np.median([c for _, c in values])) * 1000
        print(f"| {name} | {speed:.1f} | {speed / yardstick:.2f}x | {cpu:.1f} | "
              f"{' / '.join(f'{v:.1f}' for v, _ in values)} |")


def _backend(artifact: Path) -> str:
    from edgexfer.backends.base import backend_for_file

    return backend_for_file(artifact) or "onnxruntime"


if __name__ == "__main__":
    main()
