"""``metrics.json`` and the training-curve PNG of a fine-tuning run."""

from __future__ import annotations

import os
from typing import Any, Dict, List

from edgexfer.fsutil import atomic_path, atomic_write_json


def write_metrics(
    path: "os.PathLike[str] | str", summary: Dict[str, Any], history: List[Dict[str, Any]]
) -> None:
    """Write the run summary and per-epoch history as JSON (atomically)."""
    atomic_write_json(path, {"summary": summary, "history": history})


def plot_curves(path: "os.PathLike[str] | str", history: List[Dict[str, Any]], title: str) -> None:
    """Loss and top-1 per epoch for train and val, best epoch marked; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    # training minimises the label-smoothed loss; validation reports plain cross-entropy
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train (label-smoothed)")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], "o-", label="val")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [100 * h["train_top1"] for h in history], "o-", label="train top-1")
    ax_acc.plot(epochs, [100 * h["val_top1"] for h in history], "o-", label="val top-1")
    if history:
        best = max(history, key=lambda h: h["val_top1"])
        ax_acc.axvline(best["epoch"], color="grey", linestyle=":", label=f"best (epoch {best['epoch']})")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("top-1 %")
    ax_acc.legend()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
