"""export's held-out slice: its first images span the classes (the INT8 method comparison, the evidence
and the parity checks take the slice's first N images)."""

from types import SimpleNamespace

import numpy as np
from PIL import Image

from edgexfer.preprocess import Preprocess
from edgexfer.stages.export.config import ExportConfig
from edgexfer.stages.export.onnx_models import load_eval_slice


def _folder(root, classes, per_class):
    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((10, 10, 3), 20 * index + i, np.uint8)).save(root / name / f"{i:03d}.png")
    return root


def test_first_images_of_the_slice_span_the_classes(tmp_path):
    classes = [f"c{i}" for i in range(6)]
    data = _folder(tmp_path / "data", classes, 20)
    meta = SimpleNamespace(class_names=classes, preprocess=Preprocess(size=8, resize_size=8))
    config = ExportConfig(run_dir=tmp_path / "run", eval_data=data, eval_size=100, seed=0)
    first = load_eval_slice(config, meta)
    # listing order would give classes 0-2 only in the first half of the slice
    assert len(set(first.labels[:50].tolist())) == len(classes)
    assert len(first.labels) == 100 and np.bincount(first.labels).sum() == 100
    again = load_eval_slice(config, meta)
    assert np.array_equal(first.labels, again.labels) and np.array_equal(first.inputs, again.inputs)  # seeded
