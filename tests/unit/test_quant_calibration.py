"""Calibration: the image set, one-pass range collection (equal to ORT's own calibrators), the cache."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing

import numpy as np
import pytest

import onnx_factory as factory
from conftest import make_image_folder
from edgexfer.errors import ConfigError, DataError
from edgexfer.quant import cache as qcache
from edgexfer.quant import ranges as qranges
from edgexfer.quant import calibration as calib
from edgexfer.preprocess import Preprocess

SPEC = Preprocess(size=32, resize_size=32, augment="none")


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """A small float ONNX net and 24 preprocessed calibration inputs."""
    root = tmp_path_factory.mktemp("calib")
    path = factory.export_float(factory.tiny_net(), root / "model.onnx")
    inputs = np.concatenate(factory.calibration_batches(count=24, seed=5))
    return path, inputs


def test_sample_indices_deterministic_and_bounded():
    a = calib.sample_indices(100, 10, seed=3)
    assert list(a) == list(calib.sample_indices(100, 10, seed=3))
    assert len(set(a)) == 10 and list(a) == sorted(a) and a.max() < 100
    assert list(a) != list(calib.sample_indices(100, 10, seed=4))
    assert list(calib.sample_indices(5, 10, seed=0)) == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigError):
        calib.sample_indices(5, 0, seed=0)


def test_folder_set_uses_eval_preprocessing_recursively(tmp_path, caplog):
    make_image_folder(tmp_path / "calib" / "nested", per_class=3, size=40)  # nested/<class>/img
    (tmp_path / "calib" / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.WARNING, logger="edgexfer"):
        cs = calib.folder_calibration_set(tmp_path / "calib", SPEC, size=20, seed=0)
    assert len(cs) == 9 and cs.available == 9 and len(cs.paths) == 9
    assert "only 9 image(s), fewer than the 20 asked for" in caplog.text
    for i, path in enumerate(cs.paths):
        np.testing.assert_array_equal(cs.arrays[i], SPEC.load(path))
    assert cs.inputs("uint8_nhwc").shape == (9, 32, 32, 3) and cs.inputs("uint8_nchw").dtype == np.uint8
    again = calib.folder_calibration_set(tmp_path / "calib", SPEC, size=5, seed=0)
    assert again.paths == calib.folder_calibration_set(tmp_path / "calib", SPEC, size=5, seed=0).paths
    # the fingerprint follows the data: another sample, other preprocessing
    assert again.fingerprint != cs.fingerprint
    other = calib.folder_calibration_set(tmp_path / "calib", dataclasses.replace(SPEC, mean=(0.5, 0.5, 0.5)), size=20)
    assert other.fingerprint != cs.fingerprint
    assert calib.folder_calibration_set(tmp_path / "calib", SPEC, size=20).fingerprint == cs.fingerprint


def test_fingerprint_is_computed_once_over_read_only_arrays(monkeypatch):
    """The sha256 over hundreds of MB is taken once; the arrays cannot change under the cached value."""
    rng = np.random.default_rng(0)
    arrays = rng.normal(size=(4, 3, 8, 8)).astype(np.float32)
    cs = calib.CalibrationSet(arrays, np.zeros(arrays.shape, np.uint8), source="test")
    calls = []
    real = hashlib.sha256
    monkeypatch.setattr(calib.hashlib, "sha256", lambda *a: calls.append(1) or real(*a))
    first = cs.fingerprint
    assert [cs.fingerprint for _ in range(5)] == [first] * 5 and len(calls) == 1
    digest = real(f"{arrays.shape}|{arrays.dtype}".encode("utf-8"))
    digest.update(arrays.tobytes())
    assert first == digest.hexdigest()
    with pytest.raises(ValueError, match="read-only"):
        cs.arrays[0, 0, 0, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        cs.pixels[0, 0, 0, 0] = 1


def test_bad_calibration_folders(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        calib.folder_calibration_set(tmp_path / "missing", SPEC)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(DataError, match="has no images"):
        calib.folder_calibration_set(tmp_path / "empty", SPEC)
    make_image_folder(tmp_path / "broken", per_class=1, size=40)
    (tmp_path / "broken" / "red" / "zz_bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError, match="unreadable calibration image.*zz_bad.png"):
        calib.folder_calibration_set(tmp_path / "broken", SPEC)


def test_one_pass_ranges_equal_onnxruntime_calibrators(tiny_onnx, tmp_path):
    """minmax/entropy/percentile from one pass equal ORT's own calibrators run one by one."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    path, inputs = tiny_onnx
    ours = qranges.collect_ranges(path, inputs, qranges.METHODS, batch_size=8)
    ort_methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    for method, ort_method in ort_methods.items():
        if method == "entropy":  # ORT's own KL search takes ~1 s per tensor at 2048 bins: compare 2 tensors
            continue
        calibrator = create_calibrator(
            path,
            None,
            augmented_model_path=str(tmp_path / f"{method}.onnx"),
            calibrate_method=ort_method,
            extra_options={},
        )
        calibrator.collect_data(calib.make_reader(inputs, 8))
        theirs = calibrator.compute_data()
        assert set(theirs.data) == set(ours[method]), method
        for name, (low, high) in ours[method].items():
            lo, hi = (float(np.asarray(v).reshape(-1)[0]) for v in theirs[name].range_value)
            assert low == pytest.approx(lo, rel=1e-5, abs=1e-6) and high == pytest.approx(
                hi, rel=1e-5, abs=1e-6
            ), (method, name)
    # and minmax is the observed extreme of the graph input and output
    assert ours["minmax"]["input"] == pytest.approx((float(inputs.min()), float(inputs.max())))
    import onnxruntime as ort

    logits = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": inputs})[
        0
    ]
    assert ours["minmax"]["logits"] == pytest.approx((float(logits.min()), float(logits.max())), rel=1e-5)
    assert ours["percentile"]["logits"][1] <= ours["minmax"]["logits"][1] + 1e-6


