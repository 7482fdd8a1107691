"""Datasets for fine-tuning and evaluation: ImageFolder trees, the embedded Fashion-MNIST subset and
torchvision's CIFAR-10 / Fashion-MNIST, with class selection and a seeded, stratified split.

Everything is an :class:`ImageSamples`: a sequence of ``(PIL RGB image, int label)`` with
``class_names`` (and ``paths`` when items come from files). Grayscale sources become 3-channel RGB
here, so every model and every later stage sees the same kind of image.

A data *spec* (:class:`DataSpec`) is what finetune records in the manifest; :func:`samples_for_run`
rebuilds exactly the train/val split that finetune used from it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgexfer.errors import ArtifactError, ConfigError, DataError
from edgexfer.preprocess import is_image_file, load_image

log = logging.getLogger(__name__)

EMBEDDED_NAME = "embedded"
EMBEDDED_PATH = Path(__file__).resolve().parent / "assets" / "fashion_mnist_mini.npz"
# torchvision datasets by the names users type; value: (torchvision class name, grayscale?)
TORCHVISION_DATASETS = {"cifar10": ("CIFAR10", False), "fashion-mnist": ("FashionMNIST", True)}
_ALIASES = {
    "cifar-10": "cifar10",
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
}
SPLITS = ("train", "val")


class ImageSamples(Sequence):
    """A sequence of ``(PIL.Image RGB, int label)``.

    Items come either from files (``paths`` holds one path per item, loaded lazily with
    :func:`edgexfer.preprocess.load_image`) or from a uint8 array (``N x H x W`` grayscale or
    ``N x H x W x 3`` RGB; ``paths`` is empty). ``skipped`` lists files that were found but could
    not be used (corrupt or not images), as ``(path, reason)``.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        labels: Sequence[int],
        paths: Optional[Sequence[str]] = None,
        images: Optional[np.ndarray] = None,
        skipped: Optional[List[Tuple[str, str]]] = None,
        source: str = "",
    ):
        if (paths is None) == (images is None):
            raise ValueError("ImageSamples needs exactly one of paths or images")
        self.class_names = list(class_names)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.paths: List[str] = [os.fspath(p) for p in paths] if paths is not None else []
        self.images = images
        self.skipped = list(skipped or [])
        self.source = source
        count = len(self.paths) if paths is not None else len(images)
        if len(self.labels) != count:
            raise ValueError(f"{len(self.labels)} labels for {count} images")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return self.subset(range(len(self))[index])
        return self.image(index), int(self.labels[index])

    def image(self, index: int) -> Any:
        """The RGB PIL image of item ``index``."""
        from PIL import Image

        if self.images is None:
            return load_image(self.paths[index])
        pixels = self.images[index]
        image = Image.fromarray(pixels, mode="L" if pixels.ndim == 2 else "RGB")
        return image.convert("RGB") if image.mode != "RGB" else image

    def subset(self, indices: Sequence[int]) -> "ImageSamples":
        """A new ImageSamples of the given items (same classes)."""
        idx = np.asarray(list(indices), dtype=np.int64)
        if self.images is None:
            return ImageSamples(
                self.class_names,
                self.labels[idx],
                paths=[self.paths[i] for i in idx],
                skipped=self.skipped,
                source=self.source,
            )
        return ImageSamples(
            self.class_names,
            self.labels[idx],
            images=self.images[idx],
            skipped=self.skipped,
            source=self.source,
        )

    def class_counts(self) -> Dict[str, int]:
        """Number of items per class name."""
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(c) for name, c in zip(self.class_names, counts)}

    def fingerprint(self) -> str:
        """A sha256 over class names, labels and the items' identity (file path+size+mtime or pixels)."""
        digest = hashlib.sha256()
        digest.update("\n".join(self.class_names).encode("utf-8"))
        digest.update(self.labels.tobytes())
        if self.images is not None:
            digest.update(np.ascontiguousarray(self.images).tobytes())
        else:
            for path in self.paths:
                stat = os.stat(path)
                digest.update(f"{path}|{stat.st_size}|{int(stat.st_mtime)}\n".encode("utf-8"))
        return digest.hexdigest()

    def __repr__(self) -> str:
        return f"ImageSamples({len(self)} items, {len(self.class_names)} classes, source={self.source!r})"


