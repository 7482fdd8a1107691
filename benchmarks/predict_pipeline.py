#!/usr/bin/env python3
"""``predict`` over a folder of camera-sized JPEGs against the model alone, side by side in one process.

Writes ``--count`` photo-like JPEGs (1920x1080 unless ``--size``; benchmarks/decode.py's generator), then,
alternately ``--repeat`` times, with the same inference threads:

- ``model alone, 1 in flight``: one batch of the real pixels again and again, one request at a time;
- ``model alone, N in flight``: the same batch through ``infer_stream`` with N requests in flight (the
  runtime's choice unless ``--in-flight``): the model's own throughput, the issue's yardstick;
- ``predict, workers 0, 1 in flight``: :func:`edgexfer.stages.predict.run_predict` decoding on the
  inference thread, one batch after another (edgexfer before the pipeline);
- ``predict, pipelined``: ``run_predict`` with ``--workers`` decode threads and N batches in flight
  (:func:`edgexfer.stream.pipelined`), results streamed in input order as the CLI's ``--jsonl`` does.

Per row: images/s (median of the repeats), the ratio to the model alone with N in flight (target >= 0.8
for the pipelined row), and the process CPU seconds per image (``time.process_time``: how much of the
machine it used, which the load of other processes does not inflate the way it inflates wall time).
The load average before and after is printed: on a shared machine, say so next to the figures.

Usage: python benchmarks/predict_pipeline.py ARTIFACT (.xml / .onnx with edgexfer metadata)
       [--count 48] [--batch 8] [--workers 2] [--threads 2] [--in-flight 0] [--repeat 3] [--size 1920x1080]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--count", type=int, default=48)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--in-flight", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each model-alone measurement")
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
            names = ["model alone, 1 in flight", f"model alone, {in_flight} in flight",
                     "predict, workers 0, 1 in flight", f"predict, workers {args.workers}, {in_flight} in flight"]
            results: Dict[str, List[Tuple[float, float]]] = {name: [] for name in names}

            def predict(workers: int, flight: int) -> int:
                config = PredictConfig(target=artifact, images=tuple(files), batch_size=args.batch,
                                       threads=args.threads, workers=workers, in_flight=flight)
                return run_predict(config, on_prediction=lambda item: None).images

            runs = [lambda: model_alone(runner, array, 1, args.seconds),
                    lambda: model_alone(runner, array, in_flight, args.seconds),
                    lambda: predict(0, 1), lambda: predict(args.workers, in_flight)]
            for _ in range(args.repeat):
                for name, run in zip(names, runs):
                    results[name].append(timed(run))
    load_after = os.getloadavg()
    print(f"CPU: {cpu_name()} ({os.cpu_count()} logical cores); {artifact.name}, batch {args.batch}, "
          f"{args.threads} inference threads, {args.workers} decode workers, {args.count} {width}x{height} JPEGs, "
          f"{args.repeat} alternating repeats; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
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
