"""Reduced-scale JPEG decode (``load_image(path, fit=...)`` / ``Preprocess.open``) and its call sites."""

from __future__ import annotations

import numpy as np
import pytest

from edgexfer.preprocess import DRAFT_INFO, Preprocess, load_image

IMAGENET = Preprocess.imagenet(224)  # resize 256, crop 224


def _photo(path, width, height, seed=0, fmt="JPEG"):
    """A photo-like image (smooth colour field, hard-edged blocks, mild noise) saved as ``fmt``."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    field = Image.fromarray(rng.integers(0, 256, (height // 40 + 2, width // 40 + 2, 3), dtype=np.uint8))
    image = field.resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(25):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.rectangle((x0, y0, x0 + width // 8, y0 + height // 8), fill=colour)
    pixels = np.clip(np.asarray(image) + rng.normal(0, 2.5, (height, width, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return path


@pytest.mark.parametrize("size, scale", [((1920, 1080), 4), ((4032, 3024), 8), ((1280, 720), 2),
                                         ((511, 700), 1), ((512, 700), 2), ((500, 375), 1)])
def test_draft_scale_keeps_the_shorter_side_at_or_above_the_resize_target(size, scale):
    assert IMAGENET.draft_scale(*size) == scale
    assert -(-min(size) // scale) >= IMAGENET.resize_size


@pytest.mark.parametrize("width, height, decoded", [(1920, 1080, (480, 270)), (1280, 720, (640, 360)),
                                                     (2000, 3000, (500, 750)), (1923, 1081, (481, 271))])
def test_reduced_decode_is_close_to_the_full_decode(tmp_path, width, height, decoded):
    path = _photo(tmp_path / "photo.jpg", width, height)
    reduced = IMAGENET.open(path)
    # The decoded size is what proves the DCT-domain reduction ran (a full decode is width x height).
    assert reduced.size == decoded and reduced.mode == "RGB"
    assert reduced.info[DRAFT_INFO] == (width, height, round(width / decoded[0]), *decoded)
    fast = IMAGENET.to_uint8(reduced).astype(np.int16)
    full = IMAGENET.to_uint8(load_image(path)).astype(np.int16)
    assert load_image(path).size == (width, height)  # without fit: every pixel (training augmentation)
    diff = np.abs(fast - full)
    # Measured: mean 0.3-0.8 grey levels, 99th percentile 2-10; only the blocks' hard edges differ more
    # (the DCT reduction's box-like filter vs PIL's triangle). The crop box shifted by one source pixel
    # gives a mean of 1.8; the box taken from the reduced size (not the source's) at 1923x1081, 5.3.
    assert diff.mean() < 1.2 and np.percentile(diff, 99) <= 12, (diff.mean(), np.percentile(diff, 99))


def test_small_or_non_jpeg_images_are_decoded_in_full(tmp_path):
    small = IMAGENET.open(_photo(tmp_path / "small.jpg", 500, 375))
    assert small.size == (500, 375) and DRAFT_INFO not in small.info
    edge = IMAGENET.open(_photo(tmp_path / "edge.jpg", 700, 511))  # < 2x the 256 target: no gain to have
    assert edge.size == (700, 511) and DRAFT_INFO not in edge.info
    png = IMAGENET.open(_photo(tmp_path / "big.png", 1920, 1080, fmt="PNG"))
    assert png.size == (1920, 1080)
    np.testing.assert_array_equal(IMAGENET.to_uint8(small), IMAGENET.to_uint8(load_image(tmp_path / "small.jpg")))


def test_a_resized_copy_of_a_reduced_image_is_cropped_on_its_own_size(tmp_path):
    reduced = IMAGENET.open(_photo(tmp_path / "photo.jpg", 1920, 1080))
    copy = reduced.resize((400, 300))
    assert DRAFT_INFO in copy.info  # PIL copies info to derived images: resize_crop must not trust it
    from PIL import Image

    fresh = Image.fromarray(np.asarray(copy))
    np.testing.assert_array_equal(IMAGENET.to_uint8(copy), IMAGENET.to_uint8(fresh))


def test_corrupt_jpeg_with_fit_is_the_same_one_line_error(tmp_path):
    from edgexfer.errors import DataError

    data = _photo(tmp_path / "photo.jpg", 1920, 1080).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError, match="corrupt or truncated"):
        IMAGENET.open(tmp_path / "cut.jpg")


# ---- every evaluation-side loader decodes at the reduced scale -------------------------------------
@pytest.fixture
def big_jpegs(tmp_path):
    """Two classes of one 1920x1080 JPEG each (a labelled folder)."""
    for index, name in enumerate(("cat", "dog")):
        (tmp_path / "data" / name).mkdir(parents=True)
        _photo(tmp_path / "data" / name / "a.jpg", 1920, 1080, seed=index)
    return tmp_path / "data"


@pytest.fixture
def cropped_sizes(monkeypatch):
    """The size of every image that reaches Preprocess.resize_crop."""
    sizes = []
    original = Preprocess.resize_crop

    def recording(self, image):
        sizes.append(image.size)
        return original(self, image)

    monkeypatch.setattr(Preprocess, "resize_crop", recording)
    return sizes


def _calibration(folder):
    from edgexfer.quant.calibration import folder_calibration_set

    folder_calibration_set(folder, IMAGENET, size=2)


def _calibration_from_samples(folder):
    from edgexfer.data import folder_samples
    from edgexfer.quant.calibration import samples_calibration_set

    samples_calibration_set(folder_samples(folder), IMAGENET, size=2)


def _verify_cache(folder):
    from edgexfer.data import folder_samples
    from edgexfer.stages.verify_data import InputCache

    InputCache(folder_samples(folder), np.arange(2), IMAGENET, progress=False)


def _bench_pixels(folder):
    from edgexfer.stages.bench.inputs import shared_pixels

    shared_pixels(sorted(folder.rglob("*.jpg")), IMAGENET, 2)


def _training_validation(folder):
    from edgexfer.data import folder_samples

    view = folder_samples(folder).for_preprocess(IMAGENET)
    for index in range(len(view[:2])):  # a slice keeps the fit
        IMAGENET.to_array(view[:2][index][0])


@pytest.mark.parametrize("site", [_calibration, _calibration_from_samples, _verify_cache, _bench_pixels,
                                  _training_validation])
def test_evaluation_side_loaders_decode_large_jpegs_reduced(big_jpegs, cropped_sizes, site):
    site(big_jpegs)
    assert cropped_sizes and set(cropped_sizes) == {(480, 270)}, cropped_sizes


def test_training_samples_keep_every_pixel(big_jpegs):
    from edgexfer.data import folder_samples

    samples = folder_samples(big_jpegs)
    assert samples.image(0).size == (1920, 1080)
    assert samples.for_preprocess(IMAGENET).image(0).size == (480, 270)
    assert samples.image(0).size == (1920, 1080)  # for_preprocess is a view, the original is unchanged
