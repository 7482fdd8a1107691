#!/usr/bin/env python3
"""Raw-frame models (``export --uint8-input --frame``): parity with the host preprocessing, and latency.

ResNet-18 at 224 (torchvision, random init: no pretrained weights on this machine, so logit cosine and
top-1 agreement compare two paths through the same random network), exported like ``edgexfer export``
(TorchScript exporter, opset 17), and its frame variant made by :func:`edgexfer.onnxedit.with_frame_input`.

Parity, per frame size (1920x1080, 1280x720, 640x480; BGR as OpenCV delivers): photo-like frames
(smooth fields, hard-edged shapes, noise: what aliasing shows on) and the matplotlib sample photo
(grace_hopper.jpg, where installed) fitted to the frame. Host = Pillow resize + crop of the frame and the
one normalisation, then the float model; graph = the frame model on the raw frame. Reported: max and mean
|difference| of the normalised pixels (also in grey levels), min logit cosine, top-1 agreement.

Latency, 1920x1080 BGR frames already decoded in memory (a camera's), batch 1, side by side in one process,
round-robin (:func:`edgexfer.timing.measure_interleaved`), on ONNX Runtime and OpenVINO (where installed):

- ``model alone``: the float model on a preprocessed 1x3x224x224 tensor;
- ``host + model``: Pillow's resize + crop + normalisation of the frame, then the float model (what predict
  does with a frame today, minus the decode);
- ``frame model``: the frame model on the raw frame (everything in the graph);
- ``host preprocessing`` and ``graph preprocessing``: the two preprocessing paths alone.

Usage: python benchmarks/raw_frames.py [--rounds 5] [--threads 2] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import cpu_name, photo_like_jpeg  # noqa: E402

from edgexfer.framegraph import host_reference  # noqa: E402
from edgexfer.frames import FrameSpec, image_to_frame  # noqa: E402
from edgexfer.preprocess import Preprocess  # noqa: E402
from edgexfer.timing import TimingConfig, measure_interleaved  # noqa: E402

FRAMES = ((1080, 1920), (720, 1280), (480, 640))


def export_resnet18(path: Path) -> Path:
    import torch
    import torchvision

    model = torchvision.models.resnet18(weights=None).eval()
    torch.manual_seed(0)
    torch.onnx.export(model, torch.zeros(2, 3, 224, 224), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    return path


def frame_model(float_path: Path, out: Path, preprocess: Preprocess, spec: FrameSpec) -> Path:
    import onnx

    from edgexfer.onnxedit import with_frame_input

    onnx.save(with_frame_input(onnx.load(str(float_path)), preprocess, spec), str(out))
    return out


def source_images(count: int) -> List[Any]:
    from PIL import Image

    images = [Image.open(io.BytesIO(photo_like_jpeg(1920, 1080, seed))).convert("RGB") for seed in range(count)]
    try:
        import matplotlib

        sample = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
        if sample.is_file():
            images.append(Image.open(sample).convert("RGB"))
    except ImportError:
        pass
    return images


def parity(float_path: Path, work: Path, preprocess: Preprocess, images: List[Any], threads: int) -> List[Dict]:
    from edgexfer.stages.export.frame_models import graph_normalized

    rows = []
    float_session = session(float_path, threads)
    for height, width in FRAMES:
        spec = FrameSpec(height, width, "bgr")
        path = frame_model(float_path, work / f"frame_{spec.text}.onnx", preprocess, spec)
        frames = np.stack([image_to_frame(image, spec) for image in images])
        host = np.stack([host_reference(f, preprocess, "bgr") for f in frames])
        graph = graph_normalized(path, frames, 4)
        want = float_session.run(None, {"input": host})[0]
        got = session(path, threads).run(None, {"input": frames})[0]
        cosine = (want * got).sum(1) / (np.linalg.norm(want, axis=1) * np.linalg.norm(got, axis=1))
        diff = np.abs(graph - host)
        grey = 255 * min(preprocess.std)
        rows.append({"frame": spec.text, "images": len(frames), "max_abs_pixel_diff": float(diff.max()),
                     "max_grey_levels": float(diff.max() * grey), "mean_grey_levels": float(diff.mean() * grey),
                     "min_logit_cosine": float(cosine.min()),
                     "top1_agreement": float(np.mean(want.argmax(1) == got.argmax(1)))})
    return rows


def session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def preprocessing_only(preprocess: Preprocess, spec: FrameSpec, work: Path) -> Path:
    import onnx
    from onnx import helper

    from edgexfer.framegraph import frame_preprocessing_model

    path = work / "preprocessing_only.onnx"
    onnx.save(frame_preprocessing_model(preprocess, spec, "input", [helper.make_opsetid("", 17)], 8), str(path))
    return path


def latency_calls(float_path: Path, frame_path: Path, pre_path: Path, preprocess: Preprocess, frame: np.ndarray,
                  threads: int) -> Dict[str, Callable[[], Any]]:
    tensor = host_reference(frame, preprocess, "bgr")[None]
    batch = frame[None]
    runtimes: Dict[str, Dict[str, Callable[[np.ndarray], Any]]] = {}
    sessions = {name: session(p, threads) for name, p in (("float", float_path), ("frame", frame_path),
                                                           ("pre", pre_path))}
    runtimes["onnxruntime"] = {name: (lambda x, s=s: s.run(None, {"input": x})) for name, s in sessions.items()}
    try:
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        compiled = {name: core.compile_model(str(p), "CPU", config) for name, p in
                    (("float", float_path), ("frame", frame_path), ("pre", pre_path))}
        requests = {name: c.create_infer_request() for name, c in compiled.items()}
        runtimes["openvino"] = {name: (lambda x, r=r: r.infer([x])) for name, r in requests.items()}
    except ImportError:
        pass

    def host(x: np.ndarray = frame) -> np.ndarray:
        return host_reference(x, preprocess, "bgr")[None]

    calls: Dict[str, Callable[[], Any]] = {"host preprocessing (Pillow)": host}
    for runtime, run in runtimes.items():
        calls[f"{runtime}: model alone (224 tensor)"] = lambda run=run: run["float"](tensor)
        calls[f"{runtime}: host + model"] = lambda run=run: run["float"](host())
        calls[f"{runtime}: frame model (raw frame)"] = lambda run=run: run["frame"](batch)
        calls[f"{runtime}: graph preprocessing alone"] = lambda run=run: run["pre"](batch)
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=6, help="photo-like frames per size for parity")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    preprocess = Preprocess.imagenet(224)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        float_path = export_resnet18(work / "resnet18.onnx")
        rows = parity(float_path, work, preprocess, source_images(args.images), args.threads)
        spec = FrameSpec(1080, 1920, "bgr")
        frame = image_to_frame(source_images(1)[0], spec)
        calls = latency_calls(float_path, work / "frame_1080x1920.onnx", preprocessing_only(preprocess, spec, work),
                              preprocess, frame, args.threads)
        timing = TimingConfig(warmup=3, warmup_time_s=0.5, min_iterations=10, min_time_s=1.0, max_time_s=4.0)
        times, errors = measure_interleaved(calls, args.rounds, lambda _round: timing)
    latency = {name: {"p50_ms": float(np.median(t) * 1e3), "p90_ms": float(np.percentile(t, 90) * 1e3),
                      "calls": int(len(t))} for name, t in times.items()}
    result = {"cpu": cpu_name(), "machine": platform.machine(), "threads": args.threads,
              "load_average_before": load, "load_average_after": os.getloadavg()[0], "parity": rows,
              "latency_1080p_bgr_batch1": latency, "errors": {k: str(v) for k, v in errors.items()},
              "model": "resnet18 (random init) at 224, opset 17"}
    lines = [f"CPU: {result['cpu']}, {args.threads} threads; load average {load:.1f} before, "
             f"{result['load_average_after']:.1f} after (other sessions share the cores: expect noise)", "",
             "| frame (BGR) | images | max pixel diff (normalised) | max grey levels | mean grey levels "
             "| min logit cosine | top-1 agreement |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['frame']} | {r['images']} | {r['max_abs_pixel_diff']:.4f} | {r['max_grey_levels']:.2f} | "
              f"{r['mean_grey_levels']:.3f} | {r['min_logit_cosine']:.6f} | {r['top1_agreement']:.3f} |" for r in rows]
    lines += ["", "| 1920x1080 BGR frame, batch 1 | p50 ms | p90 ms |", "|---|---|---|"]
    lines += [f"| {name} | {v['p50_ms']:.2f} | {v['p90_ms']:.2f} |" for name, v in latency.items()]
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "raw_frames.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "raw_frames.md").write_text("# Raw-frame model: parity and latency (benchmarks/raw_frames.py)\n\n"
                                            + text + "\n")


if __name__ == "__main__":
    main()
