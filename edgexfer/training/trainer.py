"""The epoch loop: an engine, its optimizer, the warmup + cosine schedule, AMP, and early stopping.

Every rank runs the same loop; the decisions (best epoch, early stop) come from all-reduced metrics
and rank 0's stop flag, so the ranks never disagree about when to stop.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Optional

from edgexfer.training import optim
from edgexfer.training.engines import Engine
from edgexfer.training.runtime import broadcast_flag, grad_scaler
from edgexfer.training.state import TrainState

log = logging.getLogger("edgexfer.finetune")

# Called after every epoch with (trainer, epoch, row, improved): where checkpoints get written.
EpochHook = Callable[["Trainer", int, Dict[str, Any], bool], None]


class Trainer:
    """An engine with its optimizer, schedule and grad scaler, and the state of the run so far.

    ``hp`` holds the effective hyperparameters: ``epochs``, ``lr``, ``backbone_lr_mult``,
    ``weight_decay`` and ``warmup_epochs``.
    """

    def __init__(self, engine: Engine, hp: Dict[str, Any], optimizer: str, momentum: float):
        import torch

        self.engine = engine
        self.model = engine.inputs.model
        self.runtime = engine.inputs.runtime
        self.hp = hp
        groups = optim.param_groups(self.model, hp["lr"], hp["weight_decay"], hp["backbone_lr_mult"])
        self.optimizer = optim.make_optimizer(groups, optimizer, hp["lr"], momentum, hp["weight_decay"])
        total = engine.steps_per_epoch * hp["epochs"]
        warmup = int(round(hp["warmup_epochs"] * engine.steps_per_epoch))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, optim.warmup_cosine(total, warmup))
        self.scaler = grad_scaler(self.runtime)
        self.state = TrainState()
        self.start_epoch = 1

    def run_epoch(self, epoch: int) -> Dict[str, Any]:
        """Train and validate one epoch; return its history row."""
        desc = f"epoch {epoch}/{self.hp['epochs']}"
        train, val = self.engine.epoch(epoch, self.optimizer, self.scheduler, self.scaler, desc)
        bn = self.engine.precise_bn_result
        return {
            "epoch": epoch,
            "lr": max(g["lr"] for g in self.optimizer.param_groups),
            "train_loss": train.loss,
            "train_top1": train.top1,
            "val_loss": val.loss,
            "val_top1": val.top1,
            "val_top5": val.top5,
            "train_images_per_s": train.images_per_s,
            "train_seconds": train.seconds,
            "val_seconds": val.seconds,
            # the precise BatchNorm pass before validation (None: off or nothing to recompute)
            "precise_bn_images": bn.images if bn and bn.layers else None,
            "precise_bn_seconds": bn.seconds if bn and bn.layers else None,
        }

    def fit(self, patience: Optional[int], after_epoch: EpochHook) -> TrainState:
        """Epochs from ``start_epoch`` to ``hp["epochs"]``, or until ``patience`` epochs in a row bring no
        val top-1 gain (None: never stop early); ``after_epoch`` runs after each one."""
        state = self.state
        for epoch in range(self.start_epoch, self.hp["epochs"] + 1):
            if state.stopped_early:
                break
            row = self.run_epoch(epoch)
            improved = state.add_epoch(row, patience)
            state.stopped_early = broadcast_flag(self.runtime, state.stopped_early)
            self._log_epoch(row, improved)
            after_epoch(self, epoch, row, improved)
        if state.stopped_early and self.runtime.is_main:
            log.info("early stop: no val top-1 gain for %s epochs", patience)
        return state

    def _log_epoch(self, row: Dict[str, Any], improved: bool) -> None:
        if not self.runtime.is_main:
            return
        log.info(
            "epoch %d/%d  train loss %.3f top-1 %.1f%%  val loss %.3f top-1 %.2f%%  %.0f img/s%s",
            row["epoch"],
            self.hp["epochs"],
            row["train_loss"],
            100 * row["train_top1"],
            row["val_loss"],
            100 * row["val_top1"],
            row["train_images_per_s"],
            "  (best)" if improved else "",
        )
