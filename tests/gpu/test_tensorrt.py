"""Real TensorRT engines, compared with ONNX Runtime. Skipped (with the reason) without TensorRT + CUDA.

What the fake cannot prove: the uint8 input parses and builds (Cast first), a min-batch-2 profile with a
remainder batch, every output bound, exact fp32 with TF32 cleared, version-/hardware-compatible and
strongly typed builds, DLA where the device has it, and each device-memory library that works here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import onnx_factory as factory
import trt_models
from edgexfer.backends import get_backend

pytestmark = pytest.mark.gpu


def _tensorrt_or_skip():
    backend = get_backend("tensorrt")
    ok, reason = backend.availability()
    if not ok:
        pytest.skip(f"TensorRT backend unavailable: {reason}")
    return backend


def _version():
    from edgexfer.backends import trt_compat, trt_runtime

    return trt_compat.parse_version(trt_runtime.load_trt().__version__)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    _tensorrt_or_skip()
    root = tmp_path_factory.mktemp("trt_gpu")
    paths = trt_models.make_models(root)
    batch = np.concatenate(factory.calibration_batches(count=10, seed=3))
    with get_backend("onnxruntime").load(paths["float"]) as runner:
        paths["reference"] = runner.infer(batch)
    paths["batch"] = batch
    return paths


def _ort(path, feed):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": feed})[0]


@pytest.mark.parametrize(
    "precision, source, atol", [("fp32", "float", 1e-4), ("fp16", "float", 3e-2), ("int8", "int8_trt", None)]
)
def test_engine_matches_onnxruntime(models, tmp_path, precision, source, atol):
    backend = _tensorrt_or_skip()
    result = backend.build(models[source], precision, tmp_path, {"max_batch": 4})
    sidecar = json.loads(result.path.with_suffix(".json").read_text())
    assert sidecar["build"]["tensorrt"] and sidecar["build"]["compute_capability"]
    assert sidecar["build"]["tf32"] is False and sidecar["build"]["os"] and sidecar["build"]["arch"]
    with backend.load(result.path) as runner:
        logits = runner.infer(models["batch"])  # 10 images through a max-batch-4 profile
        assert runner.max_batch == 4
    reference = models["reference"]
    assert logits.shape == reference.shape and np.all(np.isfinite(logits))
    if atol is not None:  # fp32 is exact fp32 now that TF32 is cleared
        np.testing.assert_allclose(logits, reference, atol=atol, rtol=atol)
    else:
        from edgexfer.metrics import cosine_similarity

        assert cosine_similarity(reference, logits).mean() > 0.98
        assert (logits.argmax(1) == reference.argmax(1)).mean() >= 0.8


def test_min_batch_profile_with_a_remainder(models, tmp_path):
    backend = _tensorrt_or_skip()
    result = backend.build(models["float"], "fp32", tmp_path, {"min_batch": 2, "max_batch": 4})
    with backend.load(result.path) as runner:
        assert (runner.min_batch, runner.max_batch) == (2, 4)
        logits = runner.infer(models["batch"][:5])  # 4 + 1 (padded to 2)
        single = runner.infer(models["batch"][:1])
    np.testing.assert_allclose(logits, models["reference"][:5], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(single, models["reference"][:1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_uint8_nhwc_input_builds_and_matches(models, tmp_path, precision):
    backend = _tensorrt_or_skip()
    if _version() < (8, 6, 0):
        pytest.skip("uint8 inputs are refused before TensorRT 8.6")
    result = backend.build(models["uint8_cast_first"], precision, tmp_path, {"max_batch": 4})
    pixels = np.random.default_rng(1).integers(0, 255, size=(6, 32, 32, 3), dtype=np.uint8)
    with backend.load(result.path) as runner:
        assert runner.input_dtype == np.uint8 and runner.input_layout == "NHWC"
        logits = runner.infer(pixels)
    tolerance = 1e-4 if precision == "fp32" else 3e-2
    np.testing.assert_allclose(logits, _ort(models["uint8_cast_first"], pixels), atol=tolerance, rtol=tolerance)


def test_every_output_is_bound(models, tmp_path):
    backend = _tensorrt_or_skip()
    result = backend.build(models["two_outputs"], "fp32", tmp_path, {"max_batch": 4})
    with backend.load(result.path) as runner:
        assert sorted(runner.output_names) == ["features", "logits"]
        np.testing.assert_allclose(runner.infer(models["batch"]), models["reference"], atol=1e-4, rtol=1e-4)


def test_portable_and_strongly_typed_builds(models, tmp_path):
    backend = _tensorrt_or_skip()
    version = _version()
    if version < (8, 6, 0):
        pytest.skip("version-/hardware-compatible engines need TensorRT 8.6")
    from edgexfer.backends.trt_runtime import load_trt, trt_machine
    from edgexfer.errors import ConfigError

    options = {"max_batch": 4, "version_compatible": True}
    if float(trt_machine(load_trt()).get("compute_capability") or 0) >= 8.0:
        options["hardware_compatible"] = True
    else:
        with pytest.raises(ConfigError, match="Ampere or newer"):
            backend.build(models["float"], "fp16", tmp_path / "hc", {"hardware_compatible": True})
    result = backend.build(models["float"], "fp16", tmp_path, options)
    with backend.load(result.path) as runner:
        np.testing.assert_allclose(runner.infer(models["batch"]), models["reference"], atol=3e-2, rtol=3e-2)
    if version[0] == 10:
        strong = backend.build(models["int8_trt"], "int8", tmp_path / "strong", {"strongly_typed": True})
        with backend.load(strong.path) as runner:
            assert (runner.infer(models["batch"]).argmax(1) == models["reference"].argmax(1)).mean() >= 0.8


def test_dla_where_the_device_has_it(models, tmp_path):
    backend = _tensorrt_or_skip()
    from edgexfer.backends.trt_runtime import load_trt, trt_machine

    if not trt_machine(load_trt()).get("dla_cores"):
        pytest.skip("this device has no DLA")
    result = backend.build(models["float"], "fp16", tmp_path, {"dla_core": 0})
    with backend.load(result.path) as runner:
        assert (runner.min_batch, runner.max_batch) == (1, 1)
        np.testing.assert_allclose(runner.infer(models["batch"]), models["reference"], atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("provider", ["polygraphy", "cuda-python", "torch"])
def test_each_device_memory_library_that_works(models, tmp_path, provider):
    backend = _tensorrt_or_skip()
    from edgexfer.backends import trt_devmem
    from edgexfer.errors import BackendUnavailableError

    try:
        trt_devmem.device_memory(provider).close()
    except BackendUnavailableError as exc:
        pytest.skip(f"{provider} does not work here: {exc}")
    result = backend.build(models["float"], "fp32", tmp_path, {"max_batch": 4})
    with backend.load(result.path, {"device_memory": provider}) as runner:
        assert runner.describe()["device_memory"] == provider
        np.testing.assert_allclose(runner.infer(models["batch"]), models["reference"], atol=1e-4, rtol=1e-4)


def test_timing_cache_is_written_and_reused(models, tmp_path):
    backend = _tensorrt_or_skip()
    first = backend.build(models["float"], "fp32", tmp_path, {})
    cache = tmp_path / first.extra["timing_cache"]
    assert cache.is_file() and cache.stat().st_size > 0
    cache.write_bytes(b"corrupt")  # a corrupt cache warns and starts fresh
    backend.build(models["float"], "fp16", tmp_path, {})
    assert cache.stat().st_size > len(b"corrupt")


def test_engine_sidecar_mismatch_is_refused(models, tmp_path):
    from edgexfer.errors import StaleArtifactError

    backend = _tensorrt_or_skip()
    result = backend.build(models["float"], "fp32", tmp_path, {})
    sidecar_path = result.path.with_suffix(".json")
    record = json.loads(sidecar_path.read_text())
    record["build"]["tensorrt"] = "8.5.2.2"
    record["build"]["compute_capability"] = "5.3"
    sidecar_path.write_text(json.dumps(record))
    with pytest.raises(StaleArtifactError, match="cannot run here"):
        with backend.load(result.path):
            pass
