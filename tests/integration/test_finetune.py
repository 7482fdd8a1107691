"""The finetune stage end to end on CPU: accuracy, checkpoint metadata, strategies, resume, transfer, DDP."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgexfer.checkpoint import load_checkpoint, read_checkpoint_file  # noqa: E402
from edgexfer.data import samples_for_run  # noqa: E402
from edgexfer.manifest import Manifest  # noqa: E402
from edgexfer.stages.finetune import FinetuneConfig, run_finetune  # noqa: E402
from edgexfer.training.checkpoints import RunCheckpoints  # noqa: E402

TINY = dict(
    weights="none", size=32, batch_size=16, amp="off", channels_last="off", progress=False, patience=None
)


class NumpyAndRandomNoise:
    """An augmentation written with numpy's and Python's global generators, as many are."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image):
        tensor = self.transform(image)
        noise = np.random.normal(0.0, 0.5, size=tuple(tensor.shape)).astype(np.float32)
        return tensor * random.uniform(0.5, 1.5) + torch.from_numpy(noise)


def _numpy_top1(model, meta, samples) -> float:
    batch = np.stack([meta.preprocess.to_array(image) for image, _ in samples])
    with torch.no_grad():
        predictions = model(torch.from_numpy(batch)).argmax(1).numpy()
    return float((predictions == samples.labels).mean())


def test_trained_run_checkpoint_carries_metadata_and_its_accuracy(trained_run):
    manifest = Manifest.open(trained_run)
    assert manifest.is_fresh("checkpoint") and manifest.is_fresh("finetune_plot")
    model, meta = load_checkpoint(manifest.path_of("checkpoint"))
    assert meta.arch == "resnet18" and meta.class_names == ["blue", "green", "red"]
    assert (meta.preprocess.size, meta.preprocess.resize_size) == (32, 37)
    assert meta.preprocess.mean == (0.485, 0.456, 0.406) and meta.weights_source == "none"
    assert len(meta.dataset_fingerprint) == 32 and meta.extra["strategy"] == "full"
    recorded = manifest.get("checkpoint").metrics["val_top1"]
    assert recorded >= 0.95
    # the numpy evaluation path every later stage uses gives the accuracy training recorded
    assert _numpy_top1(model, meta, samples_for_run(trained_run, "val")) == pytest.approx(recorded)
    history = json.loads((trained_run / "finetune" / "metrics.json").read_text())["history"]
    assert len(history) == 8 and history[-1]["train_loss"] < history[0]["train_loss"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "strategy, epochs, changed_prefixes", [("linear", 8, ("fc.",)), ("partial", 3, ("layer4.", "fc."))]
)
def test_frozen_parts_keep_the_source_weights(
    trained_run, split_image_folder, tmp_path, strategy, epochs, changed_prefixes
):
    source = Manifest.open(trained_run).path_of("checkpoint")
    result = run_finetune(
        FinetuneConfig(
            out=tmp_path / "run",
            data=str(split_image_folder),
            epochs=epochs,
            strategy=strategy,
            classes="red,blue",
            **dict(TINY, weights=str(source)),
        )
    )
    before = read_checkpoint_file(source)["state_dict"]
    after = read_checkpoint_file(result.checkpoint)
    assert after["class_names"] == ["red", "blue"] and after["weights_source"].startswith("edgexfer:")
    for key, value in after["state_dict"].items():
        if key.startswith("fc."):
            assert value.shape[0] == 2
        elif key.startswith(changed_prefixes):
            continue
        else:  # frozen weights and frozen BatchNorm statistics are untouched
            assert torch.equal(value, before[key]), key
    moved = [
        k
        for k, v in after["state_dict"].items()
        if k.startswith("layer4.") and v.is_floating_point() and not torch.equal(v, before[k])
    ]
    assert bool(moved) == (strategy == "partial")
    assert result.best_val_top1 >= 0.9  # the source backbone already separates the colours


