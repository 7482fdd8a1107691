"""The calibration-range cache: ranges per method on disk, keyed by everything that determines them.

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
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from edgexfer.fsutil import atomic_write_json
from edgexfer.quant.calibration import CalibrationSet
from edgexfer.quant.ranges import COLLECTOR_OPTIONS, Ranges, collect_ranges

log = logging.getLogger(__name__)

CACHE_FORMAT = "edgexfer-calib-ranges-1"


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
