"""`edgexfer build` end to end on CPU: real ONNX Runtime and OpenVINO builds, smoke check, manifest."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import onnx_factory as factory
from conftest import make_image_folder
from edgexfer.manifest import Manifest
from edgexfer.stages.build import BuildConfig, run_build


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


def test_cli_builds_onnxruntime_int8_and_records_it(cli_runner, run, images):
    code, out, err = cli_runner(
        "build",
        str(run),
        "--backend",
        "onnxruntime",
        "--precision",
        "int8",
        "--smoke-data",
        str(images),
        "--smoke-images",
        "6",
    )
    assert code == 0, err
    assert "artifact:" in out and "next: edgexfer verify" in out
    manifest = Manifest.open(run)
    record = manifest.require("onnxruntime_int8")
    assert record.stage == "build" and record.kind == "onnxruntime"
    assert record.path == "build/onnxruntime_int8.onnx"
    assert record.inputs == {"onnx_int8_cpu": manifest.get("onnx_int8_cpu").sha256}
    assert record.extra["backend"] == "onnxruntime" and record.extra["precision"] == "int8"
    smoke = record.metrics["smoke"]
    assert smoke["images"] == 6
    assert smoke["mean_cosine"] >= 0.9 and smoke["min_cosine_bound"] == 0.9
    assert manifest.stage("build")["artifacts"]["onnxruntime_int8"]["source"] == "onnx_int8_cpu"
    import onnx

    ops = [n.op_type for n in onnx.load(str(run / record.path)).graph.node]
    assert ops.count("QLinearConv") >= 15  # resnet18's convolutions run as integer kernels


def test_openvino_fp32_build_writes_ir_and_sidecar(run, images):
    outcome = run_build(
        BuildConfig(run_dir=run, backend="openvino", precision="fp32", smoke_data=images, progress=False)
    )
    assert outcome.path == run / "build" / "openvino_fp32.xml"
    assert (run / "build" / "openvino_fp32.bin").is_file()
    sidecar = json.loads((run / "build" / "openvino_fp32.json").read_text())
    assert sidecar["metadata"]["edgexfer.class_names"] == '["red", "green", "blue"]'
    assert sidecar["precision"] == "fp32" and sidecar["backend"] == "openvino"
    assert outcome.smoke["mean_cosine"] > 0.9999 and outcome.smoke["top1_agreement"] == 1.0
    assert (
        Manifest.open(run).get("openvino_fp32").extra["weights_sha256"] == sidecar["build"]["weights_sha256"]
    )


def test_unknown_backend_lists_choices_and_reasons(cli_runner, run):
    code, out, err = cli_runner("build", str(run), "--backend", "tflite")
    assert code == 2
    line = err.strip()
    assert "\n" not in line and "Traceback" not in err
    assert "unknown backend 'tflite'" in line
    assert "onnxruntime" in line and "openvino" in line
    assert "tensorrt (unavailable:" in line


def test_tensorrt_without_tensorrt_is_exit_4(cli_runner, run):
    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    code, _, err = cli_runner("build", str(run), "--backend", "tensorrt", "--precision", "fp16")
    assert code == 4
    assert "backend 'tensorrt' is not usable here" in err and "Traceback" not in err


def test_precision_the_backend_cannot_do(cli_runner, run):
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        code, _, err = cli_runner("build", str(run), "--backend", "onnxruntime", "--precision", "fp16")
        assert code == 2 and "fp16 only with a CUDA or TensorRT" in err
    code, _, err = cli_runner("build", str(run), "--backend", "onnxruntime", "--precision", "int4")
    assert code == 2 and "unknown precision 'int4'" in err
    code, _, err = cli_runner("build", str(run), "--backend", "torch")
    assert code == 2 and "nothing to build" in err
    assert not Manifest.open(run).has("onnxruntime_fp16")


def test_option_for_another_backend_is_refused(cli_runner, run):
    code, _, err = cli_runner("build", str(run), "--backend", "onnxruntime", "--max-batch", "4")
    assert code == 2 and "--max-batch applies to --backend tensorrt, not onnxruntime" in err


def test_missing_int8_source_says_which_export_to_run(cli_runner, tmp_path):
    run = factory.exported_run(tmp_path / "floatonly", int8=False, use_stage=False)
    code, _, err = cli_runner("build", str(run), "--backend", "openvino", "--precision", "int8")
    assert code == 2
    assert "needs the 'onnx_int8_cpu' artifact" in err and "--int8 --target cpu" in err


def test_stale_source_is_refused(cli_runner, run):
    path = run / "export" / "model.onnx"
    path.write_bytes(path.read_bytes() + b"\0")
    code, _, err = cli_runner("build", str(run), "--backend", "onnxruntime", "--no-smoke")
    assert code == 2 and "changed since the 'export' stage" in err


def test_smoke_check_catches_a_wrong_model_and_records_nothing(run, images):
    """A QDQ model of *other* weights recorded as onnx_int8_cpu: the build runs but disagrees."""
    from edgexfer.errors import ParityError
    from edgexfer.fsutil import sha256_file

    other = factory.exported_run(run.parent / "other", int8=True, seed=1, use_stage=False)
    target = run / "export" / "model_int8_cpu.onnx"
    before = sha256_file(target)
    shutil.copy(other / "export" / "model_int8_cpu.onnx", target)
    assert sha256_file(target) != before  # other weights (seed 1), same graph shape
    with Manifest.update(run) as manifest:
        manifest.add_artifact("onnx_int8_cpu", target, kind="onnx-qdq", stage="export", inputs=["checkpoint"])
    config = BuildConfig(
        run_dir=run,
        backend="onnxruntime",
        precision="int8",
        smoke_data=images,
        smoke_min_cosine=0.999,
        progress=False,
    )
    with pytest.raises(ParityError, match="disagrees with the float ONNX"):
        run_build(config)
    assert not Manifest.open(run).has("onnxruntime_int8")


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
    assert not list((run / "build").glob(".*partial"))
    np.testing.assert_allclose(second.smoke["mean_cosine"], 1.0, atol=1e-6)
