"""Datasets for fine-tuning and evaluation: ImageFolder trees, the embedded Fashion-MNIST subset and
torchvision's CIFAR-10 / Fashion-MNIST, with class selection and a seeded, stratified split.

Everything is an :class:`ImageSamples`: a sequence of ``(PIL RGB image, int label)`` with
``class_names`` (and ``paths`` when items come from files). Grayscale sources become 3-channel RGB
here, so every model and every later stage sees the same kind of image.

- :mod:`~edgexfer.data.samples`: :class:`ImageSamples`.
- :mod:`~edgexfer.data.sources`: folders, the embedded set, torchvision datasets, ``--data`` names.
- :mod:`~edgexfer.data.splits`: :class:`DataSpec`, class selection, the seeded split.
- :mod:`~edgexfer.data.runs`: what finetune records, and :func:`samples_for_run`, which rebuilds
  exactly the train/val split finetune used and refuses it when the data changed since.
"""

from edgexfer.data.runs import SPLITS, check_fingerprint, describe_data, samples_for_run, split_fingerprint
from edgexfer.data.samples import ImageSamples
from edgexfer.data.sources import (
    EMBEDDED_NAME,
    EMBEDDED_PATH,
    TORCHVISION_DATASETS,
    dataset_root,
    embedded_samples,
    folder_samples,
    normalise_data_name,
    resolve_data_arg,
    torchvision_samples,
)
from edgexfer.data.splits import (
    DataSpec,
    cap_per_class,
    load_splits,
    parse_class_selection,
    select_classes,
    stratified_split,
)

__all__ = [
    "EMBEDDED_NAME",
    "EMBEDDED_PATH",
    "SPLITS",
    "TORCHVISION_DATASETS",
    "DataSpec",
    "ImageSamples",
    "cap_per_class",
    "check_fingerprint",
    "dataset_root",
    "describe_data",
    "embedded_samples",
    "folder_samples",
    "load_splits",
    "normalise_data_name",
    "parse_class_selection",
    "resolve_data_arg",
    "samples_for_run",
    "select_classes",
    "split_fingerprint",
    "stratified_split",
    "torchvision_samples",
]
