"""INT8 calibration images: the sampled, preprocessed set and the ONNX Runtime data reader over it.

The calibration images go through exactly the evaluation preprocessing (:meth:`Preprocess.to_array`
from the checkpoint's metadata). Ranges for every calibration method are collected in **one**
inference pass over the set (:mod:`edgexfer.quant.ranges`) and cached (:mod:`edgexfer.quant.cache`).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from edgexfer.errors import ConfigError, DataError
from edgexfer.preprocess import Preprocess, is_image_file

log = logging.getLogger(__name__)


# ---- the image set -------------------------------------------------------------------------------
@dataclass
class CalibrationSet:
    """Preprocessed calibration inputs: ``arrays`` (N, 3, H, W) float32 from ``Preprocess.to_array``.

    ``pixels`` (N, 3, H, W) uint8 from ``Preprocess.to_uint8`` feeds models with a uint8 input.
    ``fingerprint`` hashes the arrays themselves, so images, preprocessing and sampling are all in it;
    it is computed once (hundreds of MB at 512 x 224 x 224), so the arrays are made read-only.
    """

    arrays: np.ndarray
    pixels: np.ndarray
    source: str
    paths: List[str] = field(default_factory=list)
    available: int = 0

    def __post_init__(self) -> None:
        # the cached fingerprint must keep describing the arrays
        self.arrays.flags.writeable = False
        self.pixels.flags.writeable = False

    def __len__(self) -> int:
        return int(self.arrays.shape[0])

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 over the float arrays (shape, dtype and bytes)."""
        digest = hashlib.sha256(f"{self.arrays.shape}|{self.arrays.dtype}".encode("utf-8"))
        digest.update(np.ascontiguousarray(self.arrays).tobytes())
        return digest.hexdigest()

    def inputs(self, input_format: str = "float_nchw") -> np.ndarray:
        """The batch-major inputs for a model of ``input_format`` (float_nchw, uint8_nchw, uint8_nhwc)."""
        if input_format == "float_nchw":
            return self.arrays
        if input_format == "uint8_nchw":
            return self.pixels
        if input_format == "uint8_nhwc":
            return np.ascontiguousarray(self.pixels.transpose(0, 2, 3, 1))
        raise ConfigError(f"unknown input format '{input_format}'")


def image_files(folder: "os.PathLike[str] | str") -> List[Path]:
    """Image files under ``folder``, searched recursively, sorted by path (hidden files skipped)."""
    root = Path(folder)
    if not root.exists():
        raise DataError(
            f"calibration folder '{root}' does not exist; pass --calib DIR with images "
            "(any layout, searched recursively)"
        )
    if not root.is_dir():
        raise DataError(f"--calib '{root}' is a file; pass a folder of images")
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and is_image_file(p.name)
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def sample_indices(available: int, wanted: int, seed: int) -> np.ndarray:
    """Deterministic choice of ``min(wanted, available)`` indices (sorted) with a seeded generator."""
    if wanted < 1:
        raise ConfigError(f"--calib-size must be >= 1, got {wanted}")
    if available <= wanted:
        return np.arange(available)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(available, size=wanted, replace=False))


def _warn_if_short(available: int, wanted: int, source: str) -> None:
    if available < wanted:
        log.warning(
            "calibration set %s has only %d image(s), fewer than the %d asked for; using all %d",
            source,
            available,
            wanted,
            available,
        )


def folder_calibration_set(
    folder: "os.PathLike[str] | str",
    preprocess: Preprocess,
    size: int = 512,
    seed: int = 0,
    progress: bool = False,
) -> CalibrationSet:
    """Sample ``size`` images from a folder deterministically and preprocess them for calibration."""
    files = image_files(folder)
    if not files:
        raise DataError(
            f"calibration folder '{folder}' has no images (looked for "
            f"{', '.join(('.png', '.jpg', '.jpeg', '.bmp', '.webp'))} ... recursively)"
        )
    _warn_if_short(len(files), size, f"'{folder}'")
    chosen = [files[i] for i in sample_indices(len(files), size, seed)]

    def load(index: int) -> Any:
        try:
            return preprocess.open(chosen[index])
        except DataError as exc:
            raise DataError(f"unreadable calibration image: {exc}; remove it from '{folder}'") from exc

    arrays, pixels = _preprocess_all(load, len(chosen), preprocess, progress)
    return CalibrationSet(
        arrays,
        pixels,
        source=str(Path(folder).resolve()),
        paths=[str(p) for p in chosen],
        available=len(files),
    )


