"""``export --int8 --quantizer``: candidates compete on the target's runtime, the measured best is written
and recorded with every candidate's scores, and ``build --backend openvino --precision int8`` takes the
openvino target's model (the CPU model in runs exported without it). The NNCF tests need ``edgexfer[nncf]``."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from conftest import make_image_folder
from edgexfer.manifest import Manifest
from edgexfer.quant import candidates, rules

HAS_NNCF = importlib.util.find_spec("nncf") is not None
needs_nncf = pytest.mark.skipif(not HAS_NNCF, reason="nncf is not installed (pip install 'edgexfer[nncf]')")


@pytest.fixture
def random_run_data(random_run, tmp_path):
    """The untrained run plus labelled eval images and a calibration folder of the same classes."""
    eval_dir = make_image_folder(tmp_path / "eval", per_class=4, size=40, seed=5)
    calib_dir = make_image_folder(tmp_path / "calib", per_class=6, size=40, seed=6)
    return random_run, eval_dir, calib_dir


def _export(cli_runner, run, eval_dir, calib_dir, tmp_path, *extra):
    code, out, err = cli_runner(
        "export", str(run), "--int8", "--calib", str(calib_dir), "--calib-size", "12", "--calib-method", "minmax",
        "--eval-data", str(eval_dir), "--cache-dir", str(tmp_path / "cache"), "--no-progress", *extra,
    )
    assert code == 0, err
    return out


def _openvino_logits(path, run, eval_dir):
    """The model's logits on the eval folder, run by OpenVINO (what the export says it measured on)."""
    from edgexfer.backends.base import get_backend
    from edgexfer.data import folder_samples
    from edgexfer.onnxmeta import read_metadata

    meta = read_metadata(path)
    samples = folder_samples(eval_dir, class_names=meta.class_names)
    preprocess = meta.preprocess
    floats = np.stack([preprocess.to_array(samples.image(i)) for i in range(len(samples))])
    with get_backend("openvino").load(path, {"precision": "int8"}) as runner:
        return runner.infer(floats), np.asarray(samples.labels)


@pytest.mark.slow
def test_openvino_target_keeps_the_measured_best_and_builds_from_it(
    cli_runner, random_run_data, tmp_path, monkeypatch
):
    import onnx

    run, eval_dir, calib_dir = random_run_data
    # no openvino target yet: OpenVINO builds int8 from the CPU model, as before
    _export(cli_runner, run, eval_dir, calib_dir, tmp_path, "--target", "cpu")
    code, out, err = cli_runner("build", str(run), "--backend", "openvino", "--precision", "int8",
                                "--smoke-data", str(eval_dir))
    assert code == 0, err
    assert Manifest.open(run).get("openvino_int8").config["source"] == "onnx_int8_cpu"

    monkeypatch.setattr(candidates, "QUANTIZERS", {
        "edgexfer": "edgexfer.quant.recipe_quantizer:RecipeQuantizer",
        "flipped": "fake_quantizers:FlippedQuantizer",  # negated logits: measurably the worst
    })
    out = _export(cli_runner, run, eval_dir, calib_dir, tmp_path, "--target", "openvino")
    assert "onnx_int8_openvino" in out and "edgexfer/minmax on openvino (won against flipped)" in out
    assert "--backend openvino --precision int8" in out
    record = Manifest.open(run).require("onnx_int8_openvino")
    m = record.metrics
    assert set(m["candidates"]) == {"edgexfer", "flipped"} and m["quantizer"] == "edgexfer"
    assert record.config["quantizer"] == "edgexfer" and record.config["quantizer_choice"] == "auto"
    model = onnx.load(str(run / record.path))
    assert "fake_neg" not in {node.name for node in model.graph.node}  # the winner's model was written
    assert rules.check_rules(model, rules.QdqRules.openvino()) == []
    logits, labels = _openvino_logits(run / record.path, run, eval_dir)
    top1 = 100.0 * float(np.mean(logits.argmax(1) == labels))
    assert m["int8_top1"] == pytest.approx(top1) == m["candidates"]["edgexfer"]["top1"]
    assert m["candidates"]["flipped"]["agreement"] < m["candidates"]["edgexfer"]["agreement"]
    for scores in m["candidates"].values():
        assert scores["runtime"] == "openvino" and scores["latency_p50_ms"] > 0 and scores["images"] == 12

    code, out, err = cli_runner("build", str(run), "--backend", "openvino", "--precision", "int8",
                                "--smoke-data", str(eval_dir))
    assert code == 0, err
    assert Manifest.open(run).get("openvino_int8").config["source"] == "onnx_int8_openvino"


