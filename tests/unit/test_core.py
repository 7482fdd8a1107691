"""Manifest, atomic writes, preprocessing and the CLI's error handling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgexfer.errors import ArtifactError, ConfigError, DataError, StaleArtifactError
from edgexfer.fsutil import atomic_path, sha256_file
from edgexfer.manifest import SCHEMA_VERSION, Manifest
from edgexfer.preprocess import Preprocess, load_image


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"good")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_manifest_records_hash_and_detects_staleness(tmp_path):
    run = tmp_path / "run"
    (run / "a").mkdir(parents=True)
    (run / "a" / "ckpt.pt").write_bytes(b"weights-1")
    with Manifest.update(run, create=True) as manifest:
        manifest.add_artifact("checkpoint", run / "a" / "ckpt.pt", kind="checkpoint", stage="finetune")
    (run / "model.onnx").write_bytes(b"onnx-1")
    with Manifest.update(run) as manifest:
        manifest.add_artifact("onnx", "model.onnx", kind="onnx", stage="export", inputs=["checkpoint"])
    data = json.loads((run / "manifest.json").read_text())
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["artifacts"]["onnx"]["sha256"] == sha256_file(run / "model.onnx")
    assert data["artifacts"]["onnx"]["inputs"]["checkpoint"] == sha256_file(run / "a" / "ckpt.pt")
    assert Manifest.open(run).is_fresh("onnx")

    # The checkpoint file changes behind the manifest's back: both it and the ONNX model are stale.
    (run / "a" / "ckpt.pt").write_bytes(b"weights-2")
    with pytest.raises(StaleArtifactError, match="checkpoint"):
        Manifest.open(run).require("onnx")
    # The finetune stage re-records the checkpoint: the ONNX model was made from the old one.
    with Manifest.update(run) as manifest:
        manifest.add_artifact("checkpoint", run / "a" / "ckpt.pt", kind="checkpoint", stage="finetune")
    with pytest.raises(StaleArtifactError, match="older 'checkpoint'"):
        Manifest.open(run).require("onnx")


def test_manifest_errors_are_clear(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        Manifest.open(tmp_path / "nope")
    with pytest.raises(ArtifactError, match="not an edgexfer run directory"):
        Manifest.open(tmp_path)
    with Manifest.update(tmp_path, create=True):
        pass
    with pytest.raises(ArtifactError, match="has no artifact 'onnx'"):
        Manifest.open(tmp_path).require("onnx")


def test_manifest_not_saved_when_body_raises(tmp_path):
    with Manifest.update(tmp_path, create=True) as manifest:
        manifest.record_stage("finetune", {"epochs": 1})
    before = (tmp_path / "manifest.json").read_text()
    with pytest.raises(RuntimeError):
        with Manifest.update(tmp_path) as manifest:
            manifest.record_stage("export", {})
            raise RuntimeError("boom")
    assert (tmp_path / "manifest.json").read_text() == before


def test_preprocess_matches_manual_normalisation(tmp_path):
    from PIL import Image

    pixels = np.arange(48 * 64 * 3, dtype=np.uint8).reshape(48, 64, 3)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    spec = Preprocess(size=32, resize_size=48, augment="none")
    array = spec.load(tmp_path / "x.png")
    assert array.shape == (3, 32, 32) and array.dtype == np.float32
    # resize is a no-op (shorter side is already 48); the crop is the centre 32x32 of 48x64
    crop = pixels[8:40, 16:48].astype(np.float32) / 255.0
    expected = (crop - np.array(spec.mean, dtype=np.float32)) / np.array(spec.std, dtype=np.float32)
    np.testing.assert_allclose(array, expected.transpose(2, 0, 1), rtol=1e-6, atol=1e-6)
    assert Preprocess.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "RGBA", "LA", "I;16"])
def test_load_image_converts_modes(tmp_path, mode):
    from PIL import Image

    image = Image.new("RGB", (20, 10), (10, 200, 30))
    if mode == "I;16":
        image = Image.fromarray(np.full((10, 20), 40000, dtype=np.uint16))
        path = tmp_path / "x.png"
    else:
        image = image.convert(mode)
        path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    image.save(path)
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == (20, 10)


def test_load_image_rejects_bad_files(tmp_path):
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    from PIL import Image

    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "ok.jpg")
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    for name in ("text.jpg", "empty.png", "cut.jpg", "missing.png"):
        with pytest.raises(DataError, match=name):
            load_image(tmp_path / name)


@pytest.mark.parametrize("bad", [{"size": 4}, {"size": 32, "resize_size": 16}, {"std": (0, 1, 1)},
                                 {"interpolation": "lanczos9"}, {"mean": (0.5, 0.5)}])
def test_preprocess_validates(bad):
    with pytest.raises(ConfigError):
        Preprocess(**bad)


def test_cli_help_and_version(cli_runner):
    code, out, _ = cli_runner("--version")
    assert code == 0 and "edgexfer" in out
    code, out, _ = cli_runner("--help")
    assert code == 0 and "finetune" in out


def test_cli_unknown_command_is_one_line(cli_runner):
    code, _, err = cli_runner("frobnicate")
    assert code == 2 and "No such command" in err and "Traceback" not in err


def test_manifest_accepts_paths_relative_to_cwd_or_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = Path("runs") / "demo"
    (run / "export").mkdir(parents=True)
    (run / "export" / "model.onnx").write_bytes(b"m")
    with Manifest.update(run, create=True) as manifest:
        a = manifest.add_artifact("a", run / "export" / "model.onnx", kind="onnx", stage="export")
        b = manifest.add_artifact("b", "export/model.onnx", kind="onnx", stage="export")
    assert a.path == b.path == "export/model.onnx"
    assert Manifest.open(run).is_fresh("a")


def test_manifest_hashes_companion_files(tmp_path):
    """An artifact made of several files (OpenVINO's .xml + .bin, a sidecar) is stale when any changes."""
    build = tmp_path / "build"
    build.mkdir()
    for name, data in (("m.xml", b"graph"), ("m.bin", b"weights"), ("m.json", b"{}")):
        (build / name).write_bytes(data)
    with Manifest.update(tmp_path, create=True) as manifest:
        record = manifest.add_artifact("ir", build / "m.xml", kind="openvino-ir", stage="build",
                                       companions=[build / "m.bin", "build/m.json"])
        manifest.add_artifact("plain", build / "m.json", kind="report", stage="build")
    assert record.companions == {"build/m.bin": sha256_file(build / "m.bin"),
                                 "build/m.json": sha256_file(build / "m.json")}
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert "companions" not in data["artifacts"]["plain"]  # single-file records look as before
    assert Manifest.open(tmp_path).audit() == []
    (build / "m.bin").write_bytes(b"other weights")
    with pytest.raises(StaleArtifactError, match=r"'ir' \(.*m\.bin\) changed since the 'build' stage"):
        Manifest.open(tmp_path).require("ir")
    (build / "m.bin").unlink()
    with pytest.raises(ArtifactError, match="recorded with .*m.bin, which is missing"):
        Manifest.open(tmp_path).require("ir")


def test_tool_versions_come_from_one_library_list():
    from importlib import metadata

    from edgexfer import __version__
    from edgexfer.provenance import LIBRARIES, library_versions, tool_versions

    everything = library_versions(include_missing=True)
    assert list(everything) == list(LIBRARIES)
    assert everything["numpy"] == metadata.version("numpy") and everything["onnx"] == metadata.version("onnx")
    recorded = tool_versions()
    assert recorded["edgexfer"] == __version__ and recorded["numpy"] == everything["numpy"]
    # the manifest records installed libraries only; absent ones are left out, not ''
    assert set(recorded) - {"python", "edgexfer"} == {k for k, v in everything.items() if v}


def test_measure_interleaved_times_round_robin_and_isolates_a_failure():
    from edgexfer.timing import TimingConfig, measure_interleaved

    order = []

    def call(name):
        def run():
            order.append(name)
            if name == "bad" and order.count("bad") == 2:
                raise RuntimeError("broken runtime")
        return run

    config = TimingConfig(warmup=0, warmup_time_s=0.0, min_iterations=2, max_iterations=2, min_time_s=0.0)
    samples, errors = measure_interleaved({"a": call("a"), "bad": call("bad"), "b": call("b")}, 3,
                                          lambda index: config)
    # each round times every call twice, in order; the failing one is dropped after its error
    assert order == ["a", "a", "bad", "bad", "b", "b"] + ["a", "a", "b", "b"] * 2
    assert set(samples) == {"a", "b"} and all(len(s) == 6 for s in samples.values())
    assert list(errors) == ["bad"] and str(errors["bad"]) == "broken runtime"
