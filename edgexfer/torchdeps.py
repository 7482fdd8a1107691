"""torch and torchvision: the training side, installed with the ``train`` extra.

``pip install edgexfer`` is the runtime (build, predict, verify, bench of a run's builds, doctor) and
runs without torch: on a Jetson torch is a separate NVIDIA wheel per JetPack release, on an edge box it
is dead weight. The training side (finetune, export, the torch reference of verify and bench,
random-weight bench models, torchvision data sets) calls :func:`require_torch` before it imports torch,
so a machine without it gets one line (exit 4) naming the extra instead of a ModuleNotFoundError.
"""

from __future__ import annotations

import importlib
from typing import Optional

from edgexfer.errors import BackendUnavailableError

TRAIN_EXTRA = "pip install 'edgexfer[train]'"
TRAIN_MODULES = ("torch", "torchvision")


def torch_missing() -> Optional[str]:
    """Why torch / torchvision cannot be used here (one line), or None when both import."""
    for module in TRAIN_MODULES:
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - a broken wheel raises OSError/RuntimeError, not only ImportError
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return f"{module} does not import ({reason})"
    return None


def torch_available() -> bool:
    """Whether torch and torchvision import here."""
    return torch_missing() is None


def require_torch(purpose: str) -> None:
    """Raise :class:`BackendUnavailableError` (exit 4) naming the ``train`` extra when torch or
    torchvision does not import; ``purpose`` says what needed them (e.g. ``"edgexfer finetune"``)."""
    reason = torch_missing()
    if reason is not None:
        raise BackendUnavailableError(
            f"{purpose} needs torch and torchvision (the training side), but {reason}; install them with "
            f"{TRAIN_EXTRA} (build, predict, verify, bench --run and doctor run without them)"
        )