@pytest.mark.slow
def test_ctrl_c_keeps_checkpoints_and_resume_reproduces_the_uninterrupted_run(
    split_image_folder, tmp_path, monkeypatch
):
    options = dict(data=str(split_image_folder), epochs=3, strategy="full", seed=7, **TINY)
    reference = run_finetune(FinetuneConfig(out=tmp_path / "reference", **options))
    original_save = RunCheckpoints.save

    def save_then_interrupt(self, trainer, epoch, row, improved):
        original_save(self, trainer, epoch, row, improved)
        if epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(RunCheckpoints, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_finetune(FinetuneConfig(out=tmp_path / "run", **options))
    manifest = Manifest.open(tmp_path / "run")
    assert manifest.stage("finetune")["status"] == "interrupted" and manifest.is_fresh("checkpoint")
    assert read_checkpoint_file(tmp_path / "run" / "finetune" / "last.pt")["epoch"] == 2
    monkeypatch.setattr(RunCheckpoints, "save", original_save)
    resumed = run_finetune(FinetuneConfig(out=tmp_path / "run", resume=True, **options))
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    for got, want in zip(resumed.history, reference.history):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-4)
        assert got["val_top1"] == pytest.approx(want["val_top1"])
    final = read_checkpoint_file(resumed.last_checkpoint)["state_dict"]
    expected = read_checkpoint_file(reference.last_checkpoint)["state_dict"]
    for key in expected:
        torch.testing.assert_close(final[key], expected[key], rtol=1e-4, atol=1e-5)
    assert Manifest.open(tmp_path / "run").stage("finetune")["status"] == "done"
    with pytest.raises(Exception, match="trained with other options"):
        run_finetune(FinetuneConfig(out=tmp_path / "run", resume=True, **dict(options, seed=8)))