@pytest.mark.skipif(HAS_NNCF, reason="nncf is installed here; the message is for environments without it")
def test_quantizer_nncf_without_nncf_is_one_line_exit_4(cli_runner, random_run_data, tmp_path):
    run, eval_dir, calib_dir = random_run_data
    code, out, err = cli_runner("export", str(run), "--int8", "--target", "openvino", "--quantizer", "nncf",
                                "--calib", str(calib_dir), "--eval-data", str(eval_dir), "--no-progress")
    assert code == 4 and "pip install 'edgexfer[nncf]'" in err and len(err.strip().splitlines()) == 1
    assert not (run / "export" / "model.onnx").exists()  # refused before anything was written


@needs_nncf
@pytest.mark.slow
def test_auto_with_nncf_scores_both_and_writes_the_winner(cli_runner, random_run_data, tmp_path):
    import onnx

    from edgexfer.quant.graph import Graph

    run, eval_dir, calib_dir = random_run_data
    out = _export(cli_runner, run, eval_dir, calib_dir, tmp_path, "--target", "openvino", "--quantizer", "auto")
    record = Manifest.open(run).require("onnx_int8_openvino")
    m = record.metrics
    assert set(m["candidates"]) == {"edgexfer", "nncf"} and m["quantizer"] in m["candidates"]
    assert f"{m['quantizer']}/" in out and "won against" in out
    assert m["candidates"]["nncf"]["settings"]["preset"] == "performance"
    # who made the written model shows in it: NNCF's symmetric preset quantizes signed tensors to int8,
    # edgexfer's recipe every activation to uint8
    model = onnx.load(str(run / record.path))
    graph = Graph(model)
    activation_dtypes = {
        graph.input_const(n, 2).dtype.name
        for n in model.graph.node
        if n.op_type == "QuantizeLinear" and not graph.is_weight_path(n.input[0])
    }
    assert ("int8" in activation_dtypes) == (m["quantizer"] == "nncf")
    logits, labels = _openvino_logits(run / record.path, run, eval_dir)
    assert m["int8_top1"] == pytest.approx(100.0 * float(np.mean(logits.argmax(1) == labels)))


@needs_nncf
def test_nncf_keeps_the_guards_float_layers_out(tmp_path):
    """The guard's float layers become NNCF's ignored scope: those layers get no quantized input."""
    import onnx

    import onnx_factory
    from edgexfer.quant.calibration import CalibrationSet
    from edgexfer.quant.graph import Graph
    from edgexfer.quant.nncf_quantizer import NncfQuantizer
    from edgexfer.quant.ort_quantize import prepare_for_quantization

    float_path = onnx_factory.export_float(onnx_factory.tiny_net(), tmp_path / "float.onnx")
    prepared = prepare_for_quantization(float_path, tmp_path / "prepared.onnx")
    arrays = np.concatenate(onnx_factory.calibration_batches(size=32, count=8))
    calib = CalibrationSet(arrays, np.zeros(arrays.shape, np.uint8), source="test")
    convs = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Conv"]

    def quantized_inputs(float_layers):
        request = candidates.QuantizeRequest(
            float_path=float_path, prepared=prepared, work_dir=tmp_path, calib=calib, eval_inputs=arrays,
            eval_labels=np.zeros(len(arrays), int), float_logits=np.zeros((len(arrays), 3)),
            float_layers=float_layers,
        )
        candidate = NncfQuantizer().quantize("openvino", request)
        graph = Graph(candidate.model)
        by_name = {n.name: n for n in candidate.model.graph.node}
        return candidate, {name for name in convs if graph.dequantized_by(by_name[name].input[0]) is not None}

    plain, quantized = quantized_inputs({})
    assert quantized == set(convs) and plain.details["ignored_scope"] == []
    guarded, quantized = quantized_inputs({"openvino": [convs[0], "no_such_node"]})
    assert quantized == set(convs[1:]) and guarded.excluded == [convs[0]]
    assert rules.check_rules(guarded.model, rules.QdqRules.openvino(), guarded.excluded) == []
