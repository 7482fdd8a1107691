"""One fine-tuning run from start (or ``--resume``) to the manifest record.

Two engines share the epoch loop: the ``linear`` strategy computes the frozen backbone's features
once and trains only the head on them; ``partial`` and ``full`` train the model on augmented images.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Optional

from edgexfer.checkpoint import CheckpointMeta, read_checkpoint_file, save_checkpoint
from edgexfer.config import to_dict
from edgexfer.errors import ConfigError
from edgexfer.manifest import Manifest, now_iso
from edgexfer.training import loop
from edgexfer.training.report import plot_curves, write_metrics
from edgexfer.training.runtime import Runtime, broadcast_flag, seed_everything

log = logging.getLogger("edgexfer.finetune")


class FinetuneRun:
    """State of one run: data, model, optimizer, schedule, history. Use :meth:`run`."""

    def __init__(self, config: Any, runtime: Runtime):
        self.config = config
        self.runtime = runtime
        self.history: List[Dict[str, Any]] = []
        self.best_top1 = -1.0
        self.best_epoch = 0
        self.bad_epochs = 0
        self.start_epoch = 1
        self.stopped_early = False
        self.started = now_iso()

    # ---- set-up --------------------------------------------------------------------------------
    def _prepare(self) -> None:
        import torch

        from edgexfer.data import load_splits
        from edgexfer.models import apply_strategy, build_model
        from edgexfer.stages.finetune import (
            STAGE,
            check_run_dir,
            choose_preprocess,
            default_workers,
            describe_data,
            load_weights,
        )

        cfg = self.config
        self.spec = cfg.data_spec()
        self.out = cfg.out
        self.stage_dir = cfg.out / STAGE
        self.last_path = check_run_dir(cfg.out, cfg.resume)
        seed_everything(cfg.seed)
        self.train_samples, self.val_samples = load_splits(self.spec)
        self.data_info = describe_data(self.train_samples, self.val_samples)
        self.class_names = self.train_samples.class_names
        self.model = build_model(cfg.model, len(self.class_names))
        self.weights_source, weights_meta = load_weights(self.model, cfg.weights, cfg.model)
        self.hp = cfg.hyperparameters(pretrained=cfg.weights != "none")
        self.preprocess = choose_preprocess(cfg, self.spec, weights_meta)
        self.freeze = apply_strategy(self.model, cfg.strategy, cfg.unfreeze_blocks)
        self.workers = cfg.num_workers if cfg.num_workers is not None else default_workers()
        memory_format = torch.channels_last if self.runtime.channels_last else torch.preserve_format
        self.model.to(self.runtime.device, memory_format=memory_format)
        self.loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.eval_loss_fn = torch.nn.CrossEntropyLoss()
        if self.runtime.is_main:
            info = self.data_info
            log.info(
                "data: %d train / %d val images, %d classes (%s)%s",
                info["train_images"],
                info["val_images"],
                info["num_classes"],
                ", ".join(self.class_names[:10]),
                f"; skipped {info['skipped_files']} unusable file(s)" if info["skipped_files"] else "",
            )
            log.info(
                "model: %s, weights %s, strategy %s (%d trainable / %d frozen tensors), input %dx%d, %s",
                cfg.model,
                self.weights_source,
                cfg.strategy,
                len(self.freeze["trainable"]),
                len(self.freeze["frozen"]),
                self.preprocess.size,
                self.preprocess.size,
                self.runtime.describe(),
            )

    def _build_engine(self) -> None:
        import torch

        cfg, runtime = self.config, self.runtime
        per_rank = max(1, cfg.batch_size // runtime.world_size)
        if cfg.strategy == "linear":
            self._build_feature_cache(per_rank)
            trainable: Any = self.head
        else:
            self.train_loader = loop.make_train_loader(
                self.train_samples,
                self.preprocess.train_transform(),
                cfg.batch_size,
                cfg.seed,
                runtime,
                self.workers,
            )
            self.val_loader = loop.make_eval_loader(
                self.val_samples, self.preprocess.eval_transform(), max(per_rank, 64), runtime, self.workers
            )
            self.steps_per_epoch = len(self.train_loader)
            trainable = self.model
        self.wrapped = trainable
        if runtime.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [runtime.device.index] if runtime.device.type == "cuda" else None
            self.wrapped = DistributedDataParallel(trainable, device_ids=ids)
        groups = loop.param_groups(
            self.model, self.hp["lr"], self.hp["weight_decay"], self.hp["backbone_lr_mult"]
        )
        self.optimizer = loop.make_optimizer(
            groups, cfg.optimizer, self.hp["lr"], cfg.momentum, self.hp["weight_decay"]
        )
        total = self.steps_per_epoch * self.hp["epochs"]
        warmup = int(round(self.hp["warmup_epochs"] * self.steps_per_epoch))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, loop.warmup_cosine(total, warmup))
        use_scaler = runtime.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None

    def _build_feature_cache(self, per_rank: int) -> None:
        """Backbone features of this rank's share of train and val, computed once (no augmentation)."""
        import torch

        cfg, runtime = self.config, self.runtime
        if cfg.augment not in (None, "none") and runtime.is_main:
            log.warning(
                "strategy linear trains on cached features of un-augmented images; --augment %s "
                "is not applied",
                cfg.augment,
            )
        transform = self.preprocess.eval_transform()
        batch = max(per_rank, 64)
        train_loader = loop.make_eval_loader(self.train_samples, transform, batch, runtime, self.workers)
        val_loader = loop.make_eval_loader(self.val_samples, transform, batch, runtime, self.workers)
        show = cfg.progress
        self.train_features, self.train_labels = loop.extract_features(
            self.model, train_loader, runtime, show, "features (train)"
        )
        self.val_features, self.val_labels = loop.extract_features(
            self.model, val_loader, runtime, show, "features (val)"
        )
        self.head = loop.head_forward(self.model)
        # every rank must take the same number of steps or DDP's all-reduce would wait forever
        counts = [0.0] * runtime.world_size
        counts[runtime.rank] = float(len(self.train_labels))
        from edgexfer.training.runtime import all_reduce_sum

        longest = int(max(all_reduce_sum(runtime, counts)))
        self.head_batch = per_rank
        self.steps_per_epoch = math.ceil(longest / per_rank)
        if len(self.train_labels) < longest:  # pad this shard by repeating items
            extra = torch.arange(longest - len(self.train_labels)) % len(self.train_labels)
            self.train_features = torch.cat([self.train_features, self.train_features[extra]])
            self.train_labels = torch.cat([self.train_labels, self.train_labels[extra]])

    # ---- resume --------------------------------------------------------------------------------
    def _resume(self) -> None:
        import torch

        payload = read_checkpoint_file(self.last_path)
        extra = payload.get("extra", {})
        if extra.get("resume_key") != self.config.resume_key():
            raise ConfigError(
                f"--resume: {self.last_path} was trained with other options (model, data, "
                "strategy or hyperparameters); rerun with the same options, or without --resume"
            )
        self.model.load_state_dict(payload["state_dict"])
        self.optimizer.load_state_dict(extra["optimizer"])
        self.scheduler.load_state_dict(extra["scheduler"])
        if self.scaler is not None and extra.get("scaler"):
            self.scaler.load_state_dict(extra["scaler"])
        torch.set_rng_state(extra["rng_torch"])
        self.history = list(extra["history"])
        self.best_top1, self.best_epoch = float(extra["best_top1"]), int(extra["best_epoch"])
        self.bad_epochs = int(extra["bad_epochs"])
        self.stopped_early = bool(extra.get("stopped_early", False))
        self.start_epoch = int(payload["epoch"]) + 1
        if self.runtime.is_main:
            log.info(
                "resuming after epoch %d (best val top-1 %.2f%% at epoch %d)",
                payload["epoch"],
                100 * self.best_top1,
                self.best_epoch,
            )

    # ---- the loop ------------------------------------------------------------------------------
    def _epoch(self, epoch: int) -> Dict[str, Any]:
        import torch

        cfg, runtime = self.config, self.runtime
        num_classes = len(self.class_names)
        if cfg.strategy == "linear":
            generator = torch.Generator().manual_seed(cfg.seed * 100003 + epoch + runtime.rank)
            self.wrapped.train()
            train = loop.train_head_epoch(
                self.wrapped,
                self.train_features,
                self.train_labels,
                self.optimizer,
                self.scheduler,
                self.loss_fn,
                runtime,
                self.head_batch,
                generator,
                num_classes,
            )
            val = loop.evaluate_head(
                self.head, self.val_features, self.val_labels, self.eval_loss_fn, runtime, num_classes
            )
        else:
            self.train_loader.sampler.set_epoch(epoch)
            self.model.train()
            loop.set_frozen_modules_eval(self.model)
            train = loop.train_one_epoch(
                self.wrapped,
                self.train_loader,
                self.optimizer,
                self.scheduler,
                self.loss_fn,
                runtime,
                self.scaler,
                cfg.progress,
                f"epoch {epoch}/{self.hp['epochs']}",
                num_classes,
            )
            val = loop.evaluate(self.model, self.val_loader, self.eval_loss_fn, runtime, False, num_classes)
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
        }

    def run(self) -> Any:
        """Train, checkpoint, record; return a :class:`~edgexfer.stages.finetune.FinetuneResult`."""
        self._prepare()
        self._build_engine()
        if self.config.resume:
            self._resume()
        status = "done"
        try:
            for epoch in range(self.start_epoch, self.hp["epochs"] + 1):
                if self.stopped_early:
                    break
                row = self._epoch(epoch)
                self.history.append(row)
                improved = row["val_top1"] > self.best_top1
                if improved:
                    self.best_top1, self.best_epoch, self.bad_epochs = row["val_top1"], epoch, 0
                else:
                    self.bad_epochs += 1
                patience = self.config.patience
                self.stopped_early = patience is not None and self.bad_epochs >= patience
                self.stopped_early = broadcast_flag(self.runtime, self.stopped_early)
                self._log_epoch(row, improved)
                self._save(epoch, row, improved)
            if self.stopped_early and self.runtime.is_main:
                log.info("early stop: no val top-1 gain for %d epochs", self.config.patience)
        except KeyboardInterrupt:
            status = "interrupted"
            if self.runtime.is_main and self.history:
                self._record(status)
            raise
        return self._record(status)

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

    def _meta(
        self, epoch: int, row: Dict[str, Any], extra: Optional[Dict[str, Any]] = None
    ) -> CheckpointMeta:
        return CheckpointMeta(
            arch=self.config.model,
            class_names=list(self.class_names),
            preprocess=self.preprocess,
            weights_source=self.weights_source,
            dataset_fingerprint=self.data_info["fingerprint"],
            epoch=epoch,
            metrics={"val_top1": row["val_top1"], "val_top5": row["val_top5"], "val_loss": row["val_loss"]},
            extra=dict(
                extra or {},
                strategy=self.config.strategy,
                data_spec=self.spec.to_dict(),
                hyperparameters=self.hp,
            ),
        )

    def _save(self, epoch: int, row: Dict[str, Any], improved: bool) -> None:
        """Rank 0 writes best.pt (when improved), then last.pt, then metrics.json; each atomically."""
        import torch

        if not self.runtime.is_main:
            return
        state = self.model.state_dict()
        if improved:
            save_checkpoint(self.stage_dir / "best.pt", state, self._meta(epoch, row))
        train_state = {
            "resume_key": self.config.resume_key(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng_torch": torch.get_rng_state(),
            "history": self.history,
            "best_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "stopped_early": self.stopped_early,
        }
        save_checkpoint(self.last_path, state, self._meta(epoch, row, train_state))
        write_metrics(self.stage_dir / "metrics.json", self._summary(), self.history)

    def _summary(self) -> Dict[str, Any]:
        last = self.history[-1] if self.history else {}
        return {
            "best_val_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "epochs_run": len(self.history),
            "stopped_early": self.stopped_early,
            "last_val_top1": last.get("val_top1"),
            "train_images_per_s": last.get("train_images_per_s"),
            "model": self.config.model,
            "strategy": self.config.strategy,
            "weights": self.weights_source,
            "class_names": list(self.class_names),
            "train_images": self.data_info["train_images"],
            "val_images": self.data_info["val_images"],
            "skipped_files": self.data_info["skipped_files"],
        }

    def _record(self, status: str) -> Any:
        """Plot, then record every artifact and the stage in the manifest (rank 0 only)."""
        from edgexfer.stages.finetune import STAGE, FinetuneResult

        best, metrics, plot = (
            self.stage_dir / "best.pt",
            self.stage_dir / "metrics.json",
            self.stage_dir / "curves.png",
        )
        if self.runtime.is_main:
            title = f"{self.config.model} ({self.config.strategy}) on {Path(self.spec.data).name}"
            plot_curves(plot, self.history, title)
            summary = self._summary()
            record = dict(
                to_dict(self.config),
                data_spec=self.spec.to_dict(),
                class_names=list(self.class_names),
                preprocess=self.preprocess.to_dict(),
                hyperparameters=self.hp,
                weights_source=self.weights_source,
                runtime=self.runtime.describe(),
                data_summary=self.data_info,
                freeze={"trainable": len(self.freeze["trainable"]), "frozen": len(self.freeze["frozen"])},
            )
            with Manifest.update(self.out, create=True) as manifest:
                best_metrics = {"val_top1": self.best_top1, "epoch": self.best_epoch}
                manifest.add_artifact(
                    "checkpoint",
                    best,
                    kind="checkpoint",
                    stage=STAGE,
                    metrics=best_metrics,
                    config={"arch": self.config.model, "class_names": list(self.class_names)},
                )
                manifest.add_artifact(
                    "checkpoint_last",
                    self.last_path,
                    kind="checkpoint",
                    stage=STAGE,
                    metrics={"epoch": len(self.history)},
                )
                manifest.add_artifact(
                    "finetune_metrics",
                    metrics,
                    kind="metrics",
                    stage=STAGE,
                    inputs=["checkpoint"],
                    metrics=summary,
                )
                manifest.add_artifact("finetune_plot", plot, kind="plot", stage=STAGE, inputs=["checkpoint"])
                manifest.record_stage(STAGE, record, metrics=summary, status=status, started=self.started)
        return FinetuneResult(
            run_dir=self.out,
            checkpoint=best,
            last_checkpoint=self.last_path,
            metrics_path=metrics,
            plot_path=plot,
            best_val_top1=self.best_top1,
            best_epoch=self.best_epoch,
            epochs_run=len(self.history),
            stopped_early=self.stopped_early,
            class_names=list(self.class_names),
            history=list(self.history),
            skipped_files=self.data_info["skipped_files"],
        )
