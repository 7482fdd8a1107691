"""A run's files while it trains: ``best.pt``, ``last.pt`` (everything ``--resume`` needs) and
``metrics.json``, written by rank 0 after every epoch, each atomically; and resuming from ``last.pt``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from edgexfer.checkpoint import CheckpointMeta, read_checkpoint_file, save_checkpoint
from edgexfer.errors import ConfigError
from edgexfer.training.report import write_metrics
from edgexfer.training.state import TrainState, restore_rng_state, rng_state
from edgexfer.training.trainer import Trainer

log = logging.getLogger("edgexfer.finetune")


class RunCheckpoints:
    """The checkpoint files of one run in ``folder``.

    ``meta`` is what every checkpoint says about the model (arch, classes, preprocessing, weights
    source, data fingerprint, extra); ``resume_key`` identifies the options a resumed run must share;
    ``summary`` holds the fixed part of ``metrics.json``'s summary (model, data counts, ...);
    ``diagnose`` turns the history into the summary's ``collapse`` line (None: no collapse).
    """

    def __init__(
        self,
        folder: Path,
        meta: CheckpointMeta,
        resume_key: str,
        summary: Dict[str, Any],
        diagnose: Optional[Callable[[List[Dict[str, Any]]], Optional[str]]] = None,
    ):
        self.folder = Path(folder)
        self.best = self.folder / "best.pt"
        self.last = self.folder / "last.pt"
        self.metrics = self.folder / "metrics.json"
        self.saved_epochs = 0  # epochs whose last.pt is on disk (set after each save and on resume)
        self.meta = meta
        self.resume_key = resume_key
        self.fixed_summary = dict(summary)
        self.diagnose = diagnose

    def summary(self, state: TrainState) -> Dict[str, Any]:
        """``metrics.json``'s summary: the run so far, its collapse line (or None), and the fixed facts."""
        collapse = self.diagnose(state.history) if self.diagnose else None
        return dict(state.summary(), collapse=collapse, **self.fixed_summary)

    def _meta(self, epoch: int, row: Dict[str, Any], train_state: Dict[str, Any]) -> CheckpointMeta:
        metrics = {"val_top1": row["val_top1"], "val_top5": row["val_top5"], "val_loss": row["val_loss"]}
        extra = dict(train_state, **self.meta.extra)
        return dataclasses.replace(self.meta, epoch=epoch, metrics=metrics, extra=extra)

    def save(self, trainer: Trainer, epoch: int, row: Dict[str, Any], improved: bool) -> None:
        """Rank 0 writes best.pt (when improved), then last.pt, then metrics.json."""
        if not trainer.runtime.is_main:
            return
        state = trainer.model.state_dict()
        if improved:
            save_checkpoint(self.best, state, self._meta(epoch, row, {}))
        train_state = dict(
            trainer.state.to_dict(),
            resume_key=self.resume_key,
            optimizer=trainer.optimizer.state_dict(),
            scheduler=trainer.scheduler.state_dict(),
            scaler=trainer.scaler.state_dict() if trainer.scaler else None,
            rng=rng_state(trainer.runtime.device),
        )
        save_checkpoint(self.last, state, self._meta(epoch, row, train_state))
        self.saved_epochs = len(trainer.state.history)
        write_metrics(self.metrics, self.summary(trainer.state), trainer.state.history)

    def settle(self, state: TrainState) -> bool:
        """After an interrupt: make ``metrics.json`` match ``last.pt`` (Ctrl-C may fall between the two
        writes, or before the first epoch's files); False when no epoch was saved, so nothing is recorded."""
        if not (self.saved_epochs and self.best.exists() and self.last.exists()):
            return False
        write_metrics(self.metrics, self.summary(state), state.history[: self.saved_epochs])
        return True

    def resume(self, trainer: Trainer) -> None:
        """Load model, optimizer, schedule, scaler, generators and history from ``last.pt`` into ``trainer``."""
        payload = read_checkpoint_file(self.last)
        extra = payload.get("extra", {})
        if extra.get("resume_key") != self.resume_key:
            raise ConfigError(
                f"--resume: {self.last} was trained with other options (model, data, "
                "strategy or hyperparameters); rerun with the same options, or without --resume"
            )
        trainer.model.load_state_dict(payload["state_dict"])
        trainer.optimizer.load_state_dict(extra["optimizer"])
        trainer.scheduler.load_state_dict(extra["scheduler"])
        if trainer.scaler is not None and extra.get("scaler"):
            trainer.scaler.load_state_dict(extra["scaler"])
        # a last.pt written before numpy/Python/CUDA generators were saved holds only "rng_torch"
        restore_rng_state(extra.get("rng") or {"torch": extra["rng_torch"]}, trainer.runtime.device)
        trainer.state = TrainState.from_dict(extra)
        self.saved_epochs = len(trainer.state.history)
        trainer.start_epoch = int(payload["epoch"]) + 1
        if trainer.runtime.is_main:
            log.info(
                "resuming after epoch %d (best val top-1 %.2f%% at epoch %d)",
                payload["epoch"],
                100 * trainer.state.best_top1,
                trainer.state.best_epoch,
            )
