"""One fine-tuning run from start (or ``--resume``) to the manifest record."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict

from edgexfer.checkpoint import CheckpointMeta
from edgexfer.config import to_dict
from edgexfer.manifest import Manifest, now_iso
from edgexfer.stages.finetune.config import STAGE, FinetuneConfig, FinetuneResult
from edgexfer.stages.finetune.inputs import Prepared, prepare
from edgexfer.torchdeps import require_torch
from edgexfer.training.checkpoints import RunCheckpoints
from edgexfer.training.collapse import CollapseCheck
from edgexfer.training.engines import EngineInputs, make_engine
from edgexfer.training.precise_bn import lowest_momentum
from edgexfer.training.report import plot_curves
from edgexfer.training.runtime import Runtime, resolve_runtime, shutdown_distributed
from edgexfer.training.state import TrainState
from edgexfer.training.trainer import Trainer

log = logging.getLogger("edgexfer.finetune")


def run_finetune(config: FinetuneConfig) -> FinetuneResult:
    """Fine-tune per ``config``; write checkpoints, metrics and plot; record them in the manifest."""
    require_torch("edgexfer finetune")
    runtime = resolve_runtime(config.device, config.amp, config.channels_last)
    try:
        return FinetuneRun(config, runtime).run()
    finally:
        shutdown_distributed()


class FinetuneRun:
    """The finetune stage body: prepare, train (or resume), and record. Use :meth:`run`."""

    def __init__(self, config: FinetuneConfig, runtime: Runtime):
        self.config = config
        self.runtime = runtime
        self.started = now_iso()
        self.stage_dir = config.out / STAGE

    def run(self) -> FinetuneResult:
        """Train, checkpoint after every epoch, record in the manifest; return the result."""
        config = self.config
        prepared = prepare(config, self.runtime)
        engine = make_engine(config.strategy, self._engine_inputs(prepared))
        trainer = Trainer(engine, prepared.hp, config.optimizer, config.momentum)
        checkpoints = RunCheckpoints(
            self.stage_dir,
            self._checkpoint_meta(prepared),
            config.resume_key(),
            self._fixed_summary(prepared),
            self._collapse_check(prepared).diagnose,
        )
        if config.resume:
            checkpoints.resume(trainer)
        try:
            trainer.fit(config.patience, checkpoints.save)
        except KeyboardInterrupt:
            # record what is on disk: the epochs last.pt holds (Ctrl-C can fall inside an epoch's writes)
            if self.runtime.is_main and checkpoints.settle(trainer.state):
                del trainer.state.history[checkpoints.saved_epochs :]
                self._record(prepared, checkpoints, trainer.state, "interrupted")
            raise
        return self._record(prepared, checkpoints, trainer.state, "done")

    def _engine_inputs(self, prepared: Prepared) -> EngineInputs:
        config = self.config
        return EngineInputs(
            model=prepared.model,
            train=prepared.train,
            val=prepared.val,
            preprocess=prepared.preprocess,
            runtime=self.runtime,
            batch_size=config.batch_size,
            seed=config.seed,
            workers=prepared.workers,
            label_smoothing=config.label_smoothing,
            progress=config.progress,
            requested_augment=config.augment,
            precise_bn=config.precise_bn,
        )

    def _collapse_check(self, prepared: Prepared) -> CollapseCheck:
        """The collapse rule for this run's data and model (:mod:`edgexfer.training.collapse`)."""
        momentum = lowest_momentum(prepared.model)
        return CollapseCheck.from_labels(
            prepared.val.labels,
            len(prepared.class_names),
            len(prepared.train),
            momentum,
            self.config.precise_bn if momentum is not None else 0,
        )

    def _checkpoint_meta(self, prepared: Prepared) -> CheckpointMeta:
        """What best.pt and last.pt say about the model; epoch and metrics are filled in per epoch."""
        return CheckpointMeta(
            arch=self.config.model,
            class_names=prepared.class_names,
            preprocess=prepared.preprocess,
            weights_source=prepared.weights_source,
            dataset_fingerprint=prepared.data_info["fingerprint"],
            extra={
                "strategy": self.config.strategy,
                "data_spec": prepared.spec.to_dict(),
                "hyperparameters": prepared.hp,
            },
        )

    def _fixed_summary(self, prepared: Prepared) -> Dict[str, Any]:
        info = prepared.data_info
        return {
            "model": self.config.model,
            "strategy": self.config.strategy,
            "weights": prepared.weights_source,
            "class_names": prepared.class_names,
            "train_images": info["train_images"],
            "val_images": info["val_images"],
            "skipped_files": info["skipped_files"],
            "known_limits": prepared.known_limits,
        }

    def _record(
        self, prepared: Prepared, checkpoints: RunCheckpoints, state: TrainState, status: str
    ) -> FinetuneResult:
        """Plot, then record every artifact and the stage in the manifest (rank 0 only)."""
        plot = self.stage_dir / "curves.png"
        collapse = checkpoints.summary(state)["collapse"]
        if self.runtime.is_main:
            if collapse:
                log.warning("%s", collapse)
            title = f"{self.config.model} ({self.config.strategy}) on {Path(prepared.spec.data).name}"
            plot_curves(plot, state.history, title)
            self._write_manifest(prepared, checkpoints, state, status, plot)
        return FinetuneResult(
            run_dir=self.config.out,
            checkpoint=checkpoints.best,
            last_checkpoint=checkpoints.last,
            metrics_path=checkpoints.metrics,
            plot_path=plot,
            best_val_top1=state.best_top1,
            best_epoch=state.best_epoch,
            epochs_run=len(state.history),
            stopped_early=state.stopped_early,
            class_names=prepared.class_names,
            history=list(state.history),
            skipped_files=prepared.data_info["skipped_files"],
            collapse=collapse,
        )

    def _write_manifest(
        self, prepared: Prepared, checkpoints: RunCheckpoints, state: TrainState, status: str, plot: Path
    ) -> None:
        config, summary = self.config, checkpoints.summary(state)
        record = dict(
            to_dict(config),
            data_spec=prepared.spec.to_dict(),
            class_names=prepared.class_names,
            preprocess=prepared.preprocess.to_dict(),
            hyperparameters=prepared.hp,
            weights_source=prepared.weights_source,
            runtime=self.runtime.describe(),
            data_summary=prepared.data_info,
            freeze={"trainable": len(prepared.freeze["trainable"]), "frozen": len(prepared.freeze["frozen"])},
        )
        with Manifest.update(config.out, create=True) as manifest:
            manifest.add_artifact(
                "checkpoint",
                checkpoints.best,
                kind="checkpoint",
                stage=STAGE,
                metrics={"val_top1": state.best_top1, "epoch": state.best_epoch, "collapse": summary["collapse"]},
                config={"arch": config.model, "class_names": prepared.class_names},
            )
            manifest.add_artifact(
                "checkpoint_last",
                checkpoints.last,
                kind="checkpoint",
                stage=STAGE,
                metrics={"epoch": len(state.history)},
            )
            manifest.add_artifact(
                "finetune_metrics",
                checkpoints.metrics,
                kind="metrics",
                stage=STAGE,
                inputs=["checkpoint"],
                metrics=summary,
            )
            manifest.add_artifact("finetune_plot", plot, kind="plot", stage=STAGE, inputs=["checkpoint"])
            manifest.record_stage(STAGE, record, metrics=summary, status=status, started=self.started)
