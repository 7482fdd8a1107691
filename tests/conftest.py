"""Shared fixtures: tiny generated image folders, tiny run directories, a CLI runner."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
# Keep tests deterministic and polite on 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "2")
# Tests never download weights (timm's hub loading would on a machine with network): the offline messages
# are what the bad-input cases check.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CLASS_COLOURS = {"red": (200, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 200)}


def make_image_folder(root: Path, per_class: int = 12, size: int = 40, classes: Dict[str, tuple] = None,
                      seed: int = 0, ext: str = ".png") -> Path:
    """Write ``root/<class>/<i>.png`` images: a coloured square on noise, learnable in a few steps."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    classes = classes or CLASS_COLOURS
    for name, colour in classes.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 90, size=(size, size, 3), dtype=np.uint8)
            lo, hi = size // 4 + rng.integers(-3, 4), 3 * size // 4 + rng.integers(-3, 4)
            pixels[lo:hi, lo:hi] = np.clip(np.array(colour) + rng.integers(-25, 26, size=3), 0, 255)
            Image.fromarray(pixels).save(folder / f"img_{i:03d}{ext}")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """One folder of 3 classes x 12 images (to be split by edgexfer)."""
    return make_image_folder(tmp_path / "images")


@pytest.fixture
def split_image_folder(tmp_path: Path) -> Path:
    """``train/`` and ``val/`` folders of 3 classes."""
    root = tmp_path / "split"
    make_image_folder(root / "train", per_class=16, seed=1)
    make_image_folder(root / "val", per_class=6, seed=2)
    return root


def make_run_dir(run_dir: Path, arch: str = "resnet18", class_names: List[str] = None, size: int = 32,
                 seed: int = 0) -> Path:
    """A run directory with an edgexfer checkpoint of a randomly initialised model (no training).

    For tests of later stages that need a valid checkpoint and manifest but not accuracy.
    """
    from edgexfer.preprocess import Preprocess
    from edgexfer.random_run import write_random_run

    preprocess = Preprocess(size=size, resize_size=size, augment="none")
    return write_random_run(run_dir, arch, class_names or list(CLASS_COLOURS), preprocess, seed)


@pytest.fixture
def random_run(tmp_path: Path) -> Path:
    """A run directory holding an untrained resnet18 checkpoint for 3 classes at 32x32."""
    return make_run_dir(tmp_path / "run")


@pytest.fixture
def cli_runner():
    """Invoke ``edgexfer`` in-process through :func:`edgexfer.cli.main`; returns (exit_code, stdout, stderr)."""
    import contextlib
    import io

    from edgexfer.cli import main

    def run(*args: str):
        out, err = io.StringIO(), io.StringIO()
        code = 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(list(args))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        return code, out.getvalue(), err.getvalue()

    return run


# ---- finetune fixtures ---------------------------------------------------------------------------
TRAINED_RUN_EPOCHS = 8


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A run directory from a real, short ``run_finetune``: resnet18 from random init at 32x32 on a
    generated 3-class folder (train/ 24 per class, val/ 16 per class), full strategy, fp32.

    It reaches 100% val top-1 (asserted here). READ-ONLY: tests that write into a run must use
    ``trained_run_copy``. ``samples_for_run(trained_run, "val")`` gives its 48 validation images.
    """
    from edgexfer.data import samples_for_run
    from edgexfer.stages.finetune import FinetuneConfig, run_finetune

    root = tmp_path_factory.mktemp("trained_run")
    data = root / "data"
    make_image_folder(data / "train", per_class=24, size=40, seed=1)
    make_image_folder(data / "val", per_class=16, size=40, seed=2)
    config = FinetuneConfig(out=root / "run", model="resnet18", weights="none", data=str(data), size=32,
                            strategy="full", epochs=TRAINED_RUN_EPOCHS, batch_size=16, lr=0.01, seed=0,
                            amp="off", channels_last="off", patience=None, progress=False)
    result = run_finetune(config)
    assert result.best_val_top1 >= 0.95, f"trained_run fixture only reached {result.best_val_top1:.2%}"
    assert len(samples_for_run(result.run_dir, "val")) == 48
    return result.run_dir


@pytest.fixture
def trained_run_copy(trained_run: Path, tmp_path: Path) -> Path:
    """A private, writable copy of ``trained_run`` (same manifest, checkpoints and data record)."""
    import shutil

    return Path(shutil.copytree(trained_run, tmp_path / "trained_run"))
