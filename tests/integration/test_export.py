"""``edgexfer export`` end to end on CPU: real exports, real calibration, real ONNX Runtime sessions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import qdq_audit
from conftest import make_image_folder
from edgexfer.fsutil import sha256_file
from edgexfer.manifest import Manifest
from edgexfer.onnxmeta import read_metadata
from edgexfer.quant import graph, rules


def _leftovers(run: Path):
    """Temporary files or work folders the export stage might have left behind."""
    folder = run / "export"
    if not folder.exists():
        return []
    return [p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".partial")]


@pytest.fixture
def random_run_data(random_run, tmp_path):
    """The untrained run plus labelled eval images and a calibration folder of the same classes."""
    eval_dir = make_image_folder(tmp_path / "eval", per_class=4, size=40, seed=5)
    calib_dir = make_image_folder(tmp_path / "calib", per_class=6, size=40, seed=6)
    return random_run, eval_dir, calib_dir


def test_cli_export_int8_cpu(cli_runner, random_run_data, tmp_path):
    run, eval_dir, calib_dir = random_run_data
    code, out, err = cli_runner(
        "export",
        str(run),
        "--int8",
        "--target",
        "cpu",
        "--calib",
        str(calib_dir),
        "--calib-size",
        "10",
        "--calib-method",
        "minmax",
        "--eval-data",
        str(eval_dir),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--no-progress",
    )
    assert code == 0, err
    assert "onnx_int8_cpu" in out and "next: edgexfer build" in out and str(run / "manifest.json") in out
    manifest = Manifest.open(run)
    int8 = manifest.require("onnx_int8_cpu")
    assert int8.kind == "onnx-qdq" and set(int8.inputs) == {"checkpoint", "onnx"}
    assert int8.metrics["calib_images"] == 10 and int8.metrics["calib_available"] == 18
    assert int8.metrics["calib_method"] == "minmax" and int8.metrics["eval_images"] == 12
    model_path = manifest.path_of("onnx_int8_cpu")
    assert model_path == run / "export" / "model_int8_cpu.onnx"
    meta = read_metadata(model_path)
    assert (meta.precision, meta.target, meta.input_format) == ("int8", "cpu", "float_nchw")
    import onnx

    model = onnx.load(str(model_path))
    assert rules.check_rules(model, rules.QdqRules.cpu()) == [] and qdq_audit.cpu_problems(model) == []
    assert manifest.stage("export")["status"] == "done"
    assert not manifest.has("onnx_int8_tensorrt") and _leftovers(run) == []
    # the evidence: per-layer table and Pareto plot of every candidate, next to the report
    files = int8.metrics["evidence"]
    assert {files["json"], files["report"], files["pareto_png"]} <= {p.name for p in (run / "export").iterdir()}
    evidence = json.loads((run / "export" / files["json"]).read_text())
    table = evidence["table"]
    assert table["quantized_layers"] == len(table["layers"]) >= 2 and table["top_k"] == min(4, len(table["layers"]))
    sqnr = [row["sqnr_db"] for row in table["layers"]]
    assert sqnr == sorted(sqnr) and all("drop_if_float" in row for row in table["layers"][: table["top_k"]])
    assert 0 < sum(row["latency_share"] for row in table["layers"]) <= 1.0001
    names = [p["name"] for p in evidence["pareto"]]
    assert names[0] == "float" and set(names[1:]) == set(int8.metrics["candidates"])
    assert [p["name"] for p in evidence["pareto"] if p["kept"]] == [int8.metrics["quantizer"]]
    report = (run / "export" / "report.md").read_text()
    assert f"`{table['layers'][0]['layer']}`" in report and "pareto_cpu.png" in report


def test_cli_bad_inputs_are_one_line(cli_runner, random_run_data, tmp_path):
    run, eval_dir, calib_dir = random_run_data
    common = ["--eval-data", str(eval_dir), "--no-progress", "--no-shared-cache"]
    (tmp_path / "nothing").mkdir()
    code, _, err = cli_runner("export", str(run), "--int8", "--calib", str(tmp_path / "nothing"), *common)
    assert (
        code == 2 and "has no images" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    )
    broken = tmp_path / "broken"
    shutil.copytree(calib_dir, broken)
    (broken / "red" / "img_000.png").write_bytes(b"garbage")
    code, _, err = cli_runner(
        "export",
        str(run),
        "--int8",
        "--target",
        "cpu",
        "--calib",
        str(broken),
        "--calib-method",
        "minmax",
        *common,
    )
    assert code == 2 and "unreadable calibration image" in err and "img_000.png" in err
    assert not (run / "export").exists()  # bad calibration input fails before anything is written
    code, _, err = cli_runner("export", str(run), "--int8", "--target", "tensorrt", "--opset", "18", *common)
    assert code == 2 and "TensorRT 8.5/8.6" in err
    empty_run = tmp_path / "empty_run"
    Manifest.update(empty_run, create=True).__enter__().save()
    code, _, err = cli_runner("export", str(empty_run), *common)
    assert code == 2 and "has no checkpoint" in err and "edgexfer finetune" in err
    code, _, err = cli_runner("export", str(tmp_path / "missing_run"), *common)
    assert code == 2 and "does not exist" in err
    code, _, err = cli_runner("export", str(run), "--no-progress")  # no data record, no --eval-data
    assert code == 2 and "--eval-data" in err


def test_fewer_calibration_images_warns_with_count(cli_runner, random_run_data, tmp_path):
    run, eval_dir, calib_dir = random_run_data
    code, _, err = cli_runner(
        "export",
        str(run),
        "--int8",
        "--target",
        "tensorrt",
        "--calib",
        str(calib_dir),
        "--calib-size",
        "500",
        "--calib-method",
        "percentile",
        "--eval-data",
        str(eval_dir),
        "--no-shared-cache",
        "--no-progress",
    )
    assert code == 0, err
    assert "only 18 image(s), fewer than the 500 asked for; using all 18" in err
    import onnx

    model = onnx.load(str(run / "export" / "model_int8_tensorrt.onnx"))
    assert rules.check_rules(model, rules.QdqRules.tensorrt()) == [] and graph.default_opset(model) == 17
    assert qdq_audit.tensorrt_problems(model) == []  # TensorRT's requirements, checked independently


@pytest.mark.slow
def test_export_trained_run_end_to_end(trained_run_copy, tmp_path):
    """Default recipe on a trained run: float + uint8 + INT8 for both targets, then a cached re-run."""
    import onnx
    import onnxruntime as ort

    from edgexfer.data import samples_for_run
    from edgexfer.stages.export import ExportConfig, run_export

    run = trained_run_copy
    config = ExportConfig(
        run_dir=run,
        uint8_input=True,
        int8=True,
        calib_size=48,
        max_drop=5.0,
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    result = run_export(config)
    assert set(result.paths) == {"onnx", "onnx_uint8", "onnx_int8_cpu", "onnx_int8_tensorrt", "onnx_int8_openvino"}
    manifest = Manifest.open(run)
    for name in result.paths:
        manifest.require(name)
    float_metrics = manifest.get("onnx").metrics
    assert float_metrics["max_abs_diff"] < 1e-3 and float_metrics["top1_agreement"] == 1.0
    assert float_metrics["images"] == 48  # the run's whole validation split (parity_images 64)
    assert manifest.get("onnx_uint8").path == "export/model_uint8_nhwc.onnx"
    val = samples_for_run(run, "val")
    meta = read_metadata(result.paths["onnx"])
    pixels = np.stack([meta.preprocess.to_uint8(val.image(i), "NHWC") for i in range(len(val))])
    u8 = ort.InferenceSession(str(result.paths["onnx_uint8"]), providers=["CPUExecutionProvider"])
    assert (u8.run(None, {"input": pixels})[0].argmax(1) == val.labels).mean() >= 0.95
    floats = np.stack([meta.preprocess.to_array(val.image(i)) for i in range(len(val))])

    def logits_of(name):
        session = ort.InferenceSession(str(result.paths[name]), providers=["CPUExecutionProvider"])
        return session.run(None, {"input": floats})[0]

    float_logits = logits_of("onnx")
    for target in ("cpu", "tensorrt"):
        m = manifest.get(f"onnx_int8_{target}").metrics
        assert set(m["method_scores"]) == {"minmax", "entropy", "percentile"}
        # the written model, measured here on the 48 val images (all of them: eval_size 1000)
        logits = logits_of(f"onnx_int8_{target}")
        int8_top1 = 100.0 * float(np.mean(logits.argmax(1) == val.labels))
        float_top1 = 100.0 * float(np.mean(float_logits.argmax(1) == val.labels))
        agreement = float(np.mean(logits.argmax(1) == float_logits.argmax(1)))
        assert (m["float_top1"], m["int8_top1"]) == (pytest.approx(float_top1), pytest.approx(int8_top1))
        assert m["drop"] == pytest.approx(float_top1 - int8_top1) and m["agreement"] == pytest.approx(agreement)
        # it is the method recorded as kept, and no other method agreed better with float
        kept = m["method_scores"][m["calib_method"]]
        assert (kept["top1"], kept["agreement"]) == (pytest.approx(int8_top1), pytest.approx(agreement))
        assert all(s["agreement"] <= agreement for s in m["method_scores"].values())
        assert m["float_top1"] >= 95.0 and m["drop"] <= 5.0 and m["eval_images"] == 48
        audit = qdq_audit.tensorrt_problems if target == "tensorrt" else qdq_audit.cpu_problems
        assert audit(onnx.load(str(result.paths[f"onnx_int8_{target}"])), m["excluded_nodes"]) == []
        assert m["calib_images"] == 48 and m["calib_source"].startswith("train split")
        assert m["calib_cache_hit"] == {"minmax": False, "entropy": False, "percentile": False}
    # openvino: its candidates measured on OpenVINO (here edgexfer's recipe, the cpu model's run shared)
    m = manifest.get("onnx_int8_openvino").metrics
    assert m["runtime"] == "openvino" and "edgexfer" in m["candidates"]
    if m["quantizer"] == "edgexfer":
        assert m["same_model_as"] == "cpu"
        assert m["method_scores"] == manifest.get("onnx_int8_cpu").metrics["method_scores"]
    from edgexfer.backends.base import get_backend

    with get_backend("openvino").load(result.paths["onnx_int8_openvino"], {"precision": "int8"}) as runner:
        ov_logits = np.concatenate([runner.infer(floats[i : i + 16]) for i in range(0, len(floats), 16)])
    ov_top1 = 100.0 * float(np.mean(ov_logits.argmax(1) == val.labels))
    assert m["int8_top1"] == pytest.approx(ov_top1) == m["candidates"][m["quantizer"]]["top1"]
    assert m["agreement"] == pytest.approx(float(np.mean(ov_logits.argmax(1) == float_logits.argmax(1))))
    first = {name: sha256_file(path) for name, path in result.paths.items()}
    # a re-run reuses the float model and serves the ranges from the cache: same INT8 bytes
    again = run_export(config)
    manifest = Manifest.open(run)
    assert again.metrics["onnx"].get("reused") is True
    for target in ("cpu", "tensorrt"):
        assert manifest.get(f"onnx_int8_{target}").metrics["calib_cache_hit"] == {
            "minmax": True,
            "entropy": True,
            "percentile": True,
        }
        assert sha256_file(again.paths[f"onnx_int8_{target}"]) == first[f"onnx_int8_{target}"]
    # another calibration sample is another key: no stale ranges
    run_export(
        ExportConfig(
            run_dir=run,
            int8=True,
            target="cpu",
            calib_size=40,
            calib_method="minmax",
            cache_dir=tmp_path / "cache",
            progress=False,
        )
    )
    assert Manifest.open(run).get("onnx_int8_cpu").metrics["calib_cache_hit"] == {"minmax": False}
    assert _leftovers(run) == []
    record = json.loads((run / "manifest.json").read_text())["stages"]["export"]
    assert record["config"]["calib_size"] == 40 and "onnx_int8_cpu" in record["metrics"]
