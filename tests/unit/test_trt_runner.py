"""The TensorRT runner against the strict fake ``tensorrt``: profiles, remainder batches, outputs, dtypes,
engine portability, the DLA load path, one logger, and the device-memory providers.

Machine facts come from the real ``trt_machine`` (with the fake module), not from a hand-made dict.
"""

from __future__ import annotations

import numpy as np
import pytest

import fake_trt
import onnx_factory as factory
import trt_models
from edgexfer.backends import trt_devmem, trt_runtime
from edgexfer.backends.tensorrt import TensorRTBackend, build_defaults
from edgexfer.backends.trt_build import build_engine
from edgexfer.errors import ArtifactError, BackendUnavailableError, StaleArtifactError


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return trt_models.make_models(tmp_path_factory.mktemp("trt_runner_models"))


@pytest.fixture
def use_fake(monkeypatch):
    """Install a fake tensorrt (per call) and fake device memory; returns the installer."""
    monkeypatch.setattr(trt_devmem, "device_memory", lambda preferred=None: fake_trt.FakeMemory())

    def install(version="10.3.0", **fake):
        trt = fake_trt.make_fake_trt(version, **fake)
        monkeypatch.setattr(trt_runtime, "load_trt", lambda: trt)
        return trt

    return install


def _build(trt, models, tmp_path, source="float", precision="fp32", **options):
    return build_engine(
        trt, models[source], precision, tmp_path, options, trt_runtime.trt_machine(trt), build_defaults()
    ).path


def _reference(path, batch):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": batch})[0]


def _images(count):
    return np.concatenate(factory.calibration_batches(count=count))


def test_runner_matches_onnxruntime_and_splits_batches(use_fake, models, tmp_path):
    trt = use_fake("10.3.0")
    engine = _build(trt, models, tmp_path, max_batch=4)
    batch = _images(6)
    with TensorRTBackend().load(engine) as runner:
        logits = runner.infer(batch)
        assert runner._objects["context"].calls == [4, 2]  # 6 images through a max-batch-4 profile
        assert runner.input_dtype == np.float32 and runner.input_layout == "NCHW"
        facts = runner.describe()
    np.testing.assert_allclose(logits, _reference(models["float"], batch), atol=1e-5)
    assert facts["tensorrt"] == "10.3.0" and facts["warnings"] == [] and facts["profile_batch"] == [1, 4]


def test_a_remainder_below_the_profile_minimum_is_padded(use_fake, models, tmp_path):
    # D6: --min-batch 2: a chunk of 1 was refused by set_input_shape and the context kept batch 4.
    trt = use_fake("10.3.0")
    engine = _build(trt, models, tmp_path, min_batch=2, max_batch=4)
    batch = _images(5)
    with TensorRTBackend().load(engine) as runner:
        logits = runner.infer(batch)
        single = runner.infer(batch[:1])
        assert runner._objects["context"].calls == [4, 2, 2]
    np.testing.assert_allclose(logits, _reference(models["float"], batch), atol=1e-5)
    np.testing.assert_allclose(single, logits[:1], atol=1e-6)
    assert trt.log["errors"] == []


def test_a_refused_input_shape_is_a_clear_error(use_fake, models, tmp_path):
    trt = use_fake("10.3.0")
    engine = _build(trt, models, tmp_path, max_batch=4)
    with TensorRTBackend().load(engine) as runner:
        with pytest.raises(ArtifactError, match=r"refused input shape \(9, 3, 32, 32\) for .*profile batch 1..4"):
            runner._run(np.ascontiguousarray(_images(9)))  # what infer's chunking prevents
    assert trt.log["errors"] == [
        "set_input_shape: (9, 3, 32, 32) is outside the profile (1, 3, 32, 32)..(4, 3, 32, 32)"
    ]


