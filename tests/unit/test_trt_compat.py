"""TensorRT version-dependent decisions (8.5 / 8.6 / 10.x / 11.x) as pure functions."""

from __future__ import annotations

import types

import pytest

from edgexfer.backends import trt_compat as compat
from edgexfer.backends import trt_portability as portability
from edgexfer.errors import ConfigError, StaleArtifactError


def test_parse_version():
    assert compat.parse_version("10.3.0.26") == (10, 3, 0)
    assert compat.parse_version("8.5") == (8, 5, 0)
    assert compat.parse_version("11") == (11, 0, 0)
    with pytest.raises(ConfigError):
        compat.parse_version("unknown")
    with pytest.raises(ConfigError, match="needs TensorRT 8.5 or newer"):
        compat.check_supported((8, 4, 3))
    compat.check_supported((8, 5, 2))


@pytest.mark.parametrize(
    "version, precision, requested, expected",
    [
        ((8, 5, 2), "fp16", None, "weak"),
        ((8, 6, 1), "int8", None, "weak"),
        ((10, 3, 0), "fp32", None, "weak"),
        ((10, 3, 0), "fp16", True, "strong"),
        ((11, 0, 0), "fp16", None, "strong"),
        ((11, 1, 0), "int8", True, "strong"),
    ],
)
def test_typing_mode(version, precision, requested, expected):
    assert compat.typing_mode(version, precision, requested) == expected


def test_typing_mode_refuses_impossible_requests():
    with pytest.raises(ConfigError, match="only strongly typed"):
        compat.typing_mode((11, 0, 0), "fp16", False)
    with pytest.raises(ConfigError, match="need TensorRT 10 or newer"):
        compat.typing_mode((8, 6, 1), "fp16", True)


def test_network_flags_are_read_by_name():
    # Enum values unlike TensorRT's real ones: a hard-coded number would give a different answer.
    enum_8 = types.SimpleNamespace(NetworkDefinitionCreationFlag=types.SimpleNamespace(EXPLICIT_BATCH=4))
    assert compat.network_flags(enum_8, (8, 6, 1), "weak") == 1 << 4
    enum_10 = types.SimpleNamespace(
        NetworkDefinitionCreationFlag=types.SimpleNamespace(EXPLICIT_BATCH=0, STRONGLY_TYPED=6)
    )
    assert compat.network_flags(enum_10, (10, 3, 0), "weak") == 0
    assert compat.network_flags(enum_10, (10, 3, 0), "strong") == 1 << 6
    enum_11 = types.SimpleNamespace(NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=6))
    assert compat.network_flags(enum_11, (11, 0, 0), "strong") == 0  # no EXPLICIT_BATCH looked up in 11


def test_precision_flags_and_fp16_onnx():
    assert compat.precision_flags((8, 6, 1), "fp16", "weak") == ["FP16"]
    assert compat.precision_flags((10, 3, 0), "int8", "weak") == ["INT8", "FP16"]
    assert compat.precision_flags((10, 3, 0), "int8", "weak", int8_fp16_fallback=False) == ["INT8"]
    assert compat.precision_flags((10, 3, 0), "fp32", "weak") == []
    assert compat.precision_flags((11, 0, 0), "fp16", "strong") == []
    assert compat.needs_fp16_onnx((11, 0, 0), "fp16", "strong")
    assert not compat.needs_fp16_onnx((10, 3, 0), "fp16", "weak")
    assert not compat.needs_fp16_onnx((11, 0, 0), "int8", "strong")


def test_parsable_and_int8_source_rules():
    compat.check_parsable((8, 6, 1), 17, ["Conv", "LayerNormalization"], uint8_inputs=True)
    compat.check_parsable((10, 3, 0), 19, ["Conv"], uint8_inputs=False)
    with pytest.raises(ConfigError, match="opset <= 17"):
        compat.check_parsable((8, 5, 2), 18, ["Conv"], uint8_inputs=False)
    with pytest.raises(ConfigError, match="LayerNormalization; re-export with 'edgexfer export --opset 16'"):
        compat.check_parsable((8, 5, 2), 17, ["Conv", "LayerNormalization"], uint8_inputs=False)
    with pytest.raises(ConfigError, match="cannot take a uint8 input"):
        compat.check_parsable((8, 5, 2), 17, ["Cast", "Conv"], uint8_inputs=True)
    qdq = ["QuantizeLinear", "DequantizeLinear", "Conv"]
    compat.check_int8_source({"edgexfer.target": "tensorrt"}, qdq)
    compat.check_int8_source({}, qdq)
    with pytest.raises(ConfigError, match="no QuantizeLinear"):
        compat.check_int8_source({}, ["Conv", "Relu"])
    with pytest.raises(ConfigError, match="target 'cpu'"):
        compat.check_int8_source({"edgexfer.target": "cpu"}, qdq)