# ---- ImageFolder trees -------------------------------------------------------------------------
def _check_image(path: Path) -> Optional[str]:
    """None when PIL can decode ``path``, else the reason it cannot (cheap header+data check)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".splitlines()[0][:200]


def folder_samples(
    path: "os.PathLike[str] | str",
    class_names: Optional[Sequence[str]] = None,
    strict: bool = False,
    verify: bool = True,
) -> ImageSamples:
    """Samples of an ImageFolder tree ``path/<class>/<image>``.

    ``class_names`` fixes the classes and their label order (folders not named are ignored; a named
    class may have no folder, e.g. a calibration set that lacks one class); without it every
    sub-folder with images is a class, sorted by name. Non-image and corrupt files are skipped and
    listed in ``.skipped`` (a warning is logged), or with ``strict`` raise :class:`DataError`.
    """
    root = Path(path)
    if not root.exists():
        raise DataError(f"data folder '{root}' does not exist; expected {root}/<class>/<image>.png")
    if not root.is_dir():
        raise DataError(f"data path '{root}' is a file, not a folder; expected {root}/<class>/<image>.png")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"data folder '{root}' has no class sub-folders; expected {root}/<class>/<image>.png")
    if class_names is None:
        names = [p.name for p in folders]
    else:
        names = list(class_names)
        if not any((root / name).is_dir() for name in names):
            raise DataError(
                f"data folder '{root}' has none of the classes {names[:5]}...; its sub-folders "
                f"are {[p.name for p in folders][:10]}"
            )
    paths: List[str] = []
    labels: List[int] = []
    skipped: List[Tuple[str, str]] = []
    for label, name in enumerate(names):
        folder = root / name
        if not folder.is_dir():
            continue
        found = 0
        for file in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
            reason = None if is_image_file(file.name) else "not an image file (by extension)"
            if reason is None and verify:
                reason = _check_image(file)
            if reason is not None:
                if strict:
                    raise DataError(
                        f"'{file}' cannot be used: {reason}; remove it or run without --strict "
                        "to skip such files"
                    )
                skipped.append((str(file), reason))
                continue
            paths.append(str(file))
            labels.append(label)
            found += 1
        if found == 0 and class_names is None:
            raise DataError(
                f"class folder '{folder}' has no readable images; add images "
                f"({', '.join(e for e in ('.png', '.jpg', '.bmp'))} ...) or remove the folder"
            )
    if not paths:
        raise DataError(f"data folder '{root}' has no readable images in its class folders")
    if skipped:
        log.warning("skipped %d unusable file(s) under %s (e.g. %s: %s)", len(skipped), root, *skipped[0])
    return ImageSamples(names, labels, paths=paths, skipped=skipped, source=str(root))


# ---- array datasets ----------------------------------------------------------------------------
def embedded_samples(split: str) -> ImageSamples:
    """The embedded Fashion-MNIST subset: ``train`` (1,000/class) or ``val`` (its 200/class test set)."""
    with np.load(EMBEDDED_PATH) as data:
        prefix = "train" if split == "train" else "test"
        return ImageSamples(
            [str(n) for n in data["class_names"]],
            data[f"{prefix}_labels"].astype(np.int64),
            images=data[f"{prefix}_images"],
            source=EMBEDDED_NAME,
        )


def dataset_root() -> Path:
    """Where torchvision datasets are downloaded: $EDGEXFER_DATA or ~/.cache/edgexfer/datasets."""
    return Path(os.environ.get("EDGEXFER_DATA", Path.home() / ".cache" / "edgexfer" / "datasets"))


def torchvision_samples(name: str, split: str, root: Optional[Path] = None) -> ImageSamples:
    """CIFAR-10 or Fashion-MNIST via torchvision (downloaded when online); ``val`` is the test set."""
    import torchvision

    cls_name, _ = TORCHVISION_DATASETS[name]
    root = Path(root) if root else dataset_root()
    try:
        dataset = getattr(torchvision.datasets, cls_name)(str(root), train=(split == "train"), download=True)
    except Exception as exc:
        raise DataError(
            f"cannot get {name} into {root} ({type(exc).__name__}: {exc}); on a machine with "
            f"network run edgexfer once with --data {name} and copy {root}, set EDGEXFER_DATA, "
            f"or use --data embedded"
        ) from exc
    images = np.asarray(dataset.data if not hasattr(dataset.data, "numpy") else dataset.data.numpy())
    labels = np.asarray(dataset.targets, dtype=np.int64)
    return ImageSamples(list(dataset.classes), labels, images=images.astype(np.uint8), source=name)


# ---- specs, class selection and splits ---------------------------------------------------------
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


def normalise_data_name(data: str) -> str:
    """Lower-cased canonical dataset name for named datasets; a folder path unchanged."""
    lowered = data.strip().lower()
    lowered = _ALIASES.get(lowered, lowered)
    if lowered == EMBEDDED_NAME or lowered in TORCHVISION_DATASETS:
        return lowered
    return data


def resolve_data_arg(data: str) -> str:
    """Validate a ``--data`` value; folders become absolute paths so the manifest can rebuild them."""
    name = normalise_data_name(data)
    if name == EMBEDDED_NAME or name in TORCHVISION_DATASETS:
        return name
    path = Path(data).expanduser()
    if not path.exists():
        raise DataError(
            f"--data '{data}' is neither an existing folder nor a known dataset; use a folder "
            f"<dir>/<class>/<image>, or one of: {EMBEDDED_NAME}, {', '.join(TORCHVISION_DATASETS)}"
        )
    if not path.is_dir():
        raise DataError(
            f"--data '{data}' is a file; pass a folder <dir>/<class>/<image> or <dir>/train, <dir>/val"
        )
    return str(path.resolve())


def parse_class_selection(selection: Optional[str], class_names: Sequence[str]) -> List[int]:
    """Indices chosen by ``0-4``, ``0,2,7-9``, ``Sandal,Bag`` (names or indices, mixed); None: all."""
    if selection is None or not str(selection).strip():
        return list(range(len(class_names)))
    chosen: List[int] = []
    for part in (p.strip() for p in str(selection).split(",")):
        if not part:
            continue
        range_match = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        if range_match:
            lo, hi = int(range_match.group(1)), int(range_match.group(2))
            if lo > hi:
                raise ConfigError(f"class range '{part}' is reversed; write it low-high, e.g. {hi}-{lo}")
            indices = list(range(lo, hi + 1))
        elif part.isdigit():
            indices = [int(part)]
        elif part in class_names:
            indices = [list(class_names).index(part)]
        else:
            raise ConfigError(
                f"unknown class '{part}' in --classes; classes are "
                f"{', '.join(f'{i}={n}' for i, n in enumerate(class_names))}"
            )
        for index in indices:
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


def samples_for_run(run_dir: "os.PathLike[str] | str", split: str) -> ImageSamples:
    """The run's ``train`` or ``val`` split exactly as finetune used it (from the manifest's record)."""
    from edgexfer.manifest import Manifest

    if split not in SPLITS:
        raise ConfigError(f"unknown split '{split}'; choose train or val")
    record = Manifest.open(run_dir).stage("finetune")
    data = record.get("config", {}).get("data_spec")
    if not isinstance(data, dict):
        raise ArtifactError(f"run '{run_dir}' has no finetune data record; re-run 'edgexfer finetune' for it")
    train, val = load_splits(DataSpec.from_dict(data))
    samples = train if split == "train" else val
    expected = record.get("config", {}).get("class_names")
    if expected and list(expected) != samples.class_names:
        raise DataError(
            f"the data of run '{run_dir}' changed: classes are now {samples.class_names}, "
            f"finetune used {expected}"
        )
    return samples
