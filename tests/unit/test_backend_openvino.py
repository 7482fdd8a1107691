"""The OpenVINO backend for real: IR conversion, sidecar, parity with ONNX Runtime, input checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

import onnx_factory as factory
from edgexfer.backends import get_backend
from edgexfer.errors import ArtifactError, DataError

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("ov_models")
    float_path = factory.export_float(factory.tiny_net(), root / "model.onnx")
    int8_path = factory.quantize_cpu(float_path, root / "model_int8_cpu.onnx")
    batch = np.concatenate(factory.calibration_batches(count=5, seed=4))
    with get_backend("onnxruntime").load(int8_path) as runner:
        ort_int8 = runner.infer(batch)
    with get_backend("onnxruntime").load(float_path) as runner:
        ort_float = runner.infer(batch)
    return {
        "float": float_path,
        "int8": int8_path,
        "batch": batch,
        "ort_int8": ort_int8,
        "ort_float": ort_float,
    }


def test_int8_ir_matches_onnxruntime_int8(models, tmp_path):
    backend = get_backend("openvino")
    result = backend.build(models["int8"], "int8", tmp_path)
    sidecar = json.loads(result.path.with_suffix(".json").read_text())
    assert sidecar["precision"] == "int8" and sidecar["metadata"]["edgexfer.precision"] == "int8"
    with backend.load(result.path, {"threads": 1}) as runner:
        logits = runner.infer(models["batch"])
        assert runner.describe()["inference_precision"] == "f32"
    # Both runtimes execute the same integer arithmetic of the same QDQ model.
    np.testing.assert_allclose(logits, models["ort_int8"], atol=2e-2)
    spread = np.ptp(models["ort_float"])
    assert np.abs(logits - models["ort_float"]).max() < 0.1 * spread


def test_fp32_ir_is_exact_and_checks_input(models, tmp_path):
    backend = get_backend("openvino")
    result = backend.build(models["float"], "fp32", tmp_path)
    with backend.load(result.path) as runner:
        np.testing.assert_allclose(runner.infer(models["batch"]), models["ort_float"], atol=1e-4)
        with pytest.raises(DataError, match="height 32"):
            runner.infer(np.zeros((1, 3, 16, 16), np.float32))
        with pytest.raises(DataError, match="float32"):
            runner.infer(np.zeros((1, 3, 32, 32), np.uint8))


def test_missing_weights_file_is_clear(models, tmp_path):
    backend = get_backend("openvino")
    result = backend.build(models["float"], "fp32", tmp_path)
    result.path.with_suffix(".bin").unlink()
    with pytest.raises(ArtifactError, match="has no weights file 'openvino_fp32.bin'"):
        backend.load(result.path)


def test_fp16_is_refused_without_the_cpu_capability(models, tmp_path, monkeypatch):
    """Decided by the capabilities OpenVINO reports, so the refusal is checked on every CPU."""
    from edgexfer.backends import openvino as backend_module
    from edgexfer.errors import ConfigError

    monkeypatch.setattr(backend_module, "cpu_capabilities", lambda: ["FP32", "INT8", "BIN"])
    with pytest.raises(ConfigError, match=r"cannot run fp16 on this CPU \(capabilities: FP32, INT8, BIN\)"):
        get_backend("openvino").build(models["float"], "fp16", tmp_path)
    assert not list(tmp_path.iterdir())
    monkeypatch.setattr(backend_module, "cpu_capabilities", lambda: ["FP32", "FP16", "INT8"])
    get_backend("openvino").check_precision("fp16")  # allowed where the CPU has FP16


def test_fp16_build_halves_the_weights_and_stays_close(models, tmp_path):
    from edgexfer.backends.openvino import cpu_capabilities

    if "FP16" not in cpu_capabilities():
        pytest.skip("this CPU has no FP16 capability for OpenVINO (the refusal is tested above)")
    backend = get_backend("openvino")
    result = backend.build(models["float"], "fp16", tmp_path)
    assert result.path.with_suffix(".bin").stat().st_size < 0.6 * (models["float"].stat().st_size)
    with backend.load(result.path) as runner:
        np.testing.assert_allclose(runner.infer(models["batch"]), models["ort_float"], atol=5e-3)


def test_changed_weights_file_is_refused_on_load(models, tmp_path):
    """The sidecar's weights_sha256 is checked: the .xml with other weights would run without a word."""
    backend = get_backend("openvino")
    result = backend.build(models["float"], "fp32", tmp_path)
    assert backend.artifact_files(result.path) == [
        tmp_path / "openvino_fp32.bin", tmp_path / "openvino_fp32.json", tmp_path / "openvino_fp32.xml"
    ]
    weights = result.path.with_suffix(".bin")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="OpenVINO weights .* changed since 'openvino_fp32.xml' was built"):
        backend.load(result.path)
