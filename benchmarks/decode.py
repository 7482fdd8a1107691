#!/usr/bin/env python3
"""JPEG -> model input (uint8 224x224, the ``--uint8-input`` path): full decode vs reduced-scale decode.

Makes photo-like JPEGs (smooth colour fields, hard-edged shapes, mild sensor noise; quality 90) at
500x375, 1280x720, 1920x1080 and 4032x3024, then times, side by side in one process and round-robin
(so load from other processes hits every column alike), one image file -> resized, cropped pixels:

- ``full``: ``load_image(path)`` then ``Preprocess.to_uint8`` (edgexfer before the reduced decode);
- ``reduced``: ``Preprocess.open(path)`` (``load_image(path, fit=preprocess)``: DCT-domain 1/2, 1/4 or
  1/8 decode through PIL's ``draft``) then ``to_uint8``: what every evaluation-side stage does now;
- ``simplejpeg`` (only where the package is installed): libjpeg-turbo's scaled decode through
  simplejpeg (``min_width``/``min_height`` = the same target, fast DCT and upsampling), then the same
  exact resize and crop. Kept as a comparison only: it measured no better than PIL's draft, which
  runs the same libjpeg-turbo, so edgexfer needs no extra dependency.

Also prints how far the reduced decode's pixels are from the full decode's (mean / max absolute
difference in grey levels). Single-threaded; medians in ms.

Usage: python benchmarks/decode.py [--rounds 5] [--size 224] [--out DIR]
"""

from __future__ import annotations

import argparse
import io
import platform
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict

import numpy as np

from edgexfer.preprocess import DRAFT_INFO, Preprocess, load_image
from edgexfer.timing import TimingConfig, measure_interleaved

SIZES = ((500, 375), (1280, 720), (1920, 1080), (4032, 3024))


def photo_like_jpeg(width: int, height: int, seed: int) -> bytes:
    """A JPEG whose entropy is photo-like: smooth fields, sharp shapes, mild noise (quality 90)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    field = Image.fromarray(rng.integers(0, 256, (height // 48 + 2, width // 48 + 2, 3), dtype=np.uint8))
    image = field.resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(40):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(width // 40, width // 5)), int(rng.integers(height // 40, height // 5))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x0 + w, y0 + h), fill=colour)
    pixels = np.asarray(image).astype(np.float32) + rng.normal(0, 2.5, (height, width, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def simplejpeg_open(path: Path, preprocess: Preprocess) -> Any:
    """libjpeg-turbo scaled decode through simplejpeg, tagged so resize_crop maps the crop box."""
    import simplejpeg
    from PIL import Image

    data = path.read_bytes()
    height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    scale = preprocess.draft_scale(width, height)
    pixels = simplejpeg.decode_jpeg(data, "RGB", fastdct=True, fastupsample=True,
                                    min_width=width // scale, min_height=height // scale)
    image = Image.fromarray(pixels)
    if image.size != (width, height):
        image.info[DRAFT_INFO] = (width, height, width / image.width, *image.size)
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=224, help="model input size (ImageNet recipe)")
    parser.add_argument("--out", type=Path, default=None, help="keep the JPEGs here (default: a temp dir)")
    args = parser.parse_args()
    preprocess = Preprocess.imagenet(args.size)
    try:
        import simplejpeg  # noqa: F401

        have_simplejpeg = True
    except ImportError:
        have_simplejpeg = False
    print(f"CPU: {cpu_name()}; one thread; Preprocess.imagenet({args.size}) "
          f"(resize {preprocess.resize_size}, crop {args.size}); medians of {args.rounds} interleaved rounds")
    header = "| JPEG | KiB | decoded at | full (before) ms | reduced (after) ms | speed-up |"
    header += " simplejpeg ms |" if have_simplejpeg else ""
    print(header + " reduced vs full: mean / max |")
    print("|" + "---|" * (header.count("|") - 1 + 1))
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.out or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        for index, (width, height) in enumerate(SIZES):
            path = folder / f"photo_{width}x{height}.jpg"
            path.write_bytes(photo_like_jpeg(width, height, seed=index))
            calls: Dict[str, Callable[[], Any]] = {
                "full": lambda p=path: preprocess.to_uint8(load_image(p)),
                "reduced": lambda p=path: preprocess.to_uint8(preprocess.open(p)),
            }
            if have_simplejpeg:
                calls["simplejpeg"] = lambda p=path: preprocess.to_uint8(simplejpeg_open(p, preprocess))
            budget = 0.4 if width < 4000 else 1.0
            timing = TimingConfig(warmup=2, warmup_time_s=0.2, min_iterations=5, min_time_s=budget / 3,
                                  max_time_s=budget)
            times, errors = measure_interleaved(calls, args.rounds, lambda _round, t=timing: t)
            if errors:
                raise SystemExit(f"{path.name}: {errors}")
            ms = {name: float(np.median(t)) * 1e3 for name, t in times.items()}
            full = calls["full"]().astype(np.int16)
            diff = np.abs(calls["reduced"]().astype(np.int16) - full)
            decoded = preprocess.open(path).size
            row = (f"| {width}x{height} | {path.stat().st_size // 1024} | {decoded[0]}x{decoded[1]} | "
                   f"{ms['full']:.2f} | {ms['reduced']:.2f} | {ms['full'] / ms['reduced']:.2f}x |")
            if have_simplejpeg:
                row += f" {ms['simplejpeg']:.2f} |"
            print(row + f" {diff.mean():.2f} / {int(diff.max())} |")


if __name__ == "__main__":
    main()
