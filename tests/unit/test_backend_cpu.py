"""The torch and ONNX Runtime backends, for real, on tiny models made like the export stage makes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import onnx_factory as factory
from edgexfer.backends import get_backend
from edgexfer.backends.onnxruntime import OnnxRuntimeRunner, resolve_providers
from edgexfer.errors import ArtifactError, BackendUnavailableError, ConfigError, DataError


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny float net, its ONNX export and its CPU INT8 QDQ model, plus a batch and torch's logits."""
    import torch

    root = tmp_path_factory.mktemp("models")
    net = factory.tiny_net()
    float_path = factory.export_float(net, root / "model.onnx")
    int8_path = factory.quantize_cpu(float_path, root / "model_int8_cpu.onnx")
    batch = np.concatenate(factory.calibration_batches(count=6, seed=7))
    with torch.no_grad():
        reference = net(torch.from_numpy(batch)).numpy()
    return {
        "root": root,
        "net": net,
        "float": float_path,
        "int8": int8_path,
        "batch": batch,
        "reference": reference,
    }


def _ops(path: Path):
    import onnx

    return [node.op_type for node in onnx.load(str(path)).graph.node]


def test_onnxruntime_fp32_build_matches_torch_and_keeps_metadata(models, tmp_path):
    import onnx

    backend = get_backend("onnxruntime")
    result = backend.build(models["float"], "fp32", tmp_path)
    assert result.path == tmp_path / "onnxruntime_fp32.onnx" and result.path.is_file()
    assert result.extra["optimization"] == "extended"
    # Offline optimisation fused nodes (Conv+Relu -> FusedConv), so the artifact has fewer of them.
    assert len(_ops(result.path)) < len(_ops(models["float"]))
    props = {p.key: p.value for p in onnx.load(str(result.path)).metadata_props}
    assert props["edgexfer.class_names"] == '["red", "green", "blue"]'
    with backend.load(result.path) as runner:
        logits = runner.infer(models["batch"])
        assert runner.input_dtype == np.float32 and runner.input_layout == "NCHW"
        assert runner.describe()["providers"] == ["CPUExecutionProvider"]
    assert logits.dtype == np.float32 and logits.shape == (6, 3)
    np.testing.assert_allclose(logits, models["reference"], atol=1e-4, rtol=1e-4)
    assert not list(tmp_path.glob(".*partial")), "no temporary file may be left behind"


def test_onnxruntime_int8_build_fuses_qdq_and_stays_close_to_float(models, tmp_path):
    backend = get_backend("onnxruntime")
    result = backend.build(models["int8"], "int8", tmp_path)
    ops = _ops(result.path)
    assert ops.count("QLinearConv") == 2, ops  # both convolutions run as integer kernels
    assert "Conv" not in ops
    with backend.load(result.path) as runner:
        logits = runner.infer(models["batch"])
    reference = models["reference"]
    spread = reference.max() - reference.min()
    assert np.abs(logits - reference).max() < 0.1 * spread
    assert (logits.argmax(1) == reference.argmax(1)).mean() >= 5 / 6


def test_runner_rejects_wrong_input_with_one_line(models):
    backend = get_backend("onnxruntime")
    batch = models["batch"]
    with backend.load(models["float"]) as runner:
        with pytest.raises(DataError, match="uint8|float32"):
            runner.infer(batch.astype(np.uint8))
        with pytest.raises(DataError, match="batch axis"):
            runner.infer(batch[0])
        with pytest.raises(DataError, match="3 channels"):
            runner.infer(np.zeros((1, 4, 32, 32), np.float32))
        # float64 is accepted and cast: preprocessing in float64 is not an error
        np.testing.assert_allclose(runner.infer(batch.astype(np.float64)), models["reference"], atol=1e-4)


def test_runner_reads_uint8_nhwc_input_from_the_model(tmp_path):
    import torch

    class Uint8Nhwc(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255)
            self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255)

        def forward(self, x):
            x = x.permute(0, 3, 1, 2).float()
            return self.inner((x - self.mean) / self.std)

    net = Uint8Nhwc(factory.tiny_net()).eval()
    path = tmp_path / "model_uint8_nhwc.onnx"
    torch.onnx.export(
        net,
        torch.zeros(1, 32, 32, 3, dtype=torch.uint8),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    with get_backend("onnxruntime").load(path) as runner:
        assert runner.input_dtype == np.uint8 and runner.input_layout == "NHWC"
        logits = runner.infer(pixels)
        with pytest.raises(DataError, match="uint8 pixels"):
            runner.infer(pixels.astype(np.float32))
        with pytest.raises(DataError, match="height 32"):
            runner.infer(np.zeros((1, 16, 16, 3), np.uint8))
    with torch.no_grad():
        expected = net(torch.from_numpy(pixels)).numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4)


