"""Interruption: real `edgexfer` processes killed (SIGINT = Ctrl-C, SIGKILL) at several points.

After every kill the run directory must be consistent (every artifact the manifest records exists
with its recorded hash and unchanged inputs; no artifact file half-written under its real name), and
running the same command again must finish the stage.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgexfer.manifest import Manifest

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _edgexfer(*args: str) -> list:
    return [sys.executable, "-m", "edgexfer", "-q", *args]


def _finetune_args(data: Path, out: Path, epochs: int = 3) -> list:
    return _edgexfer("finetune", "--model", "resnet18", "--weights", "none", "--data", str(data), "--size", "32",
                     "--epochs", str(epochs), "--batch-size", "8", "--workers", "0", "--no-progress",
                     "--out", str(out))


def _kill_when(cmd: list, condition, sig: int, timeout: float = 120.0) -> int:
    """Start ``cmd``; when ``condition()`` holds (or the process ends), send ``sig``; return the exit code."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if condition():
            proc.send_signal(sig)
            break
        time.sleep(0.05)
    _, err = proc.communicate(timeout=timeout)
    assert b"Traceback" not in err, err.decode()[-2000:]
    return proc.returncode


def _consistent(run_dir: Path) -> None:
    if not (run_dir / "manifest.json").exists():
        return  # killed before anything was recorded: nothing a later stage could use
    manifest = Manifest.open(run_dir)
    assert manifest.audit() == []


def _checkpoint_loads(path: Path) -> None:
    from edgexfer.checkpoint import load_checkpoint

    load_checkpoint(path)


@pytest.mark.parametrize("sig, point", [
    (signal.SIGINT, "after_first_epoch"),
    (signal.SIGKILL, "after_first_epoch"),
    (signal.SIGKILL, "at_start"),
])
def test_finetune_interrupted_then_resumed(tmp_path, split_image_folder, sig, point):
    out = tmp_path / "run"
    last = out / "finetune" / "last.pt"
    started = time.monotonic()
    condition = (lambda: last.exists()) if point == "after_first_epoch" else (lambda: time.monotonic() - started > 1.5)
    code = _kill_when(_finetune_args(split_image_folder, out), condition, sig)
    if sig == signal.SIGINT and point == "after_first_epoch":
        assert code == 130
    _consistent(out)
    if last.exists():
        _checkpoint_loads(last)  # the last good checkpoint is intact, never half-written
    resume = ["--resume"] if last.exists() else []
    done = subprocess.run(_finetune_args(split_image_folder, out) + resume, env=ENV, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    manifest = Manifest.open(out)
    assert manifest.audit() == []
    assert manifest.stage("finetune")["metrics"]["epochs_run"] == 3
    _checkpoint_loads(manifest.path_of("checkpoint"))


@pytest.mark.parametrize("delay", [0.5, 3.0, 6.0])
def test_export_killed_leaves_no_half_written_onnx(tmp_path, split_image_folder, delay):
    out = tmp_path / "run"
    subprocess.run(_finetune_args(split_image_folder, out, epochs=1), env=ENV, check=True, capture_output=True)
    export = _edgexfer("export", str(out), "--int8", "--target", "all", "--calib-method", "minmax",
                       "--calib-size", "16", "--eval-size", "16", "--no-shared-cache", "--no-progress")
    started = time.monotonic()
    _kill_when(export, lambda: time.monotonic() - started > delay, signal.SIGKILL)
    _consistent(out)
    manifest = Manifest.open(out)
    for onnx_file in (out / "export").glob("*.onnx") if (out / "export").exists() else []:
        recorded = {manifest.path_of(n) for n in manifest.artifacts if manifest.get(n).kind.startswith("onnx")}
        if onnx_file not in recorded:
            # an unrecorded .onnx must still be a complete model (written atomically), never a fragment
            import onnx

            onnx.checker.check_model(str(onnx_file))
    done = subprocess.run(export, env=ENV, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    manifest = Manifest.open(out)
    assert manifest.audit() == []
    for name in ("onnx", "onnx_int8_cpu", "onnx_int8_tensorrt"):
        assert manifest.is_fresh(name)


def test_two_runs_at_once_do_not_interfere(tmp_path, split_image_folder):
    """Two exports in different run directories share the calibration cache folder at the same time."""
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        subprocess.run(_finetune_args(split_image_folder, run, epochs=1), env=ENV, check=True, capture_output=True)
    cache = tmp_path / "cache"
    procs = [subprocess.Popen(_edgexfer("export", str(run), "--int8", "--target", "cpu", "--calib-method", "minmax",
                                        "--calib-size", "16", "--eval-size", "16", "--cache-dir", str(cache),
                                        "--no-progress"),
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for run in runs]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]
    for run in runs:
        manifest = Manifest.open(run)
        assert manifest.audit() == [] and manifest.is_fresh("onnx_int8_cpu")
    assert not list(cache.rglob("*.partial"))
