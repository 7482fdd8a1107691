"""From a data spec to the train/val split: class selection, a seeded stratified split, a per-class cap.

A data *spec* (:class:`DataSpec`) is what finetune records in the manifest; :func:`load_splits` turns it
into the same ``(train, val)`` samples every time.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgexfer.data.samples import ImageSamples
from edgexfer.data.sources import (
    EMBEDDED_NAME,
    TORCHVISION_DATASETS,
    embedded_samples,
    folder_samples,
    normalise_data_name,
    torchvision_samples,
)
from edgexfer.errors import ConfigError, DataError


@dataclass(frozen=True)
class DataSpec:
    """Everything needed to rebuild a run's train/val split (recorded in the manifest).

    ``data``: ``embedded``, ``cifar10``, ``fashion-mnist`` or a folder (absolute path).
    ``classes``: the selection as the user wrote it (``0-4``, ``Sandal,Bag``) or None for all.
    ``val_fraction``/``seed``: split of a single folder (trees with ``train/`` and ``val/`` and the
    named datasets have their own validation set). ``max_per_class``: cap on training images per
    class (a seeded sample), for quick runs.
    """

    data: str = EMBEDDED_NAME
    classes: Optional[str] = None
    val_fraction: float = 0.2
    seed: int = 0
    max_per_class: Optional[int] = None
    strict: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be between 0 and 1 (e.g. 0.2), got {self.val_fraction}")
        if self.max_per_class is not None and self.max_per_class < 1:
            raise ConfigError(f"max_per_class must be >= 1, got {self.max_per_class}")

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "DataSpec":
        """Rebuild from :meth:`to_dict` (manifest)."""
        return cls(
            **{
                k: data[k]
                for k in ("data", "classes", "val_fraction", "seed", "max_per_class", "strict")
                if k in data
            }
        )

    def to_dict(self) -> Dict[str, Any]:
        """JSON-safe dict."""
        return asdict(self)

    @property
    def kind(self) -> str:
        """``embedded``, ``torchvision`` or ``folder``."""
        name = normalise_data_name(self.data)
        if name == EMBEDDED_NAME:
            return "embedded"
        return "torchvision" if name in TORCHVISION_DATASETS else "folder"


# ---- class selection ---------------------------------------------------------------------------
def _selection_part(part: str, class_names: Sequence[str]) -> List[int]:
    """The indices one comma-separated part names: ``3``, ``2-5`` or a class name."""
    range_match = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
    if range_match:
        lo, hi = int(range_match.group(1)), int(range_match.group(2))
        if lo > hi:
            raise ConfigError(f"class range '{part}' is reversed; write it low-high, e.g. {hi}-{lo}")
        return list(range(lo, hi + 1))
    if part.isdigit():
        return [int(part)]
    if part in class_names:
        return [list(class_names).index(part)]
    raise ConfigError(
        f"unknown class '{part}' in --classes; classes are "
        f"{', '.join(f'{i}={n}' for i, n in enumerate(class_names))}"
    )


def parse_class_selection(selection: Optional[str], class_names: Sequence[str]) -> List[int]:
    """Indices chosen by ``0-4``, ``0,2,7-9``, ``Sandal,Bag`` (names or indices, mixed); None: all."""
    if selection is None or not str(selection).strip():
        return list(range(len(class_names)))
    chosen: List[int] = []
    for part in (p.strip() for p in str(selection).split(",")):
        if not part:
            continue
        for index in _selection_part(part, class_names):
            if index >= len(class_names):
                raise ConfigError(
                    f"class index {index} in --classes is out of range; the data has "
                    f"{len(class_names)} classes (0-{len(class_names) - 1})"
                )
            if index not in chosen:
                chosen.append(index)
    if len(chosen) < 2:
        raise ConfigError(
            f"--classes '{selection}' selects {len(chosen)} class; a classifier needs at least 2"
        )
    return chosen


def select_classes(samples: ImageSamples, indices: Sequence[int]) -> ImageSamples:
    """Keep only the classes ``indices`` (in that order), relabelled 0..k-1."""
    indices = list(indices)
    if indices == list(range(len(samples.class_names))):
        return samples
    remap = np.full(len(samples.class_names), -1, dtype=np.int64)
    remap[indices] = np.arange(len(indices))
    keep = np.nonzero(remap[samples.labels] >= 0)[0]
    subset = samples.subset(keep)
    subset.labels = remap[subset.labels]
    subset.class_names = [samples.class_names[i] for i in indices]
    return subset


# ---- splits ------------------------------------------------------------------------------------
def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Per-class seeded shuffle; ``round(n * val_fraction)`` (at least 1 when n >= 2) items go to val."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        members = np.nonzero(labels == label)[0]
        members = members[rng.permutation(len(members))]
        n_val = int(round(len(members) * val_fraction))
        n_val = min(max(n_val, 1 if len(members) >= 2 else 0), len(members) - 1)
        val.extend(members[:n_val].tolist())
        train.extend(members[n_val:].tolist())
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(val, dtype=np.int64))


def cap_per_class(labels: np.ndarray, max_per_class: int, seed: int) -> np.ndarray:
    """Sorted indices keeping at most ``max_per_class`` items of each class (seeded choice)."""
    rng = np.random.default_rng(seed + 7919)  # not the split's stream, so capping does not move the split
    keep = []
    for label in np.unique(labels):
        members = np.nonzero(labels == label)[0]
        if len(members) > max_per_class:
            members = np.sort(rng.choice(members, size=max_per_class, replace=False))
        keep.extend(members.tolist())
    return np.sort(np.asarray(keep, dtype=np.int64))


def load_splits(spec: DataSpec) -> Tuple[ImageSamples, ImageSamples]:
    """The ``(train, val)`` samples a spec describes, classes selected, training set capped."""
    name = normalise_data_name(spec.data)
    if name == EMBEDDED_NAME:
        train, val = embedded_samples("train"), embedded_samples("val")
    elif name in TORCHVISION_DATASETS:
        train, val = torchvision_samples(name, "train"), torchvision_samples(name, "val")
    else:
        train, val = _folder_splits(Path(spec.data), spec)
    indices = parse_class_selection(spec.classes, train.class_names)
    train, val = select_classes(train, indices), select_classes(val, indices)
    if spec.max_per_class is not None:
        train = train.subset(cap_per_class(train.labels, spec.max_per_class, spec.seed))
    for split_name, split in (("training", train), ("validation", val)):
        empty = [n for n, c in split.class_counts().items() if c == 0]
        if empty:
            raise DataError(
                f"{split_name} data from '{spec.data}' has no images of class(es) {empty[:5]}; "
                "add images or drop those classes with --classes"
            )
    return train, val


def _folder_splits(root: Path, spec: DataSpec) -> Tuple[ImageSamples, ImageSamples]:
    """``root/train`` + ``root/val`` when both exist, else one folder split stratified by ``spec.seed``."""
    if (root / "train").is_dir() and (root / "val").is_dir():
        train = folder_samples(root / "train", strict=spec.strict)
        val = folder_samples(root / "val", class_names=train.class_names, strict=spec.strict)
        val.skipped = train.skipped + val.skipped
        return train, val
    everything = folder_samples(root, strict=spec.strict)
    train_idx, val_idx = stratified_split(everything.labels, spec.val_fraction, spec.seed)
    if len(val_idx) == 0:
        raise DataError(f"data folder '{root}' is too small to split (each class needs >= 2 images)")
    return everything.subset(train_idx), everything.subset(val_idx)
