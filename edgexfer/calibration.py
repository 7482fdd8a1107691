"""INT8 calibration: the image set, the ONNX Runtime data reader and the range cache.

The calibration images go through exactly the evaluation preprocessing (:meth:`Preprocess.to_array`
from the checkpoint's metadata). Ranges for every calibration method are collected in **one**
inference pass over the set (:mod:`edgexfer.quant.ranges`), so ``--calib-method auto`` costs one pass.

Computed ranges are cached by (float model hash, calibration arrays hash, method, collector options,
ONNX Runtime version): a re-run skips calibration, and a changed model, image set, preprocessing or
sample is a different key, so stale ranges are never served. Cache files are written atomically, so
two processes may share a cache folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from edgexfer.errors import ConfigError, DataError
from edgexfer.fsutil import atomic_write_json
from edgexfer.preprocess import Preprocess, is_image_file, load_image
from edgexfer.quant.ranges import (  # noqa: F401 - re-exported: the calibration API in one place
    COLLECTOR_OPTIONS,
    METHOD_CHOICES,
    METHODS,
    Ranges,
    calibration_tensors,
    collect_ranges,
    entropy_range,
    tensors_data,
)

log = logging.getLogger(__name__)

CACHE_FORMAT = "edgexfer-calib-ranges-1"


# ---- the image set -------------------------------------------------------------------------------
@dataclass
class CalibrationSet:
    """Preprocessed calibration inputs: ``arrays`` (N, 3, H, W) float32 from ``Preprocess.to_array``.

    ``pixels`` (N, 3, H, W) uint8 from ``Preprocess.to_uint8`` feeds models with a uint8 input.
    ``fingerprint`` hashes the arrays themselves, so images, preprocessing and sampling are all in it.
    """

    arrays: np.ndarray
    pixels: np.ndarray
    source: str
    paths: List[str] = field(default_factory=list)
    available: int = 0

    def __len__(self) -> int:
        return int(self.arrays.shape[0])

    @property
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
            return load_image(chosen[index])
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


# ---- the cache -----------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """The shared cache folder: ``$EDGEXFER_CACHE/calib`` or ``~/.cache/edgexfer/calib``."""
    base = os.environ.get("EDGEXFER_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "edgexfer") / "calib"


def cache_key(model_sha256: str, calib_fingerprint: str, method: str) -> str:
    """The cache key: model hash, calibration-set hash, method and its options, ORT version."""
    import onnxruntime

    parts = {
        "format": CACHE_FORMAT,
        "model": model_sha256,
        "calib": calib_fingerprint,
        "method": method,
        "options": COLLECTOR_OPTIONS[method],
        "onnxruntime": onnxruntime.__version__,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()


class RangeCache:
    """Calibration ranges on disk, looked up in each folder of ``folders`` in order, written to all."""

    def __init__(self, folders: Iterable["os.PathLike[str] | str"]):
        self.folders = [Path(f) for f in folders]

    def path(self, folder: Path, key: str) -> Path:
        """The file of ``key`` in ``folder``."""
        return folder / f"{key}.json"

    def load(self, key: str) -> Optional[Ranges]:
        """The cached ranges of ``key``, or None (a corrupt or foreign file counts as a miss)."""
        for folder in self.folders:
            path = self.path(folder, key)
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if data.get("format") != CACHE_FORMAT or data.get("key") != key:
                continue
            return {name: (float(lo), float(hi)) for name, (lo, hi) in data["ranges"].items()}
        return None

    def store(self, key: str, ranges: Ranges, info: Dict[str, Any]) -> List[Path]:
        """Write ``ranges`` under ``key`` to every folder (atomically); return the files written."""
        written = []
        payload = {
            "format": CACHE_FORMAT,
            "key": key,
            "info": info,
            "ranges": {name: [lo, hi] for name, (lo, hi) in ranges.items()},
        }
        for folder in self.folders:
            try:
                atomic_write_json(self.path(folder, key), payload)
                written.append(self.path(folder, key))
            except OSError as exc:  # a read-only shared cache must not fail the export
                log.warning("cannot write calibration cache in %s: %s", folder, exc)
        return written


def ranges_for(
    model_path: "os.PathLike[str] | str",
    model_sha256: str,
    calib: CalibrationSet,
    methods: Sequence[str],
    cache: Optional[RangeCache],
    batch_size: int = 16,
    progress: bool = False,
) -> Tuple[Dict[str, Ranges], Dict[str, bool]]:
    """Ranges per method, from the cache where present, else collected (one pass) and cached.

    Returns ``(ranges by method, cache hit by method)``.
    """
    keys = {m: cache_key(model_sha256, calib.fingerprint, m) for m in methods}
    found: Dict[str, Ranges] = {}
    if cache is not None:
        for method in methods:
            hit = cache.load(keys[method])
            if hit is not None:
                found[method] = hit
    missing = [m for m in methods if m not in found]
    if missing:
        computed = collect_ranges(model_path, calib.inputs("float_nchw"), missing, batch_size, progress)
        for method in missing:
            found[method] = computed[method]
            if cache is not None:
                cache.store(
                    keys[method],
                    computed[method],
                    {
                        "method": method,
                        "model_sha256": model_sha256,
                        "calib_fingerprint": calib.fingerprint,
                        "calib_source": calib.source,
                        "calib_images": len(calib),
                    },
                )
    return found, {m: m not in missing for m in methods}
