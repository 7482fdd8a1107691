"""Where images come from: ImageFolder trees, the embedded Fashion-MNIST subset, torchvision's CIFAR-10 /
Fashion-MNIST, and the ``--data`` names that pick one of them."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from edgexfer.data.samples import ImageSamples
from edgexfer.errors import DataError
from edgexfer.preprocess import is_image_file

log = logging.getLogger("edgexfer.data")

EMBEDDED_NAME = "embedded"
EMBEDDED_PATH = Path(__file__).resolve().parents[1] / "assets" / "fashion_mnist_mini.npz"
# torchvision datasets by the names users type; value: (torchvision class name, grayscale?)
TORCHVISION_DATASETS = {"cifar10": ("CIFAR10", False), "fashion-mnist": ("FashionMNIST", True)}
_ALIASES = {
    "cifar-10": "cifar10",
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
}


# ---- --data names ------------------------------------------------------------------------------
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


def _class_names(root: Path, class_names: Optional[Sequence[str]]) -> List[str]:
    """The classes of ``root``: ``class_names`` when given (at least one must exist), else its sub-folders."""
    if not root.exists():
        raise DataError(f"data folder '{root}' does not exist; expected {root}/<class>/<image>.png")
    if not root.is_dir():
        raise DataError(f"data path '{root}' is a file, not a folder; expected {root}/<class>/<image>.png")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"data folder '{root}' has no class sub-folders; expected {root}/<class>/<image>.png")
    if class_names is None:
        return [p.name for p in folders]
    names = list(class_names)
    if not any((root / name).is_dir() for name in names):
        raise DataError(
            f"data folder '{root}' has none of the classes {names[:5]}...; its sub-folders "
            f"are {[p.name for p in folders][:10]}"
        )
    return names


def _usable_reason(file: Path, verify: bool) -> Optional[str]:
    reason = None if is_image_file(file.name) else "not an image file (by extension)"
    if reason is None and verify:
        reason = _check_image(file)
    return reason


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
    names = _class_names(root, class_names)
    paths: List[str] = []
    labels: List[int] = []
    skipped: List[Tuple[str, str]] = []
    for label, name in enumerate(names):
        folder = root / name
        if not folder.is_dir():
            continue
        found = 0
        for file in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
            reason = _usable_reason(file, verify)
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
    from edgexfer.torchdeps import require_torch

    require_torch(f"the torchvision data set '{name}' (or pass --data DIR with labelled images)")
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
