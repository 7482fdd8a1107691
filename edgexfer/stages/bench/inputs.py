"""What the bench feeds: deterministic photo-like JPEGs, the shared pixels every backend gets, and the
host side of an end-to-end call (decode, resize/crop, format)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, List

import numpy as np

# Size of the synthetic photos for the end-to-end path: ImageNet's typical 500x375 JPEG.
E2E_IMAGE_SIZE = (500, 375)
E2E_IMAGES = 16


def synthetic_photos(folder: Path, count: int = E2E_IMAGES, seed: int = 0, size: Any = E2E_IMAGE_SIZE
                     ) -> List[Path]:
    """Deterministic JPEGs (500x375 unless ``size``) with smooth content (compress like photos, not noise)."""
    from PIL import Image

    from edgexfer.fsutil import atomic_path

    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
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


def shared_pixels(photos: List[Path], preprocess: Any, count: int) -> np.ndarray:
    """uint8 NCHW pixels of the first ``count`` photos (cycling), resized and cropped once: the same
    input for every backend of a model."""
    return np.stack([preprocess.to_uint8(preprocess.open(photos[i % len(photos)]), "NCHW") for i in range(count)])


def target_photos(target: Any, photos: List[Path]) -> List[Path]:
    """The photos a target's end-to-end path decodes: the shared ones, or for a raw-frame model JPEGs of its
    frame size (made once beside them), as a camera's frames saved to files would be."""
    if target.frame is None:
        return photos
    spec = target.frame
    return synthetic_photos(photos[0].parent / f"frame_{spec.text}", len(photos), size=(spec.width, spec.height))


def frame_batch(photos: List[Path], spec: Any, count: int) -> np.ndarray:
    """``count`` decoded frames (cycling the photos) in the spec's channel order: a raw-frame model's
    model-alone input, as a camera hands them over."""
    from edgexfer.frames import load_frame

    frames = [load_frame(path, spec) for path in photos[:count]]
    return np.stack([frames[i % len(frames)] for i in range(count)])


def input_batch(pixels: np.ndarray, runner: Any, preprocess: Any) -> np.ndarray:
    """The shared uint8 NCHW pixels in ``runner``'s input format (uint8 NCHW/NHWC or normalised float)."""
    layout = runner.input_layout
    array = pixels if np.dtype(runner.input_dtype) == np.uint8 else preprocess.normalize(pixels, "NCHW")
    return np.ascontiguousarray(array.transpose(0, 2, 3, 1) if layout == "NHWC" else array)


def file_row(path: Path, runner: Any, preprocess: Any, frame: Any = None) -> np.ndarray:
    """One image file as one row of ``runner``'s input (:func:`edgexfer.stream.file_row`)."""
    from edgexfer.stream import file_row as row

    return row(path, preprocess, frame, runner.input_dtype, runner.input_layout)


def host_call(runner: Any, preprocess: Any, paths: List[Path], batch: int, frame: Any = None
              ) -> Callable[[], np.ndarray]:
    """The host side of one end-to-end batch alone: decode and preprocess, no inference (cycling files)."""
    position = [0]

    def call() -> np.ndarray:
        images = []
        for _ in range(batch):
            images.append(file_row(paths[position[0] % len(paths)], runner, preprocess, frame))
            position[0] += 1
        return np.stack(images)

    return call


def end_to_end_call(runner: Any, preprocess: Any, paths: List[Path], batch: int, frame: Any = None
                    ) -> Callable[[], np.ndarray]:
    """One end-to-end batch: decode, resize/crop, format, infer, top-5 (cycling files)."""
    from edgexfer.metrics import topk_indices

    host = host_call(runner, preprocess, paths, batch, frame)

    def call() -> np.ndarray:
        return topk_indices(runner.infer(host()), 5)

    return call
