"""One preprocessing spec for training, calibration, verification and prediction.

The evaluation path (:meth:`Preprocess.to_array`) is pure PIL + numpy, so a device that has only
ONNX Runtime or TensorRT preprocesses exactly as training evaluated. The torch training transforms
wrap the same function for evaluation and add augmentation only for training.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from edgexfer.errors import ConfigError, DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
AUGMENTATIONS = ("none", "light", "standard")
LAYOUTS = ("NCHW", "NHWC")
# Images larger than this many pixels are refused instead of exhausting memory (PIL's own limit is
# a warning at 89 Mpx); 16k x 16k is far past any camera frame a classifier sees.
MAX_PIXELS = 16384 * 16384
# Where load_image(fit=...) records a reduced JPEG decode on the image: (source width, source height,
# scale, decoded width, decoded height). resize_crop maps its crop box through it, so a reduced decode
# crops the same region of the scene as a full one.
DRAFT_INFO = "edgexfer_draft"


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the model's input tensor.

    ``resize_size``: the shorter side is resized to this, then a centre crop of ``size`` is taken.
    ``mean``/``std``: per-channel normalisation of [0, 1] pixels (RGB order).
    """

    size: int = 224
    resize_size: int = 256
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    augment: str = "standard"
    layout: str = "NCHW"
    extra: Dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 8:
            raise ConfigError(f"preprocess size must be an integer >= 8, got {self.size!r}")
        if not isinstance(self.resize_size, int) or self.resize_size < self.size:
            raise ConfigError(f"preprocess resize_size must be an integer >= size ({self.size}), "
                              f"got {self.resize_size!r}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if len(value) != 3:
                raise ConfigError(f"preprocess {name} needs 3 values (R, G, B), got {list(value)}")
            object.__setattr__(self, name, tuple(float(v) for v in value))
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"preprocess std values must be > 0, got {list(self.std)}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"unknown interpolation '{self.interpolation}'; choose one of "
                              f"{', '.join(INTERPOLATIONS)}")
        if self.augment not in AUGMENTATIONS:
            raise ConfigError(f"unknown augment '{self.augment}'; choose one of {', '.join(AUGMENTATIONS)}")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"unknown layout '{self.layout}'; choose one of {', '.join(LAYOUTS)}")

    # ---- presets and (de)serialisation ---------------------------------------------------------
    @classmethod
    def imagenet(cls, size: int = 224, **overrides: Any) -> "Preprocess":
        """torchvision's ImageNet evaluation recipe: resize to size*256/224, centre crop, ImageNet stats."""
        return cls(size=size, resize_size=int(round(size * 256 / 224)), **overrides)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Preprocess":
        """Rebuild from :meth:`to_dict` output (checkpoint, manifest or ONNX metadata)."""
        known = {k: data[k] for k in ("size", "resize_size", "mean", "std", "interpolation", "augment",
                                      "layout") if k in data}
        unknown = set(data) - set(known) - {"extra"}
        if unknown:
            raise ConfigError(f"unknown preprocess keys {sorted(unknown)}; valid keys: size, resize_size, "
                              "mean, std, interpolation, augment, layout")
        return cls(**known, extra=dict(data.get("extra", {})))

    def to_dict(self) -> Dict[str, Any]:
        """JSON-safe dict."""
        data = asdict(self)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        return data

    def with_(self, **changes: Any) -> "Preprocess":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    # ---- the numpy evaluation path -------------------------------------------------------------
    def _resample(self) -> int:
        from PIL import Image

        return {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}[
            self.interpolation]

    def crop_box(self, width: int, height: int) -> Tuple[float, float, float, float]:
        """The centre crop, in source-image coordinates, that resize-then-crop would keep."""
        scale = self.resize_size / min(width, height)
        new_w, new_h = max(self.size, round(width * scale)), max(self.size, round(height * scale))
        left, top = (new_w - self.size) // 2, (new_h - self.size) // 2
        sx, sy = width / new_w, height / new_h
        return (left * sx, top * sy, (left + self.size) * sx, (top + self.size) * sy)

    def draft_scale(self, width: int, height: int) -> int:
        """The JPEG DCT-domain reduction (1, 2, 4 or 8) for a ``width`` x ``height`` image: the largest
        whose decoded shorter side is still >= ``resize_size``, so the exact resize that follows only
        ever shrinks. 1 (a full decode) unless the image is at least twice the resize target."""
        shorter = min(width, height)
        return next(s for s in (8, 4, 2, 1) if s * self.resize_size <= shorter or s == 1)

    def resize_crop(self, image: "Any") -> "Any":
        """Resize the shorter side to ``resize_size`` and centre-crop ``size`` (PIL in, PIL out).

        Done as one resampling of just the crop box (PIL's ``resize(box=...)``), which gives the same
        pixels as resizing the whole image and cropping (within one grey level at the box edges) at about
        half the cost for camera-sized images: host preprocessing is part of end-to-end latency.
        An image from ``load_image(path, fit=...)`` decoded at 1/s scale has its box computed on the
        source size and divided by s: the same region of the scene as a full decode.
        """
        width, height = image.size
        if (width, height) == (self.size, self.size) and self.resize_size == self.size:
            return image
        draft = image.info.get(DRAFT_INFO)
        if draft and tuple(draft[3:]) == (width, height):  # a resized copy keeps info: check the size
            source_w, source_h, scale = draft[:3]
            box = tuple(v / scale for v in self.crop_box(source_w, source_h))
        else:
            box = self.crop_box(width, height)
        return image.resize((self.size, self.size), self._resample(), box=box)

    def to_uint8(self, image: "Any", layout: str = "NCHW") -> np.ndarray:
        """Resized, cropped RGB pixels as uint8, CHW or HWC: the input of ``--uint8-input`` models."""
        pixels = np.asarray(self.resize_crop(image), dtype=np.uint8)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1) if layout == "NCHW" else pixels)

    def to_array(self, image: "Any") -> np.ndarray:
        """The normalised float32 CHW array the float model takes."""
        return self.normalize(self.to_uint8(image, "NCHW"))

    def normalize(self, pixels: np.ndarray, layout: str = "NCHW") -> np.ndarray:
        """uint8 pixels (CHW, NCHW, HWC or NHWC as ``layout`` says) -> ``(x / 255 - mean) / std`` float32.

        The one normalisation: every float input (training evaluation, calibration, verify, bench,
        predict) is made here, so they agree bit for bit.
        """
        channels_last = layout.endswith("HWC")
        shape = (3,) if channels_last else (3, 1, 1)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(shape)
        std = np.asarray(self.std, dtype=np.float32).reshape(shape)
        return ((np.asarray(pixels).astype(np.float32) / 255.0 - mean) / std).astype(np.float32, copy=False)

    def open(self, path: "os.PathLike[str] | str") -> "Any":
        """Load an image file for this preprocessing: ``load_image(path, fit=self)`` (a large JPEG is
        decoded at a reduced scale). Every evaluation-side loader (training validation, calibration,
        verify, build smoke check, bench, predict) goes through here."""
        return load_image(path, fit=self)

    def load(self, path: "os.PathLike[str] | str") -> np.ndarray:
        """Load an image file and return :meth:`to_array` of it."""
        return self.to_array(self.open(path))

    # ---- torch transforms ----------------------------------------------------------------------
    def eval_transform(self) -> Callable[[Any], Any]:
        """PIL image -> float tensor, identical to :meth:`to_array` (used for validation)."""
        import torch

        def transform(image: Any) -> Any:
            return torch.from_numpy(self.to_array(image))

        return transform

    def train_transform(self) -> Callable[[Any], Any]:
        """PIL image -> augmented float tensor, per ``augment``; ``none`` is the eval transform."""
        if self.augment == "none":
            return self.eval_transform()
        from torchvision import transforms

        interp = {"bilinear": transforms.InterpolationMode.BILINEAR,
                  "bicubic": transforms.InterpolationMode.BICUBIC,
                  "nearest": transforms.InterpolationMode.NEAREST}[self.interpolation]
        if self.augment == "light":
            geometric = [transforms.Resize(self.resize_size, interpolation=interp),
                         transforms.RandomCrop(self.size, padding=max(1, self.size // 16)),
                         transforms.RandomHorizontalFlip()]
        else:
            geometric = [transforms.RandomResizedCrop(self.size, scale=(0.5, 1.0), interpolation=interp),
                         transforms.RandomHorizontalFlip()]
        return transforms.Compose(geometric + [transforms.ToTensor(),
                                               transforms.Normalize(self.mean, self.std)])


def load_image(path: "os.PathLike[str] | str", fit: "Optional[Preprocess]" = None,
               draft_to: "Optional[Tuple[int, int]]" = None) -> "Any":
    """Open any still image as 8-bit RGB, with one clear :class:`DataError` when it cannot be read.

    Handles palette, CMYK, grayscale, 16-bit and alpha images (alpha is composited on black, the
    convention of torchvision's ``read_image`` with ``ImageReadMode.RGB``).

    With ``fit`` (the preprocessing the image is for), a JPEG at least twice the resize target is
    decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (libjpeg's scaled IDCT through PIL's ``draft``),
    never below ``fit.resize_size`` on the shorter side; :meth:`Preprocess.resize_crop` then does the
    exact resize and crop from it. A 1920x1080 frame decodes about 2x faster, a 12 Mpx photo 3-4x.
    Training augmentation loads without ``fit``: its random crops may zoom in, which wants every pixel.
    ``draft_to`` (width, height) does the same for a raw-frame model's frame (:mod:`edgexfer.frames`): the
    reduced decode is never smaller than that size on either side.
    """
    from PIL import Image, UnidentifiedImageError

    path = os.fspath(path)
    try:
        with Image.open(path) as opened:
            if opened.width * opened.height > MAX_PIXELS:
                raise DataError(f"image '{path}' is {opened.width}x{opened.height}, larger than the "
                                f"{MAX_PIXELS // 10**6} Mpx edgexfer accepts; downscale it first")
            if opened.width < 1 or opened.height < 1:
                raise DataError(f"image '{path}' has no pixels ({opened.width}x{opened.height})")
            source_size = opened.size
            scale = fit.draft_scale(*source_size) if fit is not None and opened.format == "JPEG" else 1
            if draft_to is not None and opened.format == "JPEG":
                ratio = min(source_size[0] // max(1, draft_to[0]), source_size[1] // max(1, draft_to[1]))
                scale = next(s for s in (8, 4, 2, 1) if s <= ratio or s == 1)
            if scale > 1:
                # PIL takes the largest of 8/4/2/1 not above min(W // w, H // h): this request gives `scale`.
                drafted = opened.draft(opened.mode, (source_size[0] // scale, source_size[1] // scale))
                scale = round(source_size[0] / drafted[1][2]) if drafted else 1
            opened.load()
            image = _to_rgb(opened)
            if scale > 1:
                image.info[DRAFT_INFO] = (*source_size, scale, *image.size)
            return image
    except DataError:
        raise
    except FileNotFoundError as exc:
        raise DataError(f"image '{path}' does not exist") from exc
    except IsADirectoryError as exc:
        raise DataError(f"'{path}' is a folder, not an image file") from exc
    except UnidentifiedImageError as exc:
        raise DataError(f"'{path}' is not an image PIL can read (expected JPEG, PNG, BMP, TIFF, WebP, ...)") \
            from exc
    except Image.DecompressionBombError as exc:
        # PIL refuses > 2x its pixel limit at open, before the check above: the same cause, not corruption.
        raise DataError(f"image '{path}' is too large for edgexfer ({exc}); downscale it first") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"image '{path}' is corrupt or truncated: {exc}") from exc


def _to_rgb(image: "Any") -> "Any":
    """Convert any PIL mode to RGB with 8 bits per channel."""
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        peak = 1.0 if array.max() <= 1.0 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "RGB":
        return image  # already what every stage wants; convert() would only copy it
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (0, 0, 0))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").split()[-1])
        return background
    return image.convert("RGB")


def is_image_file(name: str) -> bool:
    """Whether a file name has an image extension edgexfer reads."""
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def image_to_input(image: Any, preprocess: Any, dtype: Any, layout: str) -> np.ndarray:
    """One PIL image -> one row of a runner's input (normalised float CHW/HWC or uint8 CHW/HWC)."""
    if np.dtype(dtype) == np.uint8:
        return preprocess.to_uint8(image, layout)
    array = preprocess.to_array(image)
    return np.ascontiguousarray(array.transpose(1, 2, 0)) if layout == "NHWC" else array


def images_to_batch(images: Sequence[Any], preprocess: Any, dtype: Any, layout: str) -> np.ndarray:
    """PIL images -> one batch in a runner's input format (normalised float NCHW or uint8 NCHW/NHWC):
    the rows of :func:`image_to_input`, stacked (predict's decode threads make the same rows)."""
    return np.stack([image_to_input(image, preprocess, dtype, layout) for image in images])