def test_fixed_batch_model_runs_in_slices(tmp_path):
    import torch

    net = factory.tiny_net()
    path = tmp_path / "fixed.onnx"
    torch.onnx.export(
        net,
        torch.zeros(2, 3, 32, 32),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        opset_version=17,
        dynamo=False,
    )
    batch = np.concatenate(factory.calibration_batches(count=4))
    with OnnxRuntimeRunner(path) as runner:
        logits = runner.infer(batch)
        with pytest.raises(ConfigError, match="fixed batch of 2"):
            runner.infer(batch[:3])
    with torch.no_grad():
        np.testing.assert_allclose(logits, net(torch.from_numpy(batch)).numpy(), atol=1e-4)


def test_fp16_follows_the_installed_execution_providers(models, tmp_path, monkeypatch):
    """Decided by the providers onnxruntime reports, so both answers are checked on every machine."""
    import onnxruntime

    backend = get_backend("onnxruntime")
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ConfigError, match="fp16 only with a CUDA or TensorRT"):
        backend.build(models["float"], "fp16", tmp_path)
    assert not list(tmp_path.iterdir())
    for gpu in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        monkeypatch.setattr(onnxruntime, "get_available_providers", lambda g=gpu: [g, "CPUExecutionProvider"])
        backend.check_precision("fp16")  # allowed with a GPU provider


def test_corrupt_onnx_is_a_clear_artifact_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(ArtifactError, match="cannot optimise"):
        get_backend("onnxruntime").build(bad, "fp32", tmp_path / "out")
    with pytest.raises(ArtifactError, match="cannot load"):
        with get_backend("onnxruntime").load(bad):
            pass
    assert not (tmp_path / "out" / "onnxruntime_fp32.onnx").exists()


def test_resolve_providers_rules():
    cpu_only = ["CPUExecutionProvider"]
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers(None, cpu_only) == ["CPUExecutionProvider"]
    assert resolve_providers(["auto"], ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    auto = resolve_providers(["auto"], gpu, cache_dir=Path("/c"), precision="int8")
    assert auto[0][0] == "TensorrtExecutionProvider"
    assert auto[0][1]["trt_int8_enable"] is True and auto[0][1]["trt_engine_cache_path"] == "/c"
    assert auto[1:] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers(["cuda"], gpu) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(BackendUnavailableError, match="'cuda' is not in this onnxruntime build"):
        resolve_providers(["cuda"], cpu_only)


def test_torch_backend_runs_checkpoint_and_matches_onnx(random_run, tmp_path):
    import torch

    from edgexfer.checkpoint import load_checkpoint

    backend = get_backend("torch")
    assert backend.availability()[0]
    checkpoint = random_run / "finetune" / "best.pt"
    model, _ = load_checkpoint(checkpoint)
    onnx_path = factory.export_float(model, tmp_path / "r18.onnx", arch="resnet18")
    batch = np.concatenate(factory.calibration_batches(count=2))
    threads_before = torch.get_num_threads()
    with backend.load(checkpoint, {"threads": 1}) as runner:
        assert torch.get_num_threads() == 1
        logits = runner.infer(batch)
        with pytest.raises(DataError, match="height 32"):
            runner.infer(np.zeros((1, 3, 40, 40), np.float32))
    assert torch.get_num_threads() == threads_before
    with get_backend("onnxruntime").load(onnx_path) as runner:
        np.testing.assert_allclose(runner.infer(batch), logits, atol=1e-3, rtol=1e-3)
    with pytest.raises(ConfigError, match="nothing to build"):
        backend.build(onnx_path, "fp32", tmp_path)


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(ConfigError) as info:
        get_backend("tflite")
    message = str(info.value)
    assert "unknown backend 'tflite'" in message
    for name in ("torch", "onnxruntime", "openvino", "tensorrt"):
        assert name in message
    assert "\n" not in message