@pytest.mark.slow
@pytest.mark.parametrize("window", ["before_first_best", "between_last_and_metrics"])
def test_ctrl_c_inside_an_epochs_writes_records_what_is_on_disk(split_image_folder, tmp_path, monkeypatch, window):
    """Ctrl-C between last.pt and metrics.json (epoch 2) records the two saved epochs with a metrics.json
    that says so; Ctrl-C before the first best.pt records nothing (was: exit 2, 'cannot record artifact')."""
    from edgexfer.training import checkpoints as module

    options = dict(data=str(split_image_folder), epochs=3, strategy="full", seed=7, **TINY)
    calls = {"metrics": 0}
    real_write, real_save = module.write_metrics, module.save_checkpoint

    def write_then_maybe_interrupt(path, summary, history):
        calls["metrics"] += 1
        if window == "between_last_and_metrics" and calls["metrics"] == 2:
            raise KeyboardInterrupt  # epoch 2's last.pt is written, its metrics.json is not
        real_write(path, summary, history)

    def save_or_interrupt(path, *args, **kwargs):
        if window == "before_first_best":
            raise KeyboardInterrupt
        real_save(path, *args, **kwargs)

    monkeypatch.setattr(module, "write_metrics", write_then_maybe_interrupt)
    monkeypatch.setattr(module, "save_checkpoint", save_or_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_finetune(FinetuneConfig(out=tmp_path / "run", **options))
    if window == "before_first_best":
        assert not (tmp_path / "run" / "manifest.json").exists()
        return
    manifest = Manifest.open(tmp_path / "run")
    assert manifest.stage("finetune")["status"] == "interrupted"
    assert manifest.is_fresh("finetune_metrics") and manifest.is_fresh("checkpoint_last")
    metrics = json.loads((tmp_path / "run" / "finetune" / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["history"]] == [1, 2]
    assert read_checkpoint_file(tmp_path / "run" / "finetune" / "last.pt")["epoch"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1])
def test_resume_replays_numpy_and_python_random_augmentation(
    split_image_folder, tmp_path, monkeypatch, workers
):
    from edgexfer.preprocess import Preprocess

    original_transform = Preprocess.train_transform
    monkeypatch.setattr(
        Preprocess, "train_transform", lambda self: NumpyAndRandomNoise(original_transform(self))
    )
    options = dict(
        data=str(split_image_folder), epochs=2, strategy="full", seed=3, num_workers=workers, **TINY
    )
    reference = run_finetune(FinetuneConfig(out=tmp_path / "reference", **options))
    original_save = RunCheckpoints.save

    def save_then_interrupt(self, trainer, epoch, row, improved):
        original_save(self, trainer, epoch, row, improved)
        raise KeyboardInterrupt

    monkeypatch.setattr(RunCheckpoints, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_finetune(FinetuneConfig(out=tmp_path / "run", **options))
    monkeypatch.setattr(RunCheckpoints, "save", original_save)
    resumed = run_finetune(FinetuneConfig(out=tmp_path / "run", resume=True, **options))
    # epoch 2 of the resumed run draws the same noise as epoch 2 of the uninterrupted one
    assert resumed.history[1]["train_loss"] == pytest.approx(reference.history[1]["train_loss"], rel=1e-5)
    final = read_checkpoint_file(resumed.last_checkpoint)["state_dict"]
    expected = read_checkpoint_file(reference.last_checkpoint)["state_dict"]
    for key in expected:
        torch.testing.assert_close(final[key], expected[key], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_embedded_data_defaults_and_class_subset(tmp_path):
    result = run_finetune(
        FinetuneConfig(
            out=tmp_path / "run",
            data="embedded",
            classes="Sandal,Bag",
            max_per_class=20,
            strategy="linear",
            epochs=3,
            **dict(TINY, size=None),
        )
    )
    payload = read_checkpoint_file(result.checkpoint)
    assert payload["class_names"] == ["Sandal", "Bag"]
    assert payload["preprocess"]["size"] == 64 and payload["preprocess"]["resize_size"] == 64
    assert payload["preprocess"]["augment"] == "light"
    summary = json.loads(result.metrics_path.read_text())["summary"]
    assert summary["train_images"] == 40 and summary["val_images"] == 400


@pytest.mark.slow
def test_ddp_two_cpu_processes_train_and_only_rank0_writes(split_image_folder, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "edgexfer",
        "finetune",
        "--data",
        str(split_image_folder),
        "--out",
        str(out),
        "--weights",
        "none",
        "--size",
        "32",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--amp",
        "off",
        "--no-progress",
        "--strategy",
        "full",
    ]
    # own session, so a hang kills torchrun *and* its workers rather than orphaning them
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
    assert proc.returncode == 0, stderr[-3000:]
    assert stdout.count("checkpoint:") == 1  # only rank 0 reports
    manifest = Manifest.open(out)
    assert (
        manifest.is_fresh("checkpoint") and manifest.stage("finetune")["config"]["runtime"]["world_size"] == 2
    )
    assert manifest.stage("finetune")["config"]["runtime"]["backend"] == "gloo"
    history = json.loads((out / "finetune" / "metrics.json").read_text())["history"]
    assert len(history) == 2
    # precise BN pooled both ranks' shards (24 + 24 training images) into one set of statistics
    assert [row["precise_bn_images"] for row in history] == [48, 48]
    # validation is sharded over the ranks and summed: every one of the 18 images counted once
    model, meta = load_checkpoint(manifest.path_of("checkpoint"))
    val = samples_for_run(out, "val")
    assert len(val) == 18
    assert _numpy_top1(model, meta, val) == pytest.approx(manifest.get("checkpoint").metrics["val_top1"])
    assert not list(out.rglob("*.partial"))


def test_early_stopping_stops_after_patience_epochs_without_gain(split_image_folder, tmp_path):
    # a learning rate too small to change any prediction: val top-1 never beats epoch 1
    options = dict(TINY, patience=2, lr=1e-12)
    result = run_finetune(
        FinetuneConfig(
            out=tmp_path / "run", data=str(split_image_folder), strategy="linear", epochs=10, **options
        )
    )
    assert result.stopped_early and result.epochs_run == 3 and result.best_epoch == 1
    summary = json.loads(result.metrics_path.read_text())["summary"]
    assert summary["stopped_early"] is True and summary["epochs_run"] == 3
    assert read_checkpoint_file(result.checkpoint)["epoch"] == 1


@pytest.mark.slow
def test_precise_bn_validates_a_low_momentum_family_and_collapse_is_reported(split_image_folder, tmp_path, caplog):
    """mobilenet_v3_small from scratch: torchvision builds its BatchNorm with momentum 0.01, so after
    3 short epochs the running statistics still describe the initial weights and validation sits at
    chance (1/3); recomputing them before validation gives the accuracy the weights have."""
    runs = {}
    for images in (0, 1024):
        with caplog.at_level("WARNING", logger="edgexfer.finetune"):
            runs[images] = run_finetune(
                FinetuneConfig(
                    out=tmp_path / f"bn{images}", model="mobilenet_v3_small", data=str(split_image_folder),
                    strategy="full", epochs=3, precise_bn=images, **TINY
                )
            )
    stale, precise = runs[0], runs[1024]
    assert [row["val_top1"] for row in stale.history] == pytest.approx([1 / 3] * 3)
    assert precise.best_val_top1 >= 0.6
    assert [row["precise_bn_images"] for row in precise.history] == [48] * 3
    # precise BN changes no weight and draws no random number: both runs train the same weights
    assert [row["train_loss"] for row in precise.history] == [row["train_loss"] for row in stale.history]
    weights = [read_checkpoint_file(run.last_checkpoint)["state_dict"] for run in (stale, precise)]
    for key, value in weights[0].items():
        same = torch.equal(value, weights[1][key])
        assert same != key.endswith(("running_mean", "running_var")), key
    # the stale run says so in one line: the log, metrics.json, the manifest's checkpoint, the result
    line = json.loads(stale.metrics_path.read_text())["summary"]["collapse"]
    assert line.startswith("collapse: val top-1 33.3% is at chance (33.3%") and "momentum 0.01" in line
    assert "--precise-bn" in line and stale.collapse == line
    assert Manifest.open(stale.run_dir).get("checkpoint").metrics["collapse"] == line
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [line]
    assert json.loads(precise.metrics_path.read_text())["summary"]["collapse"] is None
    assert Manifest.open(precise.run_dir).get("checkpoint").metrics["collapse"] is None
