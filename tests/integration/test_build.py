"""`edgexfer build` end to end on CPU: real ONNX Runtime and OpenVINO builds, smoke check, manifest."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import onnx_factory as factory
from conftest import make_image_folder
from edgexfer.compare import Tolerance
from edgexfer.config import to_dict
from edgexfer.errors import ArtifactError, ConfigError, ParityError, StaleArtifactError
from edgexfer.fsutil import sha256_file
from edgexfer.manifest import Manifest
from edgexfer.stages.build import SMOKE_TOLERANCE, BuildConfig, run_build


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """An exported run (resnet18 at 32x32, random init) and a few smoke images, made once."""
    root = tmp_path_factory.mktemp("build_template")
    factory.exported_run(root / "run", int8=True)
    make_image_folder(root / "images", per_class=3, size=40)
    return root


@pytest.fixture
def run(template, tmp_path):
    """A private copy of the exported run (builds change its manifest)."""
    shutil.copytree(template / "run", tmp_path / "run")
    return tmp_path / "run"


@pytest.fixture
def images(template):
    return template / "images"


def _hidden(run):
    """Hidden leftovers in build/ (staging folders, temporary files): there must be none."""
    return sorted(p.name for p in (run / "build").glob(".*"))


def test_cli_builds_onnxruntime_int8_and_records_it(cli_runner, run, images):
    code, out, err = cli_runner(
        "build", str(run), "--backend", "onnxruntime", "--precision", "int8", "--smoke-data", str(images),
        "--smoke-images", "6",
    )
    assert code == 0, err
    assert "artifact:" in out and "next: edgexfer verify" in out
    manifest = Manifest.open(run)
    record = manifest.require("onnxruntime_int8")
    assert record.stage == "build" and record.kind == "onnxruntime"
    assert record.path == "build/onnxruntime_int8.onnx" and record.companions == {}
    assert record.inputs == {"onnx_int8_cpu": manifest.get("onnx_int8_cpu").sha256}
    assert record.extra["backend"] == "onnxruntime" and record.extra["precision"] == "int8"
    smoke = record.metrics["smoke"]
    assert smoke["images"] == 6 and smoke["finite"] is True
    # measured: a correct INT8 build of this model agrees with the float ONNX to cosine ~0.9995
    assert smoke["mean_cosine"] > 0.99 and smoke["top1_agreement"] >= 5 / 6
    assert smoke["tolerance"] == to_dict(SMOKE_TOLERANCE["int8"])
    assert manifest.stage("build")["artifacts"]["onnxruntime_int8"]["source"] == "onnx_int8_cpu"
    assert _hidden(run) == []
    import onnx

    ops = [n.op_type for n in onnx.load(str(run / record.path)).graph.node]
    assert ops.count("QLinearConv") >= 15  # resnet18's convolutions run as integer kernels


def test_openvino_fp32_build_writes_ir_and_sidecar(run, images):
    pytest.importorskip("openvino")
    outcome = run_build(
        BuildConfig(run_dir=run, backend="openvino", precision="fp32", smoke_data=images, progress=False)
    )
    build = run / "build"
    assert outcome.path == build / "openvino_fp32.xml"
    sidecar = json.loads((build / "openvino_fp32.json").read_text())
    assert sidecar["metadata"]["edgexfer.class_names"] == '["red", "green", "blue"]'
    assert sidecar["precision"] == "fp32" and sidecar["backend"] == "openvino"
    assert outcome.smoke["mean_cosine"] > 0.9999 and outcome.smoke["top1_agreement"] == 1.0
    record = Manifest.open(run).get("openvino_fp32")
    assert record.extra["weights_sha256"] == sidecar["build"]["weights_sha256"]
    # the weights and the sidecar are part of the record: a change to either is noticed
    assert record.companions == {
        "build/openvino_fp32.bin": sha256_file(build / "openvino_fp32.bin"),
        "build/openvino_fp32.json": sha256_file(build / "openvino_fp32.json"),
    }
    assert _hidden(run) == []


def test_changed_openvino_weights_make_the_build_stale(run, images):
    """The .bin is hashed with the .xml (it used to be left out: same graph, other weights, not noticed)."""
    pytest.importorskip("openvino")
    run_build(BuildConfig(run_dir=run, backend="openvino", precision="fp32", smoke=False, progress=False))
    weights = run / "build" / "openvino_fp32.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one weight byte flipped, size unchanged
    weights.write_bytes(bytes(data))
    manifest = Manifest.open(run)
    with pytest.raises(StaleArtifactError, match=r"openvino_fp32\.bin\) changed since the 'build' stage"):
        manifest.require("openvino_fp32")
    (problem,) = manifest.audit()
    assert "openvino_fp32.bin" in problem
    from edgexfer.backends import get_backend

    with pytest.raises(ArtifactError, match="OpenVINO weights .*openvino_fp32.bin' changed since"):
        get_backend("openvino").load(run / "build" / "openvino_fp32.xml")


def test_unknown_backend_lists_choices_and_reasons(cli_runner, run):
    code, out, err = cli_runner("build", str(run), "--backend", "tflite")
    assert code == 2
    line = err.strip()
    assert "\n" not in line and "Traceback" not in err
    assert "unknown backend 'tflite'" in line
    assert "onnxruntime" in line and "openvino" in line
    assert "tensorrt (unavailable:" in line


def test_tensorrt_without_tensorrt_is_exit_4(cli_runner, run):
    try:
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt is installed here: this test is for machines without it")
    except ImportError:
        pass
    code, _, err = cli_runner("build", str(run), "--backend", "tensorrt", "--precision", "fp16")
    assert code == 4
    assert "backend 'tensorrt' is not usable here" in err and "Traceback" not in err


def test_fp16_needs_a_gpu_execution_provider(cli_runner, run, monkeypatch):
    """Decided by the providers onnxruntime reports, so both cases are checked on every machine."""
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    code, _, err = cli_runner("build", str(run), "--backend", "onnxruntime", "--precision", "fp16")
    assert code == 2 and "fp16 only with a CUDA or TensorRT" in err
    assert not Manifest.open(run).has("onnxruntime_fp16") and not (run / "build").exists()


def test_unknown_precision_and_the_reference_backend_are_refused(cli_runner, run):
    code, _, err = cli_runner("build", str(run), "--backend", "onnxruntime", "--precision", "int4")
    assert code == 2 and "unknown precision 'int4'" in err
    code, _, err = cli_runner("build", str(run), "--backend", "torch")
    assert code == 2 and "nothing to build" in err


def test_option_for_another_backend_is_refused(cli_runner, run):
    code, _, err = cli_runner("build", str(run), "--backend", "onnxruntime", "--max-batch", "4")
    assert code == 2 and err.strip().endswith("--max-batch applies to --backend tensorrt, not onnxruntime; drop it")
    # the same check holds for a pipeline step or the API, which pass options without the CLI
    with pytest.raises(ConfigError, match="--opt-level applies to --backend onnxruntime, not openvino"):
        BuildConfig(run_dir=run, backend="openvino", options={"opt_level": "basic"})
    with pytest.raises(ConfigError, match=r"--opt-level must be one of basic, extended, all, got 'fast'"):
        BuildConfig(run_dir=run, backend="onnxruntime", options={"opt_level": "fast"})
    with pytest.raises(ConfigError, match="--max-batch takes a whole number, got True"):
        BuildConfig(run_dir=run, backend="tensorrt", options={"max_batch": True})
    with pytest.raises(ConfigError, match="unknown build option 'max_batches'; build options: .*max_batch"):
        BuildConfig(run_dir=run, backend="tensorrt", options={"max_batches": 4})


def test_missing_int8_source_says_which_export_to_run(cli_runner, tmp_path):
    run = factory.exported_run(tmp_path / "floatonly", int8=False)
    code, _, err = cli_runner("build", str(run), "--backend", "openvino", "--precision", "int8")
    assert code == 2
    assert "needs the 'onnx_int8_openvino' artifact" in err and "--int8 --target openvino" in err
    assert "(or one of onnx_int8_cpu: --target cpu)" in err


def test_stale_source_is_refused(cli_runner, run):
    path = run / "export" / "model.onnx"
    path.write_bytes(path.read_bytes() + b"\0")
    code, _, err = cli_runner("build", str(run), "--backend", "onnxruntime", "--no-smoke")
    assert code == 2 and "changed since the 'export' stage" in err


def test_rebuild_replaces_the_record(run, images):
    first = run_build(
        BuildConfig(run_dir=run, backend="onnxruntime", precision="fp32", smoke_data=images, progress=False)
    )
    sha = Manifest.open(run).get("onnxruntime_fp32").sha256
    second = run_build(
        BuildConfig(
            run_dir=run,
            backend="onnxruntime",
            precision="fp32",
            smoke_data=images,
            options={"opt_level": "basic"},
            progress=False,
        )
    )
    assert first.path == second.path
    record = Manifest.open(run).require("onnxruntime_fp32")
    assert record.extra["optimization"] == "basic" and record.sha256 != sha
    assert _hidden(run) == []
    np.testing.assert_allclose(second.smoke["mean_cosine"], 1.0, atol=1e-6)


def test_failed_smoke_check_keeps_the_previous_build_and_record(run, images):
    """A rebuild that fails its smoke check must not touch what the manifest records (finding 3: the new
    files used to be written in place before the check, so the old record described changed files)."""
    pytest.importorskip("openvino")
    run_build(BuildConfig(run_dir=run, backend="openvino", precision="int8", smoke_data=images, progress=False))
    build = run / "build"
    files = {p.name: sha256_file(p) for p in sorted(build.glob("openvino_int8.*"))}
    assert set(files) == {"openvino_int8.xml", "openvino_int8.bin", "openvino_int8.json"}
    # an INT8 build never matches the float model exactly, so an exact-match gate must fail it
    strict = BuildConfig(run_dir=run, backend="openvino", precision="int8", smoke_data=images,
                         smoke_tolerance=Tolerance(atol=0.0), progress=False)
    with pytest.raises(ParityError, match="openvino_int8.xml disagrees with the float ONNX .*max abs logit"):
        run_build(strict)
    manifest = Manifest.open(run)
    assert manifest.audit() == []
    assert {p.name: sha256_file(p) for p in sorted(build.glob("openvino_int8.*"))} == files
    assert manifest.get("openvino_int8").sha256 == files["openvino_int8.xml"]
    assert _hidden(run) == []


@pytest.fixture(scope="module")
def trained_export(trained_run, tmp_path_factory):
    """The trained fixture run (resnet18, 100% val top-1) exported to float and CPU INT8, made once."""
    from edgexfer.stages.export import ExportConfig, run_export

    run = shutil.copytree(trained_run, tmp_path_factory.mktemp("trained_export") / "run")
    run_export(ExportConfig(run_dir=run, int8=True, target="cpu", calib_method="minmax", calib_size=32,
                            eval_size=16, progress=False))
    return run


def test_default_smoke_gate_catches_a_build_from_wrong_weights(trained_export, tmp_path):
    """With the default gate (no bound tightened): the trained model's INT8 build passes; a QDQ model of
    other weights recorded as its INT8 export (random init, same graph) fails and is not recorded."""
    run = shutil.copytree(trained_export, tmp_path / "run")
    good = run_build(BuildConfig(run_dir=run, backend="onnxruntime", precision="int8", progress=False))
    # far inside the default int8 gate (cosine 0.9): measured 0.998 with precise BN statistics, 0.9995 without
    assert good.smoke["top1_agreement"] == 1.0 and good.smoke["mean_cosine"] > 0.99
    good_sha = sha256_file(good.path)
    other = factory.exported_run(tmp_path / "other", int8=True)
    target = run / "export" / "model_int8_cpu.onnx"
    shutil.copy(other / "export" / "model_int8_cpu.onnx", target)
    with Manifest.update(run) as manifest:
        manifest.add_artifact("onnx_int8_cpu", target, kind="onnx-qdq", stage="export", inputs=["checkpoint"])
    with pytest.raises(ParityError, match="disagrees with the float ONNX on 8 real images: mean logit cosine") as info:
        run_build(BuildConfig(run_dir=run, backend="onnxruntime", precision="int8", progress=False))
    assert "top-1 agreement" in str(info.value)
    # nothing of the wrong build was recorded or put in place
    assert Manifest.open(run).get("onnxruntime_int8").sha256 == good_sha == sha256_file(good.path)
    assert _hidden(run) == []


def test_every_build_option_reaches_the_config(tmp_path):
    """Walk the command's click parameters: each one, changed from its default, changes the config; a new
    option that config_from_params ignores fails here (YAML keys = CLI options, from one source)."""
    from edgexfer.backends.base import all_build_options
    from edgexfer.commands.build import build, config_from_params

    base = build.make_context("build", [str(tmp_path), "--backend", "onnxruntime"]).params
    changes = {"backend": "openvino", "precision": "int8", "source": "onnx_uint8", "smoke": False,
               "smoke_images": 3, "smoke_data": str(tmp_path)}
    for name, (option, owners) in all_build_options().items():
        value = 3 if option.kind is int else (option.choices[0] if option.choices else not option.default)
        changes[name] = (owners[0], value)
    assert set(changes) == set(base) - {"run_dir"}, "a build option is missing from this walk"
    reference = to_dict(config_from_params(base, progress=False))
    for name, change in changes.items():
        backend, value = change if isinstance(change, tuple) else (base["backend"], change)
        config = config_from_params({**base, "backend": backend, name: value}, progress=False)
        changed = {k for k, v in to_dict(config).items() if v != reference[k]} - ({"backend"} - {name})
        assert changed, f"--{name.replace('_', '-')} does not reach BuildConfig"
        if isinstance(change, tuple):
            assert config.options == {name: value}
