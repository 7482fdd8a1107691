"""When and with what a record was made: the UTC timestamp and the installed library versions.

The one list of libraries edgexfer reports: the manifest records them with every stage, the bench with
every measurement, ``edgexfer doctor`` prints them. Nothing here imports the libraries themselves
(except TensorRT where asked, see :func:`library_versions`), so reading versions is cheap.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import platform
import sys
from typing import Dict

from edgexfer import __version__

# Distribution names (pip's), in the order doctor prints them.
LIBRARIES = (
    "torch",
    "torchvision",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "openvino",
    "tensorrt",
    "polygraphy",
    "cuda-python",
    "numpy",
    "pillow",
)


def now_iso() -> str:
    """UTC timestamp, second resolution, ISO 8601."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def library_versions(include_missing: bool = False, import_tensorrt: bool = False) -> Dict[str, str]:
    """Installed versions by distribution name, from package metadata.

    ``include_missing`` lists absent libraries with ``''``. JetPack installs TensorRT as an apt package,
    without pip metadata: its version is taken from an already imported ``tensorrt`` module, or with
    ``import_tensorrt`` by importing it (slow on a Jetson, so only ``doctor`` asks for that).
    """
    from importlib import metadata

    versions: Dict[str, str] = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            if include_missing:
                versions[name] = ""
    if not versions.get("tensorrt"):
        system = _system_tensorrt(import_tensorrt)
        if system:
            versions["tensorrt"] = system
        elif not include_missing:
            versions.pop("tensorrt", None)
    return versions


def _system_tensorrt(import_it: bool) -> str:
    """'<version> (system)' for a TensorRT that imports without pip metadata, else ''."""
    module = sys.modules.get("tensorrt")
    if module is None and import_it:
        try:
            module = importlib.import_module("tensorrt")  # JetPack's apt package
        except ImportError:
            return ""
    if module is None:
        return ""
    return f"{getattr(module, '__version__', 'unknown')} (system)"


def tool_versions() -> Dict[str, str]:
    """Python, edgexfer and every installed library: what a recorded artifact or number depends on."""
    return {"python": platform.python_version(), "edgexfer": __version__, **library_versions()}
