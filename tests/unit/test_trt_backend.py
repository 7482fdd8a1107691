"""The TensorRT build flow against the strict fake ``tensorrt`` (tests/fake_trt.py) for 8.5, 8.6, 10.x, 11.x.

The fake rejects what real TensorRT rejects and computes what the engine would (its layer precisions, its
profile, its I/O), so these tests assert behaviour, not the flags the code set. Real engines are built in
tests/gpu/test_tensorrt.py; the runner is in test_trt_runner.py.
"""

from __future__ import annotations

import json
import logging

import pytest

import fake_trt
import trt_models
from edgexfer.backends.tensorrt import build_defaults
from edgexfer.backends.trt_build import build_engine
from edgexfer.backends.trt_runtime import trt_machine
from edgexfer.errors import ArtifactError, ConfigError

ORIN = {"gpu": "Orin", "compute_capability": "8.7", "l4t": "35.4.1", "jetpack": "5.1.2", "driver": "11.4"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return trt_models.make_models(tmp_path_factory.mktemp("trt_models"))


def _build(models, tmp_path, version, precision="fp32", source="float", options=None, machine=None, **fake):
    trt = fake_trt.make_fake_trt(version, **fake)
    machine = dict(machine) if machine is not None else {**ORIN, "tensorrt": version}
    result = build_engine(trt, models[source], precision, tmp_path, dict(options or {}), machine, build_defaults())
    return trt, result


def _engine(trt):
    """What the fake builder made last (its record: precisions, profile, I/O)."""
    return trt.log["built"][-1]


def test_trt85_fp16_build_and_sidecar(models, tmp_path):
    trt, result = _build(models, tmp_path, "8.5.2", "fp16", options={"max_batch": 4, "workspace_mb": 256})
    engine = _engine(trt)
    assert engine["precisions"] == ["fp16"]
    assert engine["profile"] == {"input": [[1, 3, 32, 32], [1, 3, 32, 32], [4, 3, 32, 32]]}
    assert [(t["name"], t["dtype"]) for t in engine["outputs"]] == [("logits", "FLOAT")]
    assert result.path == tmp_path / "tensorrt_fp16.engine" and result.kind == "tensorrt-engine"
    sidecar = json.loads((tmp_path / "tensorrt_fp16.json").read_text())
    build = sidecar["build"]
    assert build["tensorrt"] == "8.5.2" and build["typing"] == "weak" and build["workspace_mb"] == 256
    assert build["compute_capability"] == "8.7" and build["l4t"] == "35.4.1" and build["tf32"] is False
    assert build["profile"] == {"min": 1, "opt": 1, "max": 4}
    assert json.loads(sidecar["metadata"]["edgexfer.class_names"]) == ["red", "green", "blue"]
    assert trt.log["errors"] == [] and trt.log["warnings"] == []


def test_fp32_engines_are_exact_fp32_unless_tf32_is_asked_for(models, tmp_path):
    # D8: TF32 is on by default in TensorRT; an fp32 engine on an Ampere+/Orin GPU computed in TF32.
    trt, _ = _build(models, tmp_path, "10.3.0", "fp32")
    assert _engine(trt)["precisions"] == ["fp32"]
    trt, result = _build(models, tmp_path, "10.3.0", "fp32", options={"tf32": True})
    assert _engine(trt)["precisions"] == ["tf32"] and result.extra["tf32"] is True
    trt, _ = _build(models, tmp_path, "8.6.1", "int8", source="int8_trt", options={"int8_fp16_fallback": False})
    assert _engine(trt)["precisions"] == ["fp32", "int8"]


def test_timing_cache_is_reused_by_the_next_build(models, tmp_path):
    trt, result = _build(models, tmp_path, "10.3.0", "fp16")
    assert trt.log["cache_hits"] == 0 and (tmp_path / result.extra["timing_cache"]).is_file()
    trt, _ = _build(models, tmp_path, "10.3.0", "fp16")
    assert trt.log["cache_hits"] == 1  # the second build started from the first one's cache
    trt, result = _build(models, tmp_path, "10.3.0", "fp16", options={"timing_cache": False})
    assert trt.log["cache_hits"] == 0 and result.extra["timing_cache"] is None


def test_a_corrupt_timing_cache_warns_and_starts_fresh(models, tmp_path, caplog):
    # D11: create_timing_cache returns None for a blob it cannot read; the build must not fail.
    cache = tmp_path / "timing_trt10.3_sm87.cache"
    cache.write_bytes(b"\x00garbage from an older TensorRT")
    with caplog.at_level(logging.WARNING):
        trt, _ = _build(models, tmp_path, "10.3.0", "fp16")
    assert "corrupt or from another TensorRT" in caplog.text
    assert trt.log["errors"] == ["timing cache: bad magic"]
    assert fake_trt.make_fake_trt("10.3.0").Builder(None).create_builder_config().create_timing_cache(
        cache.read_bytes()
    ) is not None  # a fresh, readable cache replaced it


def test_a_timing_cache_from_another_gpu_is_replaced(models, tmp_path, caplog):
    _build(models, tmp_path, "10.3.0", "fp16", compute_capability="7.5")  # same file name, other device
    with caplog.at_level(logging.WARNING):
        trt, _ = _build(models, tmp_path, "10.3.0", "fp16")
    assert "did not match this device" in caplog.text and trt.log["cache_hits"] == 0


def test_trt10_int8_from_qdq_weak_and_strong(models, tmp_path):
    trt, _ = _build(models, tmp_path, "10.3.0", "int8", source="int8_trt")
    assert _engine(trt)["precisions"] == ["fp16", "int8"]
    trt, result = _build(models, tmp_path, "10.3.0", "int8", source="int8_trt", options={"strongly_typed": True})
    assert _engine(trt)["precisions"] == ["fp32", "int8"] and result.extra["typing"] == "strong"
    assert trt.log["errors"] == []  # no precision flags on a strongly typed network


def test_trt11_fp16_converts_the_onnx(models, tmp_path):
    trt, _ = _build(models, tmp_path, "11.0.0", "fp16")
    assert _engine(trt)["precisions"] == ["fp16"] and trt.log["errors"] == []
    assert not list(tmp_path.glob("*.fp16.onnx")) and not list(tmp_path.glob(".*partial"))
    with pytest.raises(ConfigError, match="only strongly typed"):
        _build(models, tmp_path, "11.0.0", "fp16", options={"strongly_typed": False})


def test_int8_needs_the_tensorrt_qdq_artifact(models, tmp_path):
    with pytest.raises(ConfigError, match="no QuantizeLinear"):
        _build(models, tmp_path, "10.3.0", "int8", source="float")
    with pytest.raises(ConfigError, match="target 'cpu'"):
        _build(models, tmp_path, "8.6.1", "int8", source="int8_cpu")


def test_portable_builds(models, tmp_path):
    trt, result = _build(
        models, tmp_path, "8.6.1", "fp16", options={"version_compatible": True, "hardware_compatible": True}
    )
    assert _engine(trt)["version_compatible"] and _engine(trt)["hardware_level"] == "AMPERE_PLUS"
    assert result.extra["version_compatible"] and result.extra["hardware_compatible"]
    with pytest.raises(ConfigError, match="need TensorRT 8.6"):
        _build(models, tmp_path, "8.5.2", "fp16", options={"version_compatible": True})
    # D13: AMPERE_PLUS cannot be built on a pre-Ampere GPU; refused before TensorRT fails.
    with pytest.raises(ConfigError, match="Ampere or newer GPU .* this GPU is 7.5"):
        _build(models, tmp_path, "8.6.1", "fp16", options={"hardware_compatible": True},
               machine={**ORIN, "compute_capability": "7.5"}, compute_capability="7.5")


def test_dla_builds_get_a_static_profile(models, tmp_path):
    # D4: DLA does not support dynamic dimensions; a 1/1/8 profile failed the build.
    trt = fake_trt.make_fake_trt("8.5.2", dla_cores=2)
    machine = trt_machine(trt)
    assert machine["dla_cores"] == 2  # D1: the real trt_machine reads the DLA core count
    defaults = build_defaults()
    build_engine(trt, models["float"], "fp16", tmp_path, {"dla_core": 1}, machine, defaults)
    assert _engine(trt)["profile"]["input"][0][0] == _engine(trt)["profile"]["input"][2][0] == 1
    assert _engine(trt)["dla_core"] == 1 and trt.log["errors"] == []
    build_engine(trt, models["float"], "fp16", tmp_path, {"dla_core": 0, "max_batch": 4}, machine, defaults)
    assert _engine(trt)["profile"]["input"][0] == [4, 3, 32, 32] == _engine(trt)["profile"]["input"][1]
    with pytest.raises(ConfigError, match="DLA needs one static batch"):
        build_engine(trt, models["float"], "fp16", tmp_path, {"dla_core": 0, "min_batch": 1, "max_batch": 8},
                     machine, defaults)
    with pytest.raises(ConfigError, match="no DLA cores"):
        _build(models, tmp_path, "10.3.0", "fp16", options={"dla_core": 0})
    with pytest.raises(ConfigError, match="unknown TensorRT build option"):
        _build(models, tmp_path, "10.3.0", "fp16", options={"max_workspace": 1})


def test_qdq_int8_on_dla_is_refused_before_tensorrt_10(models, tmp_path):
    trt = fake_trt.make_fake_trt("8.6.1", dla_cores=2)
    with pytest.raises(ConfigError, match="cannot run a Q/DQ .* build --precision fp16 --dla-core 0"):
        build_engine(trt, models["int8_trt"], "int8", tmp_path, {"dla_core": 0}, trt_machine(trt), build_defaults())
    trt = fake_trt.make_fake_trt("10.3.0", dla_cores=2)
    build_engine(trt, models["int8_trt"], "int8", tmp_path, {"dla_core": 0}, trt_machine(trt), build_defaults())
    assert _engine(trt)["dla_core"] == 0


def test_uint8_inputs_parse_only_when_cast_comes_first(models, tmp_path):
    # D3: a Transpose on the uint8 tensor cannot be parsed; Cast first can (8.6+).
    with pytest.raises(ArtifactError, match="UINT8 tensor 'input' cannot feed Transpose"):
        _build(models, tmp_path, "10.3.0", "fp16", source="uint8_transpose_first")
    for version in ("8.6.1", "10.3.0", "11.0.0"):
        trt, _ = _build(models, tmp_path, version, "fp16", source="uint8_cast_first")
        assert _engine(trt)["inputs"][0]["dtype"] == "UINT8" and _engine(trt)["inputs"][0]["shape"][3] == 3
    with pytest.raises(ConfigError, match=r"TensorRT 8.5.2 cannot take a uint8 input.*--source onnx"):
        _build(models, tmp_path, "8.5.2", "fp16", source="uint8_cast_first")


def test_layer_norm_on_trt85_asks_for_opset_16(models, tmp_path):
    # D9: TensorRT 8.5's parser has no LayerNormalization.
    with pytest.raises(ConfigError, match="LayerNormalization; re-export with 'edgexfer export --opset 16'"):
        _build(models, tmp_path, "8.5.2", "fp16", source="layer_norm")
    trt, _ = _build(models, tmp_path, "8.6.1", "fp16", source="layer_norm")
    assert trt.log["errors"] == []


def test_failed_parse_or_build_leaves_nothing(models, tmp_path):
    # D14: the parser error's str() names node and operator, desc() alone did not.
    with pytest.raises(ArtifactError, match=r"rejected 'model.onnx': In node 0 \(importNode Foo\): .*Unsupported op "
                       r"Foo \(\+1 more\)"):
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
        build_engine(fake_trt.make_fake_trt("8.6.1"), path, "fp32", tmp_path / "out", {}, ORIN, build_defaults())


def test_build_options_come_from_the_backend_declaration():
    from edgexfer.backends.tensorrt import TensorRTBackend

    declared = {o.name: o.default for o in TensorRTBackend.build_options}
    assert build_defaults() == declared and declared["tf32"] is False and declared["max_batch"] == 8


def test_availability_without_tensorrt_says_how_to_get_it(monkeypatch):
    import sys

    from edgexfer.backends.tensorrt import TensorRTBackend

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError, TensorRT or not
    ok, reason = TensorRTBackend().availability()
    assert not ok and "pip install 'edgexfer[tensorrt]'" in reason and "--system-site-packages" in reason