def test_entropy_search_equals_onnxruntime():
    """The vectorised KL search returns ORT's own thresholds on the 2048-bin histograms it collects."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    rng = np.random.default_rng(0)
    data = {
        "normal": rng.normal(size=50000).astype(np.float32),
        "relu_heavy_tail": np.maximum(rng.standard_t(3, size=50000), 0).astype(np.float32),
    }
    options = qranges.COLLECTOR_OPTIONS["entropy"]
    assert options["num_bins"] == 2048  # not ORT's 128, where the search has a single candidate
    collector = HistogramCollector(
        method="entropy",
        symmetric=False,
        num_bins=2048,
        num_quantized_bins=128,
        percentile=99.999,
        scenario="same",
    )
    collector.collect(data)
    for name, hist in collector.get_histogram_dict().items():
        theirs = collector.get_entropy_threshold(hist, 128)
        ours = qranges.entropy_range(hist[0], hist[1], hist[2], hist[3], 128)
        assert ours == (float(theirs[0]), float(theirs[1])), name
        assert hist[2] <= ours[0] < ours[1] <= hist[3]
    # on a heavy tail the KL range clips well inside the observed maximum, unlike minmax
    assert qranges.entropy_range(*collector.get_histogram_dict()["relu_heavy_tail"][:4], 128)[1] < 0.8 * float(
        data["relu_heavy_tail"].max()
    )


def test_cache_keys_and_hits(tiny_onnx, tmp_path, monkeypatch):
    path, inputs = tiny_onnx
    cs = calib.CalibrationSet(inputs, np.zeros(inputs.shape, np.uint8), source="test")
    keys = {
        qcache.cache_key("m1", "c1", "minmax"),
        qcache.cache_key("m2", "c1", "minmax"),
        qcache.cache_key("m1", "c2", "minmax"),
        qcache.cache_key("m1", "c1", "entropy"),
    }
    assert len(keys) == 4 and qcache.cache_key("m1", "c1", "minmax") == qcache.cache_key("m1", "c1", "minmax")
    cache = qcache.RangeCache([tmp_path / "run_cache", tmp_path / "shared"])
    first, hits = qcache.ranges_for(path, "sha-a", cs, ["minmax", "percentile"], cache)
    assert hits == {"minmax": False, "percentile": False}
    assert (
        len(list((tmp_path / "shared").glob("*.json"))) == 2
        and len(list((tmp_path / "run_cache").glob("*"))) == 2
    )

    def fail(*args, **kwargs):
        raise AssertionError("calibration ran although the ranges were cached")

    monkeypatch.setattr(qcache, "collect_ranges", fail)
    second, hits = qcache.ranges_for(path, "sha-a", cs, ["minmax", "percentile"], cache)
    assert hits == {"minmax": True, "percentile": True} and second == first
    # the run-dir copy alone is enough; a corrupt file is a miss, never an error
    for file in (tmp_path / "shared").glob("*.json"):
        file.write_text("{broken")
    assert qcache.ranges_for(path, "sha-a", cs, ["minmax"], cache)[1] == {"minmax": True}
    monkeypatch.undo()
    # another model hash or another calibration set is never served the old ranges
    _, hits = qcache.ranges_for(path, "sha-b", cs, ["minmax"], cache)
    assert hits == {"minmax": False}
    changed = calib.CalibrationSet(inputs[:12], np.zeros(inputs[:12].shape, np.uint8), source="test")
    assert qcache.ranges_for(path, "sha-a", changed, ["minmax"], cache)[1] == {"minmax": False}


def _hammer(args):
    folder, worker = args
    cache = qcache.RangeCache([folder])
    ranges = {f"t{i}": (float(-i - worker), float(i + worker)) for i in range(200)}
    for _ in range(15):
        cache.store("samekey", ranges, {"worker": worker})
        loaded = cache.load("samekey")
        assert loaded is not None and len(loaded) == 200
    return True


def test_cache_is_safe_for_two_processes(tmp_path):
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        assert pool.map(_hammer, [(str(tmp_path), 0), (str(tmp_path), 1)]) == [True, True]
    data = json.loads((tmp_path / "samekey.json").read_text())
    assert data["key"] == "samekey" and len(data["ranges"]) == 200
    assert [p.name for p in tmp_path.iterdir()] == ["samekey.json"]  # no temporary files left


def test_histograms_see_a_seeded_subset_and_minmax_sees_all(tiny_onnx):
    """entropy/percentile come from a seeded subset of the images (exactly what the collector gives on that
    subset alone), min/max from all of them; batch size does not change the histograms (no re-binning)."""
    path, inputs = tiny_onnx
    whole = qranges.collect_ranges(path, inputs, qranges.METHODS, batch_size=8)
    subset = qranges.histogram_subset(len(inputs), 10, seed=0)
    assert len(subset) == 10 and list(subset) == sorted(set(subset))
    assert list(subset) == list(qranges.histogram_subset(len(inputs), 10, seed=0))
    assert list(subset) != list(qranges.histogram_subset(len(inputs), 10, seed=1))
    assert list(qranges.histogram_subset(5, 10)) == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigError):
        qranges.histogram_subset(5, 0)
    sampled = qranges.collect_ranges(path, inputs, qranges.METHODS, batch_size=8, histogram_images=10)
    assert sampled["minmax"] == whole["minmax"]
    alone = qranges.collect_ranges(path, inputs[subset], ["entropy", "percentile"], batch_size=3)
    for method in ("entropy", "percentile"):
        assert sampled[method] == alone[method], method
        assert sampled[method] != whole[method], method  # the subset is what the histograms saw
        for name, (low, high) in whole[method].items():
            span = max(abs(low), abs(high), 1e-6)
            assert abs(sampled[method][name][1] - high) <= 0.25 * span, (method, name)
    # the subset's size is part of the cache key
    assert qranges.COLLECTOR_OPTIONS["entropy"]["images"] == qranges.HISTOGRAM_IMAGES