def test_every_output_is_bound(use_fake, models, tmp_path):
    # D6: execute_async_v3 fails when an output has no address; only the logits were bound.
    trt = use_fake("10.3.0")
    engine = _build(trt, models, tmp_path, source="two_outputs", max_batch=4)
    batch = _images(3)
    with TensorRTBackend().load(engine) as runner:
        assert runner.output_names == ["logits", "features"]
        np.testing.assert_allclose(runner.infer(batch), _reference(models["float"], batch), atol=1e-5)
    engine = _build(trt, models, tmp_path / "unnamed", source="two_outputs_unnamed", max_batch=4)
    with pytest.raises(ArtifactError, match=r"outputs \['scores', 'features'\] and none named 'logits'"):
        with TensorRTBackend().load(engine):
            pass


def test_trt85_runner_on_numpy_without_np_bool(use_fake, models, tmp_path):
    # D2: TensorRT 8.5's nptype raises AttributeError under numpy 1.24-1.26 (JetPack 5).
    trt = use_fake("8.5.2")
    with pytest.raises(AttributeError, match="no attribute 'bool'"):
        trt.nptype(trt.float32)  # the fake behaves as 8.5 does there
    engine = _build(trt, models, tmp_path, precision="fp16", max_batch=2)
    with TensorRTBackend().load(engine) as runner:
        assert runner.input_dtype == np.float32
        assert runner.infer(_images(3)).shape == (3, 3)


def test_uint8_nhwc_engine_takes_pixels(use_fake, models, tmp_path):
    trt = use_fake("10.3.0")
    engine = _build(trt, models, tmp_path, source="uint8_cast_first", max_batch=4)
    pixels = np.random.default_rng(0).integers(0, 255, size=(3, 32, 32, 3), dtype=np.uint8)
    with TensorRTBackend().load(engine) as runner:
        assert runner.input_dtype == np.uint8 and runner.input_layout == "NHWC"
        logits = runner.infer(pixels)
    np.testing.assert_allclose(logits, _reference(models["uint8_cast_first"], pixels), atol=1e-5)


def test_a_dla_engine_loads_on_the_device_that_built_it(use_fake, models, tmp_path):
    # D1: trt_machine never recorded dla_cores, so every DLA engine was refused; D4: the runtime's DLA
    # core must be set before deserialising.
    trt = use_fake("8.5.2", dla_cores=2)
    engine = _build(trt, models, tmp_path, precision="fp16", dla_core=1)
    with TensorRTBackend().load(engine) as runner:
        assert runner._objects["engine"].dla_core_used == 1
        assert runner.infer(_images(3)).shape == (3, 3)  # static batch 1: three chunks
        assert runner._objects["context"].calls == [1, 1, 1]
    use_fake("8.5.2", dla_cores=0)  # same engine on a device without DLA
    with pytest.raises(StaleArtifactError, match="runs on DLA core 1, this device has no DLA"):
        with TensorRTBackend().load(engine):
            pass


def test_version_compatible_engines_cross_majors_as_documented(use_fake, models, tmp_path):
    # D7: NVIDIA documents TensorRT 8 -> 10 and 10 -> 11 for version-compatible engines.
    engine = _build(use_fake("8.6.1"), models, tmp_path, version_compatible=True, max_batch=2)
    use_fake("10.3.0")
    with TensorRTBackend().load(engine) as runner:
        assert runner.infer(_images(2)).shape == (2, 3)
    use_fake("11.1.0")
    with pytest.raises(StaleArtifactError, match="built with TensorRT 8.6.1, this machine has 11.1.0"):
        with TensorRTBackend().load(engine):
            pass
    plain = _build(use_fake("10.3.0"), models, tmp_path / "plain", max_batch=2)
    use_fake("10.7.0")
    with pytest.raises(StaleArtifactError, match="built with TensorRT 10.3.0, this machine has 10.7.0"):
        with TensorRTBackend().load(plain):
            pass


