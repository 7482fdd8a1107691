"""Real TensorRT engines, compared with ONNX Runtime. Skipped (with the reason) without TensorRT + CUDA."""

from __future__ import annotations

import json

import numpy as np
import pytest

import onnx_factory as factory
from edgexfer.backends import get_backend

pytestmark = pytest.mark.gpu


def _tensorrt_or_skip():
    backend = get_backend("tensorrt")
    ok, reason = backend.availability()
    if not ok:
        pytest.skip(f"TensorRT backend unavailable: {reason}")
    return backend


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    _tensorrt_or_skip()
    root = tmp_path_factory.mktemp("trt_gpu")
    float_path = factory.export_float(factory.tiny_net(), root / "model.onnx")
    int8_path = factory.quantize_cpu(float_path, root / "model_int8_tensorrt.onnx", symmetric=True)
    batch = np.concatenate(factory.calibration_batches(count=10, seed=3))
    with get_backend("onnxruntime").load(float_path) as runner:
        reference = runner.infer(batch)
    return {"float": float_path, "int8": int8_path, "batch": batch, "reference": reference}


@pytest.mark.parametrize(
    "precision, source, atol", [("fp32", "float", 2e-3), ("fp16", "float", 3e-2), ("int8", "int8", None)]
)
def test_engine_matches_onnxruntime(models, tmp_path, precision, source, atol):
    backend = _tensorrt_or_skip()
    result = backend.build(models[source], precision, tmp_path, {"max_batch": 4})
    sidecar = json.loads(result.path.with_suffix(".json").read_text())
    assert sidecar["build"]["tensorrt"] and sidecar["build"]["compute_capability"]
    with backend.load(result.path) as runner:
        logits = runner.infer(models["batch"])  # 10 images through a max-batch-4 profile
        assert runner.max_batch == 4
    reference = models["reference"]
    assert logits.shape == reference.shape and np.all(np.isfinite(logits))
    if atol is not None:
        np.testing.assert_allclose(logits, reference, atol=atol, rtol=atol)
    else:
        from edgexfer.metrics import cosine_similarity

        assert cosine_similarity(reference, logits).mean() > 0.98
        assert (logits.argmax(1) == reference.argmax(1)).mean() >= 0.8


def test_timing_cache_is_written_and_reused(models, tmp_path):
    backend = _tensorrt_or_skip()
    first = backend.build(models["float"], "fp32", tmp_path, {})
    cache = tmp_path / first.extra["timing_cache"]
    assert cache.is_file() and cache.stat().st_size > 0
    backend.build(models["float"], "fp16", tmp_path, {})
    assert cache.stat().st_size > 0


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