def test_compatibility_and_dla_settings():
    assert compat.compatibility_settings((8, 6, 1), True, True, "8.6") == {
        "flags": ["VERSION_COMPATIBLE"],
        "hardware_compatibility_level": "AMPERE_PLUS",
    }
    assert compat.compatibility_settings((8, 5, 2), False, False) == {
        "flags": [],
        "hardware_compatibility_level": None,
    }
    with pytest.raises(ConfigError, match="need TensorRT 8.6"):
        compat.compatibility_settings((8, 5, 2), True, False)
    with pytest.raises(ConfigError, match="Ampere or newer GPU"):
        compat.compatibility_settings((10, 3, 0), False, True, "7.2")  # Xavier
    assert compat.dla_settings((10, 3, 0), "fp16", None, 2) == {}
    assert compat.dla_settings((8, 5, 2), "fp16", 1, 2) == {
        "default_device_type": "DLA",
        "DLA_core": 1,
        "flags": ["GPU_FALLBACK"],
    }
    assert compat.dla_settings((10, 3, 0), "int8", 0, 2)["DLA_core"] == 0
    with pytest.raises(ConfigError, match="cannot run a Q/DQ .*INT8 model on DLA"):
        compat.dla_settings((8, 6, 1), "int8", 0, 2)
    with pytest.raises(ConfigError, match="fp16 or int8 only"):
        compat.dla_settings((8, 5, 2), "fp32", 0, 2)
    with pytest.raises(ConfigError, match="no DLA cores"):
        compat.dla_settings((10, 3, 0), "fp16", 0, 0)
    with pytest.raises(ConfigError, match="DLA cores 0..1"):
        compat.dla_settings((10, 3, 0), "fp16", 2, 2)


DEFAULTS = {"min_batch": 1, "opt_batch": 1, "max_batch": 8}


@pytest.mark.parametrize(
    "onnx_batch, given, dla, expected",
    [
        (0, {}, False, (1, 1, 8)),
        (0, {"min_batch": 2}, False, (2, 2, 8)),
        (0, {"min_batch": 4, "max_batch": 4}, False, (4, 4, 4)),
        (0, {"opt_batch": 16}, False, (1, 16, 16)),
        (0, {}, True, (1, 1, 1)),
        (0, {"max_batch": 4}, True, (4, 4, 4)),
        (2, {}, False, (2, 2, 2)),
        (1, {}, True, (1, 1, 1)),
    ],
)
def test_batch_profile(onnx_batch, given, dla, expected):
    assert compat.batch_profile(onnx_batch, given, DEFAULTS, dla) == expected


def test_batch_profile_refusals_and_shapes():
    with pytest.raises(ConfigError, match="1 <= min <= opt <= max"):
        compat.batch_profile(0, {"min_batch": 4, "opt_batch": 2}, DEFAULTS, False)
    with pytest.raises(ConfigError, match="fixed batch of 2, but --max-batch 8"):
        compat.batch_profile(2, {"max_batch": 8}, DEFAULTS, False)
    with pytest.raises(ConfigError, match="DLA needs one static batch"):
        compat.batch_profile(0, {"min_batch": 1, "max_batch": 8}, DEFAULTS, True)
    assert compat.profile_shapes([None, 3, 224, 224], (1, 4, 16)) == (
        (1, 3, 224, 224),
        (4, 3, 224, 224),
        (16, 3, 224, 224),
    )
    with pytest.raises(ConfigError, match="dynamic non-batch"):
        compat.profile_shapes([None, 3, None, None], (1, 1, 8))


