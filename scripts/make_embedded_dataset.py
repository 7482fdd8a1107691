#!/usr/bin/env python3
"""Build edgexfer's embedded default dataset and the demo calibration set from real Fashion-MNIST.

Source: Debian's package ``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``), which
installs Zalando Research's original IDX files under /usr/share/datasets/fashion-mnist (MIT licence,
https://github.com/zalandoresearch/fashion-mnist). The subset is a deterministic, class-stratified
sample (seeded), so re-running this script reproduces the committed files byte for byte.

Writes:
  edgexfer/assets/fashion_mnist_mini.npz   train/test images (uint8 28x28), labels, class names
  calibration/fashion-mnist/<class>/*.png  calibration images: training images NOT in the subset
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
from pathlib import Path

import numpy as np

CLASS_NAMES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"]
ROOT = Path(__file__).resolve().parent.parent


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX (gzipped) file as a numpy array."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    magic = int.from_bytes(data[:4], "big")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def stratified(labels: np.ndarray, per_class: int, rng: np.random.Generator,
               exclude: np.ndarray = None) -> np.ndarray:
    """Indices of ``per_class`` samples of each class, sorted, optionally avoiding ``exclude``."""
    chosen = []
    excluded = set() if exclude is None else set(exclude.tolist())
    for cls in range(len(CLASS_NAMES)):
        pool = np.array([i for i in np.flatnonzero(labels == cls) if i not in excluded])
        chosen.append(np.sort(rng.choice(pool, size=per_class, replace=False)))
    return np.concatenate(chosen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--train-per-class", type=int, default=1000)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--calib-per-class", type=int, default=52)
    parser.add_argument("--seed", type=int, default=20261129)
    args = parser.parse_args()

    if not (args.source / "train-images-idx3-ubyte.gz").exists():
        raise SystemExit(f"no Fashion-MNIST under {args.source}; run: apt-get install dataset-fashion-mnist")
    rng = np.random.default_rng(args.seed)
    train_x = read_idx(args.source / "train-images-idx3-ubyte.gz")
    train_y = read_idx(args.source / "train-labels-idx1-ubyte.gz")
    test_x = read_idx(args.source / "t10k-images-idx3-ubyte.gz")
    test_y = read_idx(args.source / "t10k-labels-idx1-ubyte.gz")

    train_idx = stratified(train_y, args.train_per_class, rng)
    test_idx = stratified(test_y, args.test_per_class, rng)
    calib_idx = stratified(train_y, args.calib_per_class, rng, exclude=train_idx)

    out = ROOT / "edgexfer" / "assets" / "fashion_mnist_mini.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, train_images=train_x[train_idx], train_labels=train_y[train_idx],
                        test_images=test_x[test_idx], test_labels=test_y[test_idx],
                        class_names=np.array(CLASS_NAMES))
    out.write_bytes(buffer.getvalue())
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, sha256 "
          f"{hashlib.sha256(out.read_bytes()).hexdigest()[:16]}): {len(train_idx)} train, {len(test_idx)} test")

    from PIL import Image

    calib_root = ROOT / "calibration" / "fashion-mnist"
    for idx in calib_idx:
        folder = calib_root / CLASS_NAMES[train_y[idx]]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(train_x[idx], mode="L").save(folder / f"train{idx:05d}.png", optimize=True)
    total = sum(f.stat().st_size for f in calib_root.rglob("*.png"))
    print(f"wrote {len(calib_idx)} calibration images to {calib_root} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
