"""The TensorRT build flow and runner against a fake ``tensorrt`` module for 8.5, 8.6, 10.x and 11.x.

The real engine build is in tests/gpu/test_tensorrt.py; here every decision the backend applies is
checked through the documented API surface, and the runner's buffers and batching through a fake
engine that runs the ONNX model with ONNX Runtime.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import fake_trt
import onnx_factory as factory
from edgexfer.backends import tensorrt as trt_backend
from edgexfer.backends.trt_build import build_engine
from edgexfer.errors import ArtifactError, ConfigError, StaleArtifactError

ORIN = {"gpu": "Orin", "compute_capability": "8.7", "l4t": "35.4.1", "jetpack": "5.1.2", "driver": "11.4"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("trt_models")
    net = factory.tiny_net()
    float_path = factory.export_float(net, root / "model.onnx")
    return {
        "float": float_path,
        "net": net,
        "int8_trt": factory.quantize_cpu(float_path, root / "model_int8_tensorrt.onnx", symmetric=True),
        "int8_cpu": factory.quantize_cpu(float_path, root / "model_int8_cpu.onnx"),
    }


def _build(models, tmp_path, version, precision="fp32", source="float", options=None, **fake):
    trt = fake_trt.make_fake_trt(version, **fake)
    result = build_engine(
        trt, models[source], precision, tmp_path, dict(options or {}), {**ORIN, "tensorrt": version}
    )
    return trt, result


def test_trt85_fp16_weakly_typed_with_explicit_batch(models, tmp_path):
    trt, result = _build(models, tmp_path, "8.5.2", "fp16", options={"max_batch": 4, "workspace_mb": 256})
    assert trt.log["network_flags"] == 1 << 3  # EXPLICIT_BATCH by name (3 in the fake enum)
    assert trt.log["flags"] == {"FP16"}
    assert trt.log["workspace"] == ("WORKSPACE", 256 << 20)
    assert trt.log["profiles"] == [("input", (1, 3, 32, 32), (1, 3, 32, 32), (4, 3, 32, 32))]
    assert result.path == tmp_path / "tensorrt_fp16.engine" and result.kind == "tensorrt-engine"
    sidecar = json.loads((tmp_path / "tensorrt_fp16.json").read_text())
    assert sidecar["build"]["tensorrt"] == "8.5.2" and sidecar["build"]["typing"] == "weak"
    assert sidecar["build"]["compute_capability"] == "8.7" and sidecar["build"]["l4t"] == "35.4.1"
    assert sidecar["build"]["profile"] == {"min": 1, "opt": 1, "max": 4}
    assert json.loads(sidecar["metadata"]["edgexfer.class_names"]) == ["red", "green", "blue"]
    assert (tmp_path / "timing_trt8.5_sm87.cache").read_bytes() == b"+tuned"


def test_timing_cache_is_reused_by_the_next_build(models, tmp_path):
    _build(models, tmp_path, "10.3.0", "fp16")
    trt, _ = _build(models, tmp_path, "10.3.0", "fp32")
    assert trt.log["cache_in"] == [b"+tuned"]  # the second build started from the first one's cache
    assert (tmp_path / "timing_trt10.3_sm87.cache").read_bytes() == b"+tuned+tuned"
    trt, _ = _build(models, tmp_path, "10.3.0", "fp32", options={"timing_cache": False})
    assert trt.log["cache_in"] == []


def test_trt10_int8_from_qdq_weak_and_strong(models, tmp_path):
    trt, result = _build(models, tmp_path, "10.3.0", "int8", source="int8_trt")
    assert trt.log["network_flags"] == 0 and trt.log["flags"] == {"INT8", "FP16"}
    trt, result = _build(
        models, tmp_path, "10.3.0", "int8", source="int8_trt", options={"strongly_typed": True}
    )
    assert trt.log["network_flags"] == 1 << 5 and trt.log["flags"] == set()
    assert result.extra["typing"] == "strong"


def test_trt11_fp16_converts_the_onnx_and_sets_no_precision_flags(models, tmp_path):
    trt, result = _build(models, tmp_path, "11.0.0", "fp16")
    assert trt.log["network_flags"] == 0 and trt.log["flags"] == set()
    parsed = trt.log["parsed"][0]
    assert 10 in parsed["initializer_types"] and 1 not in parsed["initializer_types"]  # FLOAT16 weights only
    assert parsed["path"] != str(models["float"])
    assert not list(tmp_path.glob("*.fp16.onnx")) and not list(tmp_path.glob(".*partial"))
    with pytest.raises(ConfigError, match="only strongly typed"):
        _build(models, tmp_path, "11.0.0", "fp16", options={"strongly_typed": False})


def test_int8_needs_the_tensorrt_qdq_artifact(models, tmp_path):
    with pytest.raises(ConfigError, match="no QuantizeLinear"):
        _build(models, tmp_path, "10.3.0", "int8", source="float")
    with pytest.raises(ConfigError, match="target 'cpu'"):
        _build(models, tmp_path, "8.6.1", "int8", source="int8_cpu")


def test_portable_and_dla_builds(models, tmp_path):
    trt, result = _build(
        models, tmp_path, "8.6.1", "fp16", options={"version_compatible": True, "hardware_compatible": True}
    )
    assert trt.log["flags"] == {"FP16", "VERSION_COMPATIBLE"}
    assert trt.log["config"].hardware_compatibility_level == "AMPERE_PLUS"
    assert result.extra["version_compatible"] and result.extra["hardware_compatible"]
    with pytest.raises(ConfigError, match="need TensorRT 8.6"):
        _build(models, tmp_path, "8.5.2", "fp16", options={"version_compatible": True})
    trt, result = _build(
        models, tmp_path, "8.5.2", "int8", source="int8_trt", options={"dla_core": 1}, dla_cores=2
    )
    assert trt.log["config"].default_device_type == "DLA" and trt.log["config"].DLA_core == 1
    assert "GPU_FALLBACK" in trt.log["flags"] and result.extra["dla_core"] == 1
    with pytest.raises(ConfigError, match="no DLA cores"):
        _build(models, tmp_path, "10.3.0", "fp16", options={"dla_core": 0})
    with pytest.raises(ConfigError, match="unknown TensorRT build option"):
        _build(models, tmp_path, "10.3.0", "fp16", options={"max_workspace": 1})


def test_failed_parse_or_build_leaves_nothing(models, tmp_path):
    with pytest.raises(
        ArtifactError, match="parser rejected 'model.onnx': Unsupported op Foo \\(\\+1 more\\)"
    ):
        _build(models, tmp_path, "10.3.0", "fp32", parse_errors=["Unsupported op Foo", "second"])
    with pytest.raises(ArtifactError, match="could not build an engine"):
        _build(models, tmp_path, "10.3.0", "fp32", build_fails=True)
    assert list(tmp_path.iterdir()) == []


def test_opset_18_is_refused_on_trt86(models, tmp_path):
    import onnx

    model = onnx.load(str(models["float"]))
    model.opset_import[0].version = 18
    path = tmp_path / "opset18.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ConfigError, match="opset <= 17"):
        build_engine(fake_trt.make_fake_trt("8.6.1"), path, "fp32", tmp_path / "out", {}, ORIN)


@pytest.fixture
def fake_runtime(monkeypatch, models, tmp_path):
    """A fake tensorrt + device memory wired into the backend, and an engine built with them."""
    trt = fake_trt.make_fake_trt("10.3.0")
    monkeypatch.setattr(trt_backend, "_trt", lambda: trt)
    monkeypatch.setattr(trt_backend, "device_memory", lambda preferred=None: fake_trt.FakeMemory())
    here = {**ORIN, "tensorrt": "10.3.0"}
    monkeypatch.setattr(trt_backend, "trt_machine", lambda module=None: dict(here))
    result = build_engine(trt, models["float"], "fp32", tmp_path, {"max_batch": 4}, here)
    return {"engine": result.path, "here": here}


def test_runner_matches_onnxruntime_and_splits_batches(fake_runtime, models):
    import torch

    batch = np.concatenate(factory.calibration_batches(count=6))
    with torch.no_grad():
        expected = models["net"](torch.from_numpy(batch)).numpy()
    runner = trt_backend.TensorRTBackend().load(fake_runtime["engine"])
    with runner:
        logits = runner.infer(batch)
        assert runner.max_batch == 4 and runner.input_dtype == np.float32 and runner.input_layout == "NCHW"
        context = runner._objects["context"]
        assert context.calls == [4, 2]  # 6 images through a max-batch-4 profile
        facts = runner.describe()
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    assert facts["tensorrt"] == "10.3.0" and facts["warnings"] == []


def test_runner_refuses_an_engine_from_another_machine(fake_runtime, monkeypatch):
    monkeypatch.setattr(
        trt_backend,
        "trt_machine",
        lambda module=None: {
            **fake_runtime["here"],
            "tensorrt": "10.7.0",
            "gpu": "RTX 3060",
            "compute_capability": "8.6",
        },
    )
    with pytest.raises(StaleArtifactError) as info:
        with trt_backend.TensorRTBackend().load(fake_runtime["engine"]):
            pass
    assert "built with TensorRT 10.3.0, this machine has 10.7.0" in str(info.value)
    assert "compute capability 8.7 (Orin), this one is 8.6 (RTX 3060)" in str(info.value)


def test_runner_reports_a_corrupt_engine_clearly(fake_runtime):
    fake_runtime["engine"].write_bytes(b"garbage")
    with pytest.raises(StaleArtifactError, match="could not deserialise"):
        with trt_backend.TensorRTBackend().load(fake_runtime["engine"]):
            pass
    (fake_runtime["engine"].with_suffix(".json")).unlink()
    with pytest.raises(ArtifactError, match="has no sidecar 'tensorrt_fp32.json'"):
        with trt_backend.TensorRTBackend().load(fake_runtime["engine"]):
            pass


def test_availability_without_tensorrt_says_how_to_get_it():
    try:
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    ok, reason = trt_backend.TensorRTBackend().availability()
    assert not ok and "pip install 'edgexfer[tensorrt]'" in reason and "--system-site-packages" in reason


def test_device_memory_without_any_cuda_library_is_a_clear_error(monkeypatch):
    from edgexfer.backends import trt_devmem

    found = trt_devmem.have_device_memory_libraries()
    assert set(found) == {"polygraphy", "cuda-python", "torch"} and all(
        isinstance(v, bool) for v in found.values()
    )
    monkeypatch.setattr(trt_devmem, "have_device_memory_libraries", lambda: dict.fromkeys(found, False))
    with pytest.raises(ConfigError, match="pip install polygraphy, or cuda-python"):
        trt_devmem.device_memory()