def samples_calibration_set(
    samples: Any,
    preprocess: Preprocess,
    size: int = 512,
    seed: int = 0,
    progress: bool = False,
    source: str = "train split",
) -> CalibrationSet:
    """Sample ``size`` items of an :class:`edgexfer.data.ImageSamples` (e.g. the run's training split)."""
    if len(samples) == 0:
        raise DataError(f"calibration source ({source}) has no images")
    _warn_if_short(len(samples), size, source)
    chosen = sample_indices(len(samples), size, seed)
    if hasattr(samples, "for_preprocess"):
        samples = samples.for_preprocess(preprocess)
    arrays, pixels = _preprocess_all(
        lambda i: samples.image(int(chosen[i])), len(chosen), preprocess, progress
    )
    paths = [samples.paths[i] for i in chosen] if getattr(samples, "paths", None) else []
    return CalibrationSet(arrays, pixels, source=source, paths=paths, available=len(samples))


def run_calibration_set(
    run_dir: "os.PathLike[str] | str",
    folder: Optional["os.PathLike[str] | str"],
    preprocess: Preprocess,
    size: int = 512,
    seed: int = 0,
    progress: bool = False,
) -> CalibrationSet:
    """``folder`` (``--calib DIR``) when given, else the run's training split, sampled and preprocessed."""
    from edgexfer.errors import ArtifactError

    if folder is not None:
        return folder_calibration_set(folder, preprocess, size, seed, progress)
    from edgexfer.data import samples_for_run

    try:
        samples = samples_for_run(run_dir, "train")
    except ArtifactError as exc:
        raise ArtifactError(f"{exc}; or pass --calib DIR (a folder of calibration images)") from exc
    return samples_calibration_set(
        samples, preprocess, size, seed, progress, source=f"train split of {run_dir}"
    )


def _preprocess_all(
    load: Any, count: int, preprocess: Preprocess, progress: bool
) -> Tuple[np.ndarray, np.ndarray]:
    """Float arrays (``to_array``) and uint8 pixels (``to_uint8``) of ``count`` loaded images."""
    from tqdm import tqdm

    size = preprocess.size
    arrays = np.empty((count, 3, size, size), dtype=np.float32)
    pixels = np.empty((count, 3, size, size), dtype=np.uint8)
    for i in tqdm(range(count), desc="calibration images", disable=not progress, leave=False):
        image = load(i)
        arrays[i] = preprocess.to_array(image)
        pixels[i] = preprocess.to_uint8(image, "NCHW")
    return arrays, pixels


# ---- ONNX Runtime data reader --------------------------------------------------------------------
def make_reader(inputs: np.ndarray, batch_size: int = 16, input_name: str = "input") -> Any:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over ``inputs`` in batches (rewindable)."""
    from onnxruntime.quantization import CalibrationDataReader

    class ArrayReader(CalibrationDataReader):
        """Feeds ``{input_name: batch}`` dicts; ``rewind()`` starts again."""

        def __init__(self) -> None:
            self.batches = [inputs[i : i + batch_size] for i in range(0, len(inputs), batch_size)]
            self.position = 0

        def get_next(self) -> Optional[Dict[str, np.ndarray]]:
            if self.position >= len(self.batches):
                return None
            self.position += 1
            return {input_name: self.batches[self.position - 1]}

        def rewind(self) -> None:
            self.position = 0

        def __len__(self) -> int:
            return len(self.batches)

    return ArrayReader()
