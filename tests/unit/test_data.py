"""edgexfer.data: ImageFolder scanning, the embedded set, class selection, seeded stratified splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import make_image_folder

from edgexfer.data import (
    EMBEDDED_PATH,
    DataSpec,
    ImageSamples,
    cap_per_class,
    folder_samples,
    load_splits,
    parse_class_selection,
    resolve_data_arg,
    samples_for_run,
    stratified_split,
)
from edgexfer.errors import ConfigError, DataError
from edgexfer.manifest import Manifest

NAMES = [
    "T-shirt_top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle_boot",
]


def test_folder_samples_labels_paths_and_rgb(image_folder):
    samples = folder_samples(image_folder)
    assert samples.class_names == ["blue", "green", "red"]
    assert len(samples) == 36 and len(samples.paths) == 36
    assert samples.class_counts() == {"blue": 12, "green": 12, "red": 12}
    image, label = samples[13]
    assert image.mode == "RGB" and image.size == (40, 40)
    assert label == 1 and "/green/" in samples.paths[13]
    # the red square is in the middle of a red-class image
    red_index = samples.paths.index(str(image_folder / "red" / "img_000.png"))
    centre = np.asarray(samples[red_index][0])[20, 20]
    assert centre[0] > 150 and centre[2] < 100


def test_folder_samples_with_given_class_order_ignores_other_folders(image_folder):
    samples = folder_samples(image_folder, class_names=["red", "blue", "absent"])
    assert samples.class_names == ["red", "blue", "absent"]
    assert sorted(set(samples.labels.tolist())) == [0, 1]
    assert all("/red/" in p for p, lab in zip(samples.paths, samples.labels) if lab == 0)


def test_corrupt_and_non_image_files_are_skipped_and_counted_or_strict_fails(image_folder):
    (image_folder / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (image_folder / "blue" / "notes.txt").write_text("hello")
    samples = folder_samples(image_folder)
    assert len(samples) == 36
    assert sorted(p.split("/")[-1] for p, _ in samples.skipped) == ["broken.png", "notes.txt"]
    with pytest.raises(DataError, match="broken.png|notes.txt"):
        folder_samples(image_folder, strict=True)


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda root: None, "does not exist"),
        (lambda root: root.mkdir(), "no class sub-folders"),
        (lambda root: root.write_text("x"), "is a file"),
    ],
)
def test_bad_folders_raise_one_line(tmp_path, setup, message):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(DataError, match=message) as info:
        folder_samples(root)
    assert "\n" not in str(info.value)


def test_class_folder_without_images_is_an_error(image_folder):
    (image_folder / "yellow").mkdir()
    (image_folder / "yellow" / "readme.md").write_text("no images here")
    with pytest.raises(DataError, match="yellow.*no readable images"):
        folder_samples(image_folder)


@pytest.mark.parametrize(
    "selection, expected",
    [
        (None, list(range(10))),
        ("0-4", [0, 1, 2, 3, 4]),
        ("5-9", [5, 6, 7, 8, 9]),
        ("0,2,7-9", [0, 2, 7, 8, 9]),
        ("Sandal,Bag", [5, 8]),
        ("Bag, 1-2", [8, 1, 2]),
        ("3,3,4", [3, 4]),
    ],
)
def test_parse_class_selection(selection, expected):
    assert parse_class_selection(selection, NAMES) == expected


@pytest.mark.parametrize(
    "selection, message",
    [
        ("4-0", "reversed"),
        ("8-12", "out of range"),
        ("Boot", "unknown class 'Boot'"),
        ("3", "at least 2"),
    ],
)
def test_parse_class_selection_errors(selection, message):
    with pytest.raises(ConfigError, match=message):
        parse_class_selection(selection, NAMES)


def test_stratified_split_is_seeded_disjoint_and_per_class():
    labels = np.repeat(np.arange(4), [10, 20, 5, 2])
    train, val = stratified_split(labels, 0.2, seed=3)
    assert set(train) | set(val) == set(range(len(labels))) and not set(train) & set(val)
    assert np.bincount(labels[val], minlength=4).tolist() == [2, 4, 1, 1]
    again = stratified_split(labels, 0.2, seed=3)
    assert np.array_equal(again[1], val)
    assert not np.array_equal(stratified_split(labels, 0.2, seed=4)[1], val)


def test_cap_per_class_keeps_at_most_n_per_class():
    labels = np.repeat(np.arange(3), [50, 3, 20])
    kept = cap_per_class(labels, 10, seed=0)
    assert np.bincount(labels[kept]).tolist() == [10, 3, 10]
    assert np.array_equal(kept, cap_per_class(labels, 10, seed=0))


def test_embedded_classes_5_9_are_relabelled_real_pixels_in_rgb():
    train, val = load_splits(DataSpec(data="embedded", classes="5-9", max_per_class=30))
    assert train.class_names == NAMES[5:] and val.class_names == NAMES[5:]
    assert train.class_counts() == {n: 30 for n in NAMES[5:]}
    assert len(val) == 1000 and set(val.labels.tolist()) == {0, 1, 2, 3, 4}
    raw = np.load(EMBEDDED_PATH)
    first_sandal = np.nonzero(raw["test_labels"] == 5)[0][0]
    image, label = val[0]
    assert label == 0 and image.mode == "RGB" and image.size == (28, 28)
    pixels = np.asarray(image)
    assert np.array_equal(pixels[..., 0], raw["test_images"][first_sandal])
    assert np.array_equal(pixels[..., 0], pixels[..., 2])  # grayscale repeated into 3 channels


def test_single_folder_split_and_fingerprint(image_folder):
    spec = DataSpec(data=resolve_data_arg(str(image_folder)), val_fraction=0.25, seed=1)
    train, val = load_splits(spec)
    assert len(train) == 27 and len(val) == 9
    assert not set(train.paths) & set(val.paths)
    assert val.class_counts() == {"blue": 3, "green": 3, "red": 3}
    before = train.fingerprint()
    assert before == load_splits(spec)[0].fingerprint()
    with open(train.paths[0], "ab") as handle:
        handle.write(b"\0" * 7)
    assert load_splits(spec)[0].fingerprint() != before


def test_samples_slice_and_subset_keep_classes(image_folder):
    samples = folder_samples(image_folder)
    part = samples[10:14]
    assert isinstance(part, ImageSamples) and len(part) == 4 and part.class_names == samples.class_names
    assert part.paths == samples.paths[10:14]


def test_data_arg_rejects_unknown_names(tmp_path):
    with pytest.raises(DataError, match="neither an existing folder nor a known dataset"):
        resolve_data_arg("imagenet-21k")
    assert resolve_data_arg("CIFAR-10") == "cifar10" and resolve_data_arg("Embedded") == "embedded"


def test_samples_for_run_rebuilds_the_trained_split(trained_run):
    val = samples_for_run(trained_run, "val")
    train = samples_for_run(trained_run, "train")
    assert val.class_names == ["blue", "green", "red"] and len(val) == 48 and len(train) == 72
    assert all("/val/" in p for p in val.paths) and all("/train/" in p for p in train.paths)
    with pytest.raises(ConfigError, match="unknown split"):
        samples_for_run(trained_run, "test")


def test_samples_for_run_of_a_split_folder_is_disjoint(tmp_path):
    from edgexfer.stages.finetune import FinetuneConfig, run_finetune

    data = make_image_folder(tmp_path / "one", per_class=10, size=32)
    run_finetune(
        FinetuneConfig(
            out=tmp_path / "run",
            weights="none",
            data=str(data),
            size=32,
            epochs=1,
            batch_size=8,
            strategy="linear",
            val_fraction=0.3,
            seed=5,
            progress=False,
            amp="off",
        )
    )
    train, val = samples_for_run(tmp_path / "run", "train"), samples_for_run(tmp_path / "run", "val")
    assert len(train) + len(val) == 30 and not set(train.paths) & set(val.paths)
    expected = stratified_split(folder_samples(data).labels, 0.3, seed=5)[1]
    assert sorted(val.paths) == sorted(folder_samples(data).paths[i] for i in expected)


def test_torchvision_datasets_become_rgb_samples_and_offline_is_one_line(monkeypatch, tmp_path):
    import torchvision

    class FakeCifar:
        def __init__(self, root, train, download):
            rng = np.random.default_rng(0 if train else 1)
            self.data = rng.integers(0, 255, size=(12 if train else 6, 32, 32, 3), dtype=np.uint8)
            self.targets = [i % 3 for i in range(len(self.data))]
            self.classes = ["airplane", "automobile", "bird"]

    def offline(root, train, download):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setenv("EDGEXFER_DATA", str(tmp_path))
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCifar)
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    train, val = load_splits(DataSpec(data="cifar10", classes="airplane,bird"))
    assert train.class_names == ["airplane", "bird"] and len(train) == 8 and len(val) == 4
    assert train[1][0].mode == "RGB" and train[1][1] == 1
    with pytest.raises(DataError, match="cannot get fashion-mnist into .*--data embedded") as info:
        load_splits(DataSpec(data="Fashion-MNIST"))
    assert "\n" not in str(info.value)


def test_samples_for_run_refuses_data_changed_since_finetune(tmp_path):
    import os
    import shutil

    from PIL import Image

    from edgexfer.errors import StaleArtifactError
    from edgexfer.stages.finetune import FinetuneConfig, run_finetune

    data = make_image_folder(tmp_path / "one", per_class=8, size=32)
    run = tmp_path / "run"
    run_finetune(
        FinetuneConfig(
            out=run,
            weights="none",
            data=str(data),
            size=32,
            epochs=1,
            batch_size=8,
            strategy="linear",
            progress=False,
            amp="off",
        )
    )
    recorded = Manifest.open(run).stage("finetune")["config"]["data_summary"]["fingerprint"]
    assert len(samples_for_run(run, "val")) == 6
    target = Path(samples_for_run(run, "train").paths[7])
    original, stat = target.read_bytes(), target.stat()

    def refused(*splits: str) -> str:
        with pytest.raises(StaleArtifactError) as info:
            samples_for_run(run, "train")
        line = str(info.value)
        assert "\n" not in line and f"the data under '{data.resolve()}' changed since finetune" in line
        assert f"{' and '.join(splits)} split: fingerprint {recorded} recorded" in line
        assert "re-run 'edgexfer finetune'" in line
        return line

    # changed: another picture of another size under the same name
    Image.fromarray(np.zeros((48, 48, 3), dtype=np.uint8)).save(target)
    refused("train")  # the image is in the training part of the split
    target.write_bytes(original)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert len(samples_for_run(run, "train")) == 18  # restored: accepted again
    # added: one more image moves the stratified split, so both parts change
    shutil.copy2(target, target.with_name("img_099.png"))
    refused("train and val")
    target.with_name("img_099.png").unlink()
    # removed
    moved = tmp_path / "aside.png"
    shutil.move(str(target), str(moved))
    refused("train and val")
    shutil.move(str(moved), str(target))
    assert len(samples_for_run(run, "train")) == 18