def test_one_logger_for_builds_and_runners(use_fake, models, tmp_path):
    # D12: TensorRT warns when a second logger is passed (it keeps one pointer per process).
    trt = use_fake("10.3.0")
    engine = _build(trt, models, tmp_path, precision="fp16", max_batch=2)
    with TensorRTBackend().load(engine), TensorRTBackend().load(engine) as second:
        second.infer(_images(1))
    assert trt.log["warnings"] == [] and trt.log["plugins"] == [""]  # plugins registered once, namespace ""


def test_no_execution_context_is_a_clear_error(use_fake, models, tmp_path):
    trt = use_fake("10.3.0")
    engine = _build(trt, models, tmp_path, max_batch=2)
    use_fake("10.3.0", context_oom=True)
    with pytest.raises(ArtifactError, match="could not create an execution context"):
        with TensorRTBackend().load(engine):
            pass


def test_runner_reports_a_corrupt_engine_and_a_missing_sidecar(use_fake, models, tmp_path):
    trt = use_fake("10.3.0")
    engine = _build(trt, models, tmp_path, max_batch=2)
    engine.write_bytes(b"garbage")
    with pytest.raises(StaleArtifactError, match="could not deserialise"):
        with TensorRTBackend().load(engine):
            pass
    engine.with_suffix(".json").unlink()
    with pytest.raises(ArtifactError, match="has no sidecar 'tensorrt_fp32.json'"):
        with TensorRTBackend().load(engine):
            pass


class _Broken:
    name = "broken"

    def __init__(self):
        raise RuntimeError("Could not find the CUDA runtime library")  # what polygraphy.cuda says


class _Works:
    name = "works"
    reason = ""

    def __init__(self):
        self.closed = False


def test_device_memory_falls_through_to_a_provider_that_works(monkeypatch):
    # D10: polygraphy imported but could not load libcudart, and cuda-python was never tried.
    monkeypatch.setattr(trt_devmem, "have_device_memory_libraries",
                        lambda: {"polygraphy": True, "cuda-python": True, "torch": False})
    monkeypatch.setattr(trt_devmem, "PROVIDERS", {"polygraphy": _Broken, "cuda-python": _Works, "torch": _Works})
    memory = trt_devmem.device_memory()
    assert isinstance(memory, _Works)
    assert memory.reason == (
        "polygraphy: Could not find the CUDA runtime library; cuda-python: created a CUDA stream"
    )
    with pytest.raises(BackendUnavailableError, match=r"polygraphy: Could not find .*; cuda-python: not installed"):
        monkeypatch.setattr(trt_devmem, "have_device_memory_libraries", lambda: {"polygraphy": True})
        trt_devmem.device_memory()


def test_cuda_python_error_35_says_the_driver_is_too_old(monkeypatch):
    import types

    fake = types.SimpleNamespace(cudaStreamCreate=lambda: (35, None))
    monkeypatch.setattr(trt_devmem, "_cudart", lambda: fake)
    monkeypatch.setattr(trt_devmem, "_cuda_python_version", lambda: "13.0.1")
    with pytest.raises(BackendUnavailableError, match=r"too old for cuda-python 13.0.1 .*cuda-python>=12.6.1,<13"):
        trt_devmem.CudaPythonMemory()


def test_stream_handles_go_through_get_cuda_native_handle(monkeypatch):
    # D5: int(cuda_obj) is deprecated from cuda-bindings 13.0; get_cuda_native_handle is the way.
    import sys
    import types

    utils = types.ModuleType("cuda.bindings.utils")
    utils.get_cuda_native_handle = lambda obj: 0xBEEF
    monkeypatch.setitem(sys.modules, "cuda.bindings.utils", utils)
    assert trt_devmem.native_handle(object()) == 0xBEEF
    monkeypatch.setitem(sys.modules, "cuda.bindings.utils", None)  # cuda-python without utils: int()
    assert trt_devmem.native_handle(0x5678) == 0x5678


def test_native_handle_on_real_cuda_python():
    runtime = pytest.importorskip("cuda.bindings.runtime")
    assert trt_devmem.native_handle(runtime.cudaStream_t(0x1234)) == 0x1234