def test_timing_cache_name_tf32_and_device_memory_order():
    assert compat.timing_cache_name((10, 3, 0), "8.7") == "timing_trt10.3_sm87.cache"
    assert compat.flags_to_clear(tf32=False) == ["TF32"] and compat.flags_to_clear(tf32=True) == []
    assert compat.device_memory_order() == ["polygraphy", "cuda-python", "torch"]
    assert compat.device_memory_order("torch") == ["torch"]
    with pytest.raises(ConfigError, match="unknown device memory provider"):
        compat.device_memory_order("pycuda")


ORIN = {"tensorrt": "8.5.2.2", "gpu": "Orin", "compute_capability": "8.7", "l4t": "35.4.1"}


@pytest.mark.parametrize(
    "built, here, problem",
    [
        (ORIN, dict(ORIN), None),
        (ORIN, {**ORIN, "tensorrt": "8.6.2"}, "built with TensorRT 8.5.2.2, this machine has 8.6.2"),
        ({**ORIN, "tensorrt": "8.6.1", "version_compatible": True}, {**ORIN, "tensorrt": "8.6.2"}, None),
        ({**ORIN, "version_compatible": True}, {**ORIN, "tensorrt": "8.5.1"}, "this machine has 8.5.1"),
        ({**ORIN, "tensorrt": "8.6.1", "version_compatible": True}, {**ORIN, "tensorrt": "10.3.0"}, None),
        ({**ORIN, "tensorrt": "8.6.1", "version_compatible": True}, {**ORIN, "tensorrt": "9.3.0"}, None),
        ({**ORIN, "tensorrt": "10.3.0", "version_compatible": True}, {**ORIN, "tensorrt": "11.1.0"}, None),
        (
            {**ORIN, "tensorrt": "8.6.1", "version_compatible": True},
            {**ORIN, "tensorrt": "11.1.0"},
            "this machine has 11.1.0",
        ),
        ({**ORIN, "tensorrt": "10.3.0", "version_compatible": True}, {**ORIN, "tensorrt": "8.6.1"}, "has 8.6.1"),
        ({**ORIN, "tensorrt": "8.5.2", "version_compatible": True}, {**ORIN, "tensorrt": "10.3.0"}, "has 10.3.0"),
        ({**ORIN, "os": "Linux", "arch": "x86_64"}, {**ORIN, "os": "Linux", "arch": "aarch64"}, "Linux/x86_64"),
        ({**ORIN, "os": "Windows", "arch": "AMD64"}, {**ORIN}, None),
        (
            ORIN,
            {**ORIN, "gpu": "Xavier", "compute_capability": "7.2"},
            "compute capability 8.7 (Orin), this one is 7.2",
        ),
        (
            {**ORIN, "hardware_compatible": True},
            {**ORIN, "gpu": "RTX 4090", "compute_capability": "8.9"},
            None,
        ),
        (
            {**ORIN, "hardware_compatible": True},
            {**ORIN, "gpu": "T4", "compute_capability": "7.5"},
            "this one is 7.5",
        ),
        ({**ORIN, "dla_core": 0}, {**ORIN, "dla_cores": 0}, "DLA core 0"),
        ({**ORIN, "dla_core": 1}, {**ORIN, "dla_cores": 2}, None),
        ({**ORIN, "dla_core": 1}, {**ORIN, "dla_cores": 1}, "DLA cores 0..0"),
    ],
)
def test_engine_compatibility(built, here, problem):
    problems, _ = portability.engine_compatibility(built, here)
    if problem is None:
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems


def test_engine_compatibility_warnings_and_refusal_message():
    _, warnings = portability.engine_compatibility(
        {**ORIN, "gpu": "Orin AGX"}, {**ORIN, "gpu": "Orin NX", "l4t": "35.5.0"}
    )
    assert any("same architecture" in w for w in warnings) and any("L4T 35.4.1" in w for w in warnings)
    with pytest.raises(StaleArtifactError) as info:
        portability.require_compatible(
            "tensorrt_fp16.engine",
            ORIN,
            {**ORIN, "tensorrt": "10.3.0", "gpu": "RTX 3090", "compute_capability": "8.6"},
        )
    message = str(info.value)
    assert "engine 'tensorrt_fp16.engine' cannot run here" in message
    assert "TensorRT 8.5.2.2" in message and "8.6 (RTX 3090)" in message and "rebuild it" in message
    assert "\n" not in message
