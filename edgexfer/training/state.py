"""What a run carries from epoch to epoch and through ``--resume``: history, best epoch, early stopping,
and the random number generators.

Resume restores every generator training may draw from: torch's CPU generator (dropout, torchvision
augmentation), the current CUDA device's, numpy's and Python's global ones (augmentation or samplers
written with them). The states are stored as tensors and plain tuples, so ``torch.load(weights_only=True)``
reads them back.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np


@dataclass
class TrainState:
    """The per-epoch history and the early-stopping bookkeeping of one run."""

    history: List[Dict[str, Any]] = field(default_factory=list)
    best_top1: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False

    def add_epoch(self, row: Dict[str, Any], patience: Optional[int]) -> bool:
        """Record one epoch's row; return whether it is the new best. Sets ``stopped_early`` after
        ``patience`` epochs in a row without a val top-1 gain (``patience`` None: never)."""
        self.history.append(row)
        improved = row["val_top1"] > self.best_top1
        if improved:
            self.best_top1, self.best_epoch, self.bad_epochs = row["val_top1"], row["epoch"], 0
        else:
            self.bad_epochs += 1
        self.stopped_early = patience is not None and self.bad_epochs >= patience
        return improved

    def to_dict(self) -> Dict[str, Any]:
        """The checkpoint's copy (``last.pt`` extra)."""
        return {
            "history": list(self.history),
            "best_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "stopped_early": self.stopped_early,
        }

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "TrainState":
        """Rebuild from :meth:`to_dict`."""
        return cls(
            history=list(data["history"]),
            best_top1=float(data["best_top1"]),
            best_epoch=int(data["best_epoch"]),
            bad_epochs=int(data["bad_epochs"]),
            stopped_early=bool(data.get("stopped_early", False)),
        )

    def summary(self) -> Dict[str, Any]:
        """The run-so-far figures of ``metrics.json`` and the manifest."""
        last = self.history[-1] if self.history else {}
        return {
            "best_val_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "epochs_run": len(self.history),
            "stopped_early": self.stopped_early,
            "last_val_top1": last.get("val_top1"),
            "train_images_per_s": last.get("train_images_per_s"),
        }


def rng_state(device: Any) -> Dict[str, Any]:
    """The states of torch's CPU generator, ``device``'s CUDA generator (when it is a GPU), numpy's
    and Python's global generators."""
    import torch

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if getattr(device, "type", "cpu") == "cuda" else None,
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": random.getstate(),
    }


def restore_rng_state(state: Dict[str, Any], device: Any) -> None:
    """Set the generators to :func:`rng_state`'s ``state`` (a checkpoint of an older edgexfer may
    hold only ``torch``: the others are left as seeded)."""
    import torch

    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and getattr(device, "type", "cpu") == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    if state.get("numpy") is not None:
        saved = state["numpy"]
        keys = saved["keys"].numpy().astype(np.uint32)
        np.random.set_state((saved["kind"], keys, saved["pos"], saved["has_gauss"], saved["gauss"]))
    if state.get("python") is not None:
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))
