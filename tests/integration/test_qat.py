"""``export --int8 --qat-epochs N``: the edgexfer-qat candidate trains on the run's training split, competes
with the post-training candidates on the same held-out images (scores in the manifest), and its QDQ model
follows the target's rules."""

from __future__ import annotations

import math
import os

import numpy as np

from edgexfer.data import samples_for_run
from edgexfer.manifest import Manifest
from edgexfer.quant.qat import QatSettings
from edgexfer.quant.rules import QdqRules, enforce_rules

RESNET18_WEIGHTED_LAYERS = 21  # 20 convolutions (downsample ones included) and the head


def _export(cli_runner, run, tmp_path, *extra):
    code, out, err = cli_runner(
        "export", str(run), "--int8", "--calib-size", "16", "--calib-method", "minmax", "--evidence-layers", "0",
        "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--qat-epochs", "1", *extra,
    )
    assert code == 0, err
    return Manifest.open(run)


def test_qat_candidate_competes_and_its_model_follows_the_rules(cli_runner, trained_run_copy, tmp_path):
    import onnx
    from onnx import numpy_helper

    run = trained_run_copy
    metrics = _export(cli_runner, run, tmp_path, "--target", "cpu").get("onnx_int8_cpu").metrics
    assert {"edgexfer", "edgexfer-bc", "edgexfer-qat"} <= set(metrics["candidates"])
    qat = metrics["candidates"]["edgexfer-qat"]
    ptq = metrics["candidates"]["edgexfer"]
    assert qat["images"] == ptq["images"] == metrics["eval_images"] > 0  # paired: the same held-out images
    assert 0.0 <= qat["agreement"] <= 1.0 and qat["latency_p50_ms"] == ptq["latency_p50_ms"]  # same graph
    record = qat["qat"]
    train_images = len(samples_for_run(run, "train"))
    assert record["images"] == train_images and record["epochs"] == 1
    assert record["steps"] == math.ceil(train_images / QatSettings(epochs=1).batch_size)
    assert record["plan"]["weights"] == RESNET18_WEIGHTED_LAYERS and record["calib_method"] == "minmax"

    # alone, the QAT candidate is what is written: TensorRT's recipe, its rules, weights moved by training
    manifest = _export(cli_runner, run, tmp_path, "--target", "tensorrt", "--quantizer", "edgexfer-qat")
    artifact = manifest.get("onnx_int8_tensorrt")
    assert artifact.config["quantizer"] == "edgexfer-qat"
    model = onnx.load(os.fspath(run / artifact.path))
    enforce_rules(model, QdqRules.tensorrt(), artifact.metrics["excluded_nodes"], "the QAT model")
    float_model = onnx.load(os.fspath(run / "export" / "model.onnx"))
    floats = {i.name: numpy_helper.to_array(i) for i in float_model.graph.initializer}
    # TensorRT's recipe keeps float conv weights behind Q/DQ, under their names in the float model
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer
               if i.name in floats and len(i.dims) == 4}
    assert len(weights) == RESNET18_WEIGHTED_LAYERS - 1
    assert sum(not np.array_equal(w, floats[name]) for name, w in weights.items()) == len(weights)
