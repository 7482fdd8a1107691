"""The one sample type every dataset becomes: :class:`ImageSamples`, ``(PIL RGB image, int label)`` items."""

from __future__ import annotations

import hashlib
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgexfer.preprocess import load_image


class ImageSamples(Sequence):
    """A sequence of ``(PIL.Image RGB, int label)``.

    Items come either from files (``paths`` holds one path per item, loaded lazily with
    :func:`edgexfer.preprocess.load_image`) or from a uint8 array (``N x H x W`` grayscale or
    ``N x H x W x 3`` RGB; ``paths`` is empty). ``skipped`` lists files that were found but could
    not be used (corrupt or not images), as ``(path, reason)``. ``fit``: the preprocessing the images
    are loaded for (see :meth:`for_preprocess`); None loads every pixel (training augmentation).
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
        self.fit: Any = None
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
            return load_image(self.paths[index], fit=self.fit)
        pixels = self.images[index]
        image = Image.fromarray(pixels, mode="L" if pixels.ndim == 2 else "RGB")
        return image.convert("RGB") if image.mode != "RGB" else image

    def for_preprocess(self, preprocess: Any) -> "ImageSamples":
        """The same items, loaded for ``preprocess``'s evaluation path: a large JPEG is decoded at a
        reduced scale (:func:`edgexfer.preprocess.load_image` with ``fit``), as predict decodes it."""
        view = self.subset(range(len(self)))
        view.fit = preprocess
        return view

    def subset(self, indices: Sequence[int]) -> "ImageSamples":
        """A new ImageSamples of the given items (same classes, same ``fit``)."""
        idx = np.asarray(list(indices), dtype=np.int64)
        made = self._subset(idx)
        made.fit = self.fit
        return made

    def _subset(self, idx: np.ndarray) -> "ImageSamples":
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
        """A sha256 over class names, labels and the items' identity (file path+size+mtime or pixels).

        Files are identified by ``os.stat`` rather than read, so fingerprinting a folder costs one
        stat per image; a file rewritten with the same size within the same second goes unnoticed.
        """
        digest = hashlib.sha256()
        digest.update("\n".join(self.class_names).encode("utf-8"))
        digest.update(self.labels.tobytes())
        if self.images is not None:
            digest.update(np.ascontiguousarray(self.images))  # hashed in place: no copy of the pixels
        else:
            for path in self.paths:
                stat = os.stat(path)
                digest.update(f"{path}|{stat.st_size}|{int(stat.st_mtime)}\n".encode("utf-8"))
        return digest.hexdigest()

    def __repr__(self) -> str:
        return f"ImageSamples({len(self)} items, {len(self.class_names)} classes, source={self.source!r})"
