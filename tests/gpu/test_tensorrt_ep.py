"""ONNX Runtime's CUDA and TensorRT execution providers (onnxruntime-gpu), compared with its CPU provider.
Skipped, with the reason, where this onnxruntime has no GPU provider."""

from __future__ import annotations

import numpy as np
import pytest

import onnx_factory as factory
from edgexfer.backends import get_backend

pytestmark = pytest.mark.gpu


def _need(provider: str) -> None:
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if provider not in available:
        pytest.skip(f"this onnxruntime has no {provider} (it has: {', '.join(available)})")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("ort_gpu")
    path = factory.export_float(factory.tiny_net(), root / "model.onnx")
    batch = np.concatenate(factory.calibration_batches(count=6, seed=9))
    with get_backend("onnxruntime").load(path, {"providers": ["cpu"]}) as runner:
        reference = runner.infer(batch)
    return {"path": path, "batch": batch, "reference": reference}


@pytest.mark.parametrize(
    "provider, short", [("CUDAExecutionProvider", "cuda"), ("TensorrtExecutionProvider", "tensorrt")]
)
def test_gpu_provider_matches_cpu(model, provider, short):
    _need(provider)
    with get_backend("onnxruntime").load(model["path"], {"providers": [short]}) as runner:
        assert runner.describe()["providers"][0] == provider
        logits = runner.infer(model["batch"])
    np.testing.assert_allclose(logits, model["reference"], atol=2e-3, rtol=2e-3)


def test_fp16_build_runs_on_the_gpu_provider(model, tmp_path):
    _need("CUDAExecutionProvider")
    backend = get_backend("onnxruntime")
    result = backend.build(model["path"], "fp16", tmp_path)
    with backend.load(result.path) as runner:  # *_fp16 artifacts default to the fastest GPU provider
        assert runner.describe()["providers"][0] in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
        logits = runner.infer(model["batch"])
    np.testing.assert_allclose(logits, model["reference"], atol=3e-2, rtol=3e-2)
