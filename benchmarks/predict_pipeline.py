#!/usr/bin/env python3
"""``predict`` over a folder of camera-sized JPEGs: decode on the inference thread vs on worker threads.

Writes ``--count`` photo-like 1920x1080 JPEGs (benchmarks/decode.py's generator), then runs
:func:`edgexfer.stages.predict.run_predict` on them with ``--workers 0`` (decode, then infer, one batch
after another: edgexfer before the pipeline) and with decode threads, alternately ``--repeat`` times,
and the model alone on the same runner (the same batch again and again, ``infer_stream``), so the
pipelined images/s can be read against the model-alone images/s measured minutes apart in one process.

Usage: python benchmarks/predict_pipeline.py ARTIFACT (.xml / .onnx with edgexfer metadata)
       [--count 48] [--batch 8] [--workers 2] [--threads 2] [--repeat 3] [--size 1920x1080]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import cpu_name, photo_like_jpeg  # noqa: E402  (the sibling benchmark's JPEG generator)


def model_alone(artifact: Path, backend: str, files: list, batch: int, threads: int, seconds: float) -> float:
    """Images/s of the model alone: one batch of the real pixels, one request at a time, for ``seconds``."""
    import itertools

    from edgexfer.backends.base import get_backend
    from edgexfer.preprocess import images_to_batch
    from edgexfer.stages.predict import model_info

    preprocess = model_info(artifact).preprocess
    with get_backend(backend).load(artifact, {"threads": threads}) as runner:
        array = images_to_batch([preprocess.open(f) for f in files[:batch]], preprocess, runner.input_dtype,
                                runner.input_layout)
        for _ in range(5):
            runner.infer(array)
        start, images = time.perf_counter(), 0
        for logits in runner.infer_stream(itertools.repeat(array, 10**9), 1):
            images += len(logits)
            if time.perf_counter() - start > seconds:
                break
        return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--count", type=int, default=48)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--size", default="1920x1080")
    args = parser.parse_args()
    from edgexfer.backends.base import backend_for_file
    from edgexfer.stages.predict import PredictConfig, run_predict

    width, height = (int(v) for v in args.size.split("x"))
    backend = backend_for_file(args.artifact)
    with tempfile.TemporaryDirectory() as scratch:
        files = []
        for index in range(args.count):
            path = Path(scratch) / f"frame_{index:03d}.jpg"
            path.write_bytes(photo_like_jpeg(width, height, seed=index))
            files.append(path)
        results = {"workers 0 (sequential)": [], f"workers {args.workers} (pipelined)": [], "model alone": []}
        for _ in range(args.repeat):
            for workers, name in ((0, "workers 0 (sequential)"), (args.workers, f"workers {args.workers} (pipelined)")):
                config = PredictConfig(target=args.artifact, images=tuple(files), batch_size=args.batch,
                                       threads=args.threads, workers=workers)
                results[name].append(run_predict(config, on_prediction=lambda item: None).images_per_s)
            results["model alone"].append(model_alone(args.artifact, backend, files, args.batch, args.threads, 3.0))
    print(f"CPU: {cpu_name()}; {args.artifact.name} ({backend}), batch {args.batch}, {args.threads} inference "
          f"threads, {args.count} {width}x{height} JPEGs, {args.repeat} alternating repeats")
    alone = float(np.median(results["model alone"]))
    print("| path | images/s (median) | vs model alone | every repeat |\n|---|---|---|---|")
    for name, values in results.items():
        print(f"| {name} | {np.median(values):.1f} | {np.median(values) / alone:.2f}x | "
              f"{' / '.join(f'{v:.1f}' for v in values)} |")


if __name__ == "__main__":
    main()
