"""``edgexfer verify`` end to end on CPU: a trained run, real ONNX exports, real ONNX Runtime sessions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgexfer.fsutil import sha256_file
from edgexfer.manifest import Manifest


@pytest.fixture(scope="module")
def built_template(trained_run, tmp_path_factory) -> Path:
    """The trained run exported by the real export stage (float, uint8-input, INT8 for the CPU) and built
    by the real build stage for ONNX Runtime fp32 and int8. Read-only: tests use ``built_run``."""
    import shutil

    from edgexfer.stages.build import BuildConfig, run_build
    from edgexfer.stages.export import ExportConfig, run_export

    run = Path(shutil.copytree(trained_run, tmp_path_factory.mktemp("verify") / "run"))
    run_export(
        ExportConfig(
            run_dir=run,
            int8=True,
            target="cpu",
            uint8_input=True,
            calib_size=48,
            calib_method="minmax",
            eval_size=48,
            progress=False,
        )
    )
    for precision in ("fp32", "int8"):
        run_build(BuildConfig(run_dir=run, backend="onnxruntime", precision=precision, progress=False))
    return run


@pytest.fixture
def built_run(built_template: Path, tmp_path: Path) -> Path:
    """A private, writable copy of ``built_template``."""
    import shutil

    return Path(shutil.copytree(built_template, tmp_path / "run"))


def _build_from(run: Path, source: str, backend: str, smoke: bool = True) -> str:
    """Build ``source`` through the real build stage; returns the manifest name."""
    from edgexfer.stages.build import BuildConfig, run_build

    return run_build(
        BuildConfig(
            run_dir=run, backend=backend, precision="fp32", source=source, smoke=smoke, progress=False
        )
    ).name


def _add_damaged_artifact(run: Path) -> str:
    """An artifact made (by the export stage's own exporter) from a damaged copy of the model whose head
    always favours class 'blue'; built for OpenVINO so it sits next to the good ONNX Runtime ones."""
    import torch

    from edgexfer.checkpoint import load_checkpoint
    from edgexfer.stages.export.config import DEFAULT_OPSET
    from edgexfer.stages.export.onnx_models import export_float

    pytest.importorskip("openvino")
    model, meta = load_checkpoint(run / "finetune" / "best.pt")
    with torch.no_grad():
        model.fc.bias[meta.class_names.index("blue")] += 1e4
    path = run / "export" / "model_damaged.onnx"
    export_float(model, meta, path, DEFAULT_OPSET)
    with Manifest.update(run) as manifest:
        manifest.add_artifact("onnx_damaged", path, kind="onnx", stage="export", inputs=["checkpoint"])
    return _build_from(run, "onnx_damaged", "openvino", smoke=False)


FAST = ["--bootstrap", "300", "--latency-batch", "2"]


def test_verify_passes_and_writes_documented_outputs(built_run, cli_runner):
    # every gate set, each loose enough for a well-trained run; --gate-on ci: the CI's upper bound <= 0.5
    code, out, err = cli_runner(
        "-q", "verify", str(built_run), "--max-drop", "0.5", "--gate-on", "ci", "--min-agreement", "99",
        "--max-class-drop", "2", "--max-p99-ms", "60000", "--min-speedup", "0.001", *FAST
    )
    assert code == 0, err
    data = json.loads((built_run / "verify" / "verify.json").read_text())
    # a trained reference: better than chance (48 of 48 right: the 95% Wilson interval starts at 92.6%)
    assert data["verdict"] == {"status": "passed", "reason": None}
    chance = data["reference"]["chance"]
    assert chance["above_chance"] and chance["chance"] == pytest.approx(100 / 3) and chance["top1_low"] > 90
    assert "(95% CI " in out and "chance 33.33%)" in out
    assert {k: data["gate"][k] for k in ("gate_on", "max_class_drop", "max_p99_ms", "min_speedup")} == {
        "gate_on": "ci", "max_class_drop": 2.0, "max_p99_ms": 60000.0, "min_speedup": 0.001}
    for art in data["artifacts"]:
        values = art["gate"]["values"]
        assert values["p99_ms"] == art["latency"]["p99_ms"] and values["worst_class_drop"] <= 0
        assert values["speedup"] == pytest.approx(data["reference"]["latency"]["p50_ms"] / art["latency"]["p50_ms"])
    # export --int8 and the build smoke check judged their reference too: better than chance here
    manifest = Manifest.open(built_run)
    assert manifest.get("onnx_int8_cpu").metrics["verdict"] == "passed"
    smoke = manifest.get("onnxruntime_int8").metrics["smoke"]
    assert smoke["verdict"] == "passed" and smoke["reference_vs_chance"]["above_chance"]
    # The table the CLI prints: one line per artifact with the numbers of verify.json.
    top1 = data["reference"]["top1"]
    assert f"reference torch fp32: top-1 {top1:.2f}% on 48 images" in out
    assert (f"  onnxruntime_fp32       PASSED  top-1 {top1:.2f}% (drop +0.00, CI +0.00..+0.00), agreement 100.0%, "
            "p50 ") in out
    assert f"next: edgexfer predict {built_run} IMAGE" in out
    assert data["schema_version"] == 1 and data["kind"] == "edgexfer-verify"
    assert data["dataset"]["source"] == "run validation split"
    assert data["dataset"]["num_images"] == 48 and data["dataset"]["class_counts"] == [16, 16, 16]
    assert data["reference"]["top1"] >= 95.0
    entries = {e["name"]: e for e in data["artifacts"]}
    assert sorted(entries) == ["onnxruntime_fp32", "onnxruntime_int8"]
    entry = entries["onnxruntime_fp32"]
    assert entry["status"] == "passed" and (entry["gate"]["passed"], entry["gate"]["reasons"]) == (True, [])
    # The same float model in ONNX Runtime: identical predictions, near-identical logits.
    assert entry["accuracy"]["top1"] == pytest.approx(data["reference"]["top1"])
    assert entry["accuracy"]["top1_drop"] == 0.0 and entry["accuracy"]["top1_drop_ci"] == [0.0, 0.0]
    assert entry["agreement"]["agreement_pct"] == 100.0 and entry["agreement"]["flips"] == 0
    assert entry["mcnemar"]["p_value"] == 1.0
    assert entry["logits"]["cosine_min"] > 0.99999
    assert entry["logits"]["snr_db"] is None or entry["logits"]["snr_db"] > 60
    assert entry["input"] == {"dtype": "float32", "layout": "NCHW"}
    # The real INT8 QDQ model of a well-trained run on easy images keeps its accuracy.
    int8 = entries["onnxruntime_int8"]
    assert int8["status"] == "passed" and int8["precision"] == "int8"
    assert int8["accuracy"]["top1_drop"] <= 0.5 and int8["agreement"]["agreement_pct"] >= 99
    assert 0.95 < int8["logits"]["cosine_mean"] < 1.0 and 10 < int8["logits"]["snr_db"] < 80
    lat = entry["latency"]
    assert lat["batch_size"] == 2 and lat["n"] >= 30
    assert 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"]
    # Outputs are recorded in the manifest with their hashes, made from the verified artifact.
    manifest = Manifest.open(built_run)
    for name, file in (
        ("verify_json", "verify.json"),
        ("verify_report", "report.md"),
        ("verify_latency", "latency.png"),
        ("verify_per_class_delta", "per_class_delta.png"),
    ):
        record = manifest.get(name)
        assert record.sha256 == sha256_file(built_run / "verify" / file)
        assert set(record.inputs) == {"checkpoint", "onnxruntime_fp32", "onnxruntime_int8"}
    assert manifest.get("onnxruntime_fp32").metrics["verify_status"] == "passed"
    assert manifest.stage("verify")["status"] == "done"
    assert "**Verdict: PASSED**" in (built_run / "verify" / "report.md").read_text()


def test_verify_latency_gates_fail_with_exit_3(built_run, cli_runner):
    code, out, err = cli_runner("-q", "verify", str(built_run), "--artifact", "onnxruntime_fp32", "--no-plots",
                                "--max-p99-ms", "0.0001", "--min-speedup", "1000000", *FAST)
    assert code == 3, err
    assert err.startswith("edgexfer: error: parity gate failed for 'onnxruntime_fp32': p99 latency ")
    data = json.loads((built_run / "verify" / "verify.json").read_text())
    (entry,) = data["artifacts"]
    p99, speedup = entry["latency"]["p99_ms"], data["reference"]["latency"]["p50_ms"] / entry["latency"]["p50_ms"]
    assert entry["gate"]["reasons"] == [
        f"p99 latency {p99:.2f} ms > --max-p99-ms 0.0001",
        f"speed-up over torch fp32 (p50) {speedup:.2f}x < --min-speedup 1e+06",
    ]
    assert data["verdict"]["status"] == "failed" and "    gate: p99 latency" in out
    report = (built_run / "verify" / "report.md").read_text()
    assert "p99 latency <= 0.0001 ms; speed-up over torch fp32 >= 1e+06x" in report


@pytest.fixture(scope="module")
def chance_run(tmp_path_factory) -> Path:
    """A random-init resnet18 run (tests/onnx_factory.exported_run: real export, INT8 for the CPU) built for
    ONNX Runtime fp32, smoke-checked on the generated images it was exported with. Random weights answer
    one class, or close to it, on those images: a reference at chance. Read-only."""
    from onnx_factory import exported_run

    from edgexfer.stages.build import BuildConfig, run_build

    run = exported_run(tmp_path_factory.mktemp("chance") / "run")
    run_build(BuildConfig(run_dir=run, backend="onnxruntime", precision="fp32", progress=False,
                          smoke_data=run / "_export_images"))
    return run


def test_verify_a_chance_level_reference_is_inconclusive_with_exit_5(chance_run, tmp_path, cli_runner):
    import shutil

    run = Path(shutil.copytree(chance_run, tmp_path / "run"))
    images = run / "_export_images"
    code, out, err = cli_runner("-q", "verify", str(run), "--data", str(images), "--max-drop", "1",
                                "--min-agreement", "99", "--no-latency", *FAST)
    assert code == 5, err
    assert err.startswith("edgexfer: error: verdict INCONCLUSIVE: the float reference is not better than chance "
                          "on these 18 images") and len(err.strip().splitlines()) == 1
    data = json.loads((run / "verify" / "verify.json").read_text())
    chance = data["reference"]["chance"]
    # the check is honest about the weights: their top-1 interval on 18 images of 3 classes includes 1/3
    assert chance["images"] == 18 and chance["chance"] == pytest.approx(100 / 3)
    assert chance["top1_low"] <= 100 / 3 and not chance["above_chance"]
    assert data["verdict"] == {"status": "inconclusive", "reason": chance["reason"]}
    assert data["gate"]["passed"] is False and data["summary"]["inconclusive"] == 1
    (entry,) = data["artifacts"]
    # the fp32 build copies its reference exactly: every gate passes, and still it is no pass
    assert entry["status"] == "inconclusive" and entry["gate"]["passed"] is True
    assert entry["agreement"]["agreement_pct"] == 100.0
    assert "  onnxruntime_fp32       INCONCLUSIVE top-1" in out and "verdict: INCONCLUSIVE (" in out
    report = (run / "verify" / "report.md").read_text()
    assert "**Verdict: INCONCLUSIVE**" in report and "Not a pass: the float reference is not better" in report
    assert "| `onnxruntime_fp32` | INCONCLUSIVE |" in report
    manifest = Manifest.open(run)
    assert manifest.stage("verify")["status"] == "inconclusive"
    assert manifest.get("onnxruntime_fp32").metrics["verify_status"] == "inconclusive"
    # export --int8 and the build's smoke check said the same, and recorded it
    int8 = manifest.get("onnx_int8_cpu").metrics
    assert int8["verdict"] == "inconclusive" and not int8["float_vs_chance"]["above_chance"]
    smoke = manifest.get("onnxruntime_fp32").metrics["smoke"]
    assert smoke["verdict"] == "inconclusive" and smoke["reference_vs_chance"]["images"] == 8
    # through the API: a typed error (exit 5) that carries what verify wrote
    from edgexfer.errors import InconclusiveError
    from edgexfer.stages.verify import VerifyConfig, VerifyInconclusive, run_verify

    with pytest.raises(VerifyInconclusive) as info:
        run_verify(VerifyConfig(run_dir=run, data=images, latency=False, plots=False, bootstrap_resamples=300,
                                progress=False))
    assert isinstance(info.value, InconclusiveError) and info.value.exit_code == 5
    assert info.value.result.data["verdict"]["status"] == "inconclusive"


def test_verify_gate_fails_with_exit_3_and_names_the_artifact(built_run, cli_runner):
    name = _add_damaged_artifact(built_run)
    assert name == "openvino_fp32"
    code, out, err = cli_runner("-q", "verify", str(built_run), "--max-drop", "1", "--no-latency", *FAST)
    assert code == 3, err
    assert "parity gate failed for 'openvino_fp32'" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    data = json.loads((built_run / "verify" / "verify.json").read_text())
    # The table is printed before the error, with the damaged artifact's numbers.
    assert f"  openvino_fp32          FAILED  top-1 33.33% (drop {data['reference']['top1'] - 100 / 3:+.2f}" in out
    assert f"report: {built_run / 'verify' / 'report.md'}" in out
    entries = {e["name"]: e for e in data["artifacts"]}
    assert entries["onnxruntime_fp32"]["status"] == entries["onnxruntime_int8"]["status"] == "passed"
    damaged = entries["openvino_fp32"]
    assert damaged["status"] == "failed"
    # Every image is now 'blue': red and green (32 of 48) are lost, blue stays right.
    ref_top1 = data["reference"]["top1"]
    assert damaged["accuracy"]["top1"] == pytest.approx(100 / 3)
    assert damaged["accuracy"]["top1_drop"] == pytest.approx(ref_top1 - 100 / 3)
    low, high = damaged["accuracy"]["top1_drop_ci"]
    assert 40 < low < damaged["accuracy"]["top1_drop"] < high <= 100
    assert damaged["mcnemar"]["only_other"] == 0 and damaged["mcnemar"]["p_value"] < 1e-6
    blue = data["dataset"]["class_names"].index("blue")
    per_class = damaged["per_class"]
    assert per_class["delta"][blue] == pytest.approx(100.0 - data["reference"]["per_class_accuracy"][blue])
    assert [a for i, a in enumerate(per_class["accuracy"]) if i != blue] == [0.0, 0.0]
    assert per_class["accuracy"][blue] == 100.0
    assert damaged["gate"]["reasons"][0].startswith("top-1 drop ")
    assert data["gate"]["failures"][0]["artifact"] == "openvino_fp32"
    report = (built_run / "verify" / "report.md").read_text()
    assert "**Verdict: FAILED**" in report and "- FAIL `openvino_fp32`: top-1 drop" in report
    # Through the API: a typed ParityError that carries what verify wrote.
    from edgexfer.errors import ParityError
    from edgexfer.stages.verify import VerifyConfig, VerifyFailed, run_verify

    config = VerifyConfig(run_dir=built_run, artifacts=("openvino_fp32",), max_drop=1.0, latency=False,
                          plots=False, bootstrap_resamples=300, progress=False)
    with pytest.raises(VerifyFailed) as info:
        run_verify(config)
    assert isinstance(info.value, ParityError) and info.value.exit_code == 3
    assert info.value.result.data["gate"]["failures"][0]["artifact"] == "openvino_fp32"
    assert info.value.result.report_path == built_run / "verify" / "report.md"
    # --max-class-drop alone: green and red lost every image (100 points), the first of them is named
    config = VerifyConfig(run_dir=built_run, artifacts=("openvino_fp32",), max_class_drop=99.0, latency=False,
                          plots=False, bootstrap_resamples=300, progress=False)
    with pytest.raises(VerifyFailed) as info:
        run_verify(config)
    (entry,) = info.value.result.data["artifacts"]
    assert entry["gate"]["reasons"] == ["class 'green' top-1 drop 100.00 pts > --max-class-drop 99"]


def test_verify_nothing_built_is_one_clear_line(trained_run_copy, cli_runner):
    code, out, err = cli_runner("-q", "verify", str(trained_run_copy))
    assert code == 2
    assert err.strip() == (
        f"edgexfer: error: run '{trained_run_copy}' has no built artifacts; build one first, "
        f"e.g. 'edgexfer build {trained_run_copy} --backend onnxruntime --precision int8'"
    )


def test_verify_data_with_other_classes_is_refused(built_run, tmp_path, cli_runner):
    from conftest import make_image_folder

    data = make_image_folder(
        tmp_path / "other",
        per_class=2,
        classes={"red": (200, 40, 40), "green": (40, 190, 60), "purple": (150, 40, 150)},
    )
    code, out, err = cli_runner("-q", "verify", str(built_run), "--data", str(data))
    assert code == 2
    assert "do not match the model's (not in the model: purple; missing: blue)" in err
    assert len(err.strip().splitlines()) == 1


def test_verify_unloadable_artifact_still_reports_the_others(built_run, cli_runner):
    # A truncated copy, recorded as if the build had written it: the hash check passes, loading fails.
    path = Manifest.open(built_run).path_of("onnxruntime_fp32")
    path.write_bytes(path.read_bytes()[:2000])
    with Manifest.update(built_run) as manifest:
        record = manifest.get("onnxruntime_fp32")
        manifest.add_artifact(
            "onnxruntime_fp32",
            path,
            kind=record.kind,
            stage="build",
            inputs=["onnx"],
            config=record.config,
            extra=record.extra,
        )
    code, out, err = cli_runner("-q", "verify", str(built_run), "--no-latency", *FAST)
    assert code == 2
    assert err.startswith("edgexfer: error: artifact 'onnxruntime_fp32' could not be verified: ")
    assert len(err.strip().splitlines()) == 1
    data = json.loads((built_run / "verify" / "verify.json").read_text())
    entries = {e["name"]: e for e in data["artifacts"]}
    assert entries["onnxruntime_fp32"]["status"] == "error" and entries["onnxruntime_fp32"]["error"]
    assert entries["onnxruntime_int8"]["status"] == "passed"
    assert data["gate"]["errors"][0]["artifact"] == "onnxruntime_fp32"
    assert "- ERROR `onnxruntime_fp32`" in (built_run / "verify" / "report.md").read_text()


def test_verify_uint8_input_artifact_on_a_data_folder_with_limit_and_out(built_run, tmp_path, cli_runner):
    from conftest import make_image_folder

    pytest.importorskip("openvino")
    assert _build_from(built_run, "onnx_uint8", "openvino") == "openvino_fp32"

    data = make_image_folder(
        tmp_path / "extra",
        per_class=5,
        size=40,
        seed=9,
        classes={"blue": (40, 60, 200), "red": (200, 40, 40), "green": (40, 190, 60)},
    )
    out_dir = tmp_path / "out"
    code, out, err = cli_runner(
        "-q",
        "verify",
        str(built_run),
        "--data",
        str(data),
        "--limit",
        "9",
        "--no-plots",
        "--no-latency",
        "--out",
        str(out_dir),
        "--backends",
        "openvino",
        *FAST,
    )
    assert code == 0, err
    result = json.loads((out_dir / "verify.json").read_text())
    assert result["dataset"]["num_images"] == 9 and result["dataset"]["total_images"] == 15
    assert result["dataset"]["class_names"] == ["blue", "green", "red"]  # the model's order
    assert result["dataset"]["class_counts"] == [3, 3, 3]  # --limit keeps every class of a sorted set
    (entry,) = result["artifacts"]
    assert entry["name"] == "openvino_fp32" and entry["latency"] is None and result["plots"] == []
    # Fed uint8 NHWC pixels (normalisation inside the model), it matches the float reference.
    assert entry["input"] == {"dtype": "uint8", "layout": "NHWC"}
    assert entry["agreement"]["agreement_pct"] == 100.0 and entry["logits"]["cosine_min"] > 0.9999
    # --out outside the run: nothing is recorded in the run's manifest.
    assert not Manifest.open(built_run).has("verify_json")


def test_verify_skips_an_engine_this_machine_cannot_run(built_run, cli_runner):
    from edgexfer.backends.base import get_backend

    ok, _ = get_backend("tensorrt").availability()
    if ok:
        pytest.skip("TensorRT is usable here; this test is about machines without it")
    # An engine built on another machine (a Jetson) and copied here with the run directory.
    engine = built_run / "build" / "tensorrt_fp16.engine"
    engine.write_bytes(b"serialized engine from another machine")
    with Manifest.update(built_run) as manifest:
        manifest.add_artifact(
            "tensorrt_fp16",
            engine,
            kind="tensorrt-engine",
            stage="build",
            inputs=["onnx"],
            extra={"backend": "tensorrt", "precision": "fp16"},
        )
    code, out, err = cli_runner("-q", "verify", str(built_run), "--no-latency", *FAST)
    assert code == 0, err
    data = json.loads((built_run / "verify" / "verify.json").read_text())
    entries = {e["name"]: e for e in data["artifacts"]}
    assert entries["tensorrt_fp16"]["status"] == "skipped" and "tensorrt" in entries["tensorrt_fp16"]["error"]
    assert data["summary"] == {"passed": 2, "failed": 0, "inconclusive": 0, "error": 0, "skipped": 1}
    # Asked for explicitly, an unavailable backend is exit 4 with one line.
    code, out, err = cli_runner(
        "-q", "verify", str(built_run), "--backends", "tensorrt", "--no-latency", *FAST
    )
    assert code == 4 and err.startswith("edgexfer: error: backend 'tensorrt' is not usable here")


def test_verify_an_exported_int8_model_directly(built_run, cli_runner):
    code, out, err = cli_runner(
        "-q",
        "verify",
        str(built_run),
        "--artifact",
        "onnx_int8_cpu",
        "--max-drop",
        "1",
        "--no-latency",
        *FAST,
    )
    assert code == 0, err
    data = json.loads((built_run / "verify" / "verify.json").read_text())
    (entry,) = data["artifacts"]
    assert (entry["name"], entry["backend"], entry["precision"], entry["status"]) == (
        "onnx_int8_cpu",
        "onnxruntime",
        "int8",
        "passed",
    )
    assert entry["agreement"]["agreement_pct"] >= 99
    code, out, err = cli_runner("-q", "verify", str(built_run), "--artifact", "checkpoint")
    assert code == 2 and "is a checkpoint from the finetune stage, not a model verify can run;" in err


def test_verify_a_bug_while_running_an_artifact_is_an_internal_error(built_run, cli_runner, monkeypatch):
    # Not bad input: an exception that is no EdgexferError is a bug, exit 1, not "artifact could not be
    # verified" (exit 2). Bad artifacts are still per-artifact errors (test above).
    from edgexfer.backends.onnxruntime import OnnxRuntimeRunner

    def broken_infer(self, batch):
        raise ZeroDivisionError("a bug in a runner")

    monkeypatch.setattr(OnnxRuntimeRunner, "infer", broken_infer)
    code, out, err = cli_runner("-q", "verify", str(built_run), "--no-latency", *FAST)
    assert code == 1, err
    assert err.startswith("edgexfer: internal error: ZeroDivisionError: a bug in a runner (rerun with --debug")
    assert not (built_run / "verify" / "verify.json").exists()


def test_verify_hashes_each_recorded_file_once(built_run, monkeypatch):
    # Four artifacts that share their inputs (checkpoint, onnx): one manifest per verify memoises hashes.
    import edgexfer.manifest
    from edgexfer.stages.verify import VerifyConfig, run_verify

    hashed = []
    real = edgexfer.manifest.sha256_file

    def counting(path):
        hashed.append(Path(path).resolve())
        return real(path)

    monkeypatch.setattr(edgexfer.manifest, "sha256_file", counting)
    names = ("onnxruntime_fp32", "onnxruntime_int8", "onnx", "onnx_int8_cpu")
    result = run_verify(VerifyConfig(run_dir=built_run, artifacts=names, latency=False, plots=False,
                                     bootstrap_resamples=300, progress=False))
    assert sorted(e["name"] for e in result.data["artifacts"]) == sorted(names)
    repeated = {path.name: hashed.count(path) for path in set(hashed) if hashed.count(path) > 1}
    assert repeated == {}
    assert (built_run / "finetune" / "best.pt").resolve() in hashed


def test_verify_data_folder_is_scanned_once(built_run, tmp_path, monkeypatch):
    # folder_samples decodes every image to check it; --data must not do that twice.
    from conftest import make_image_folder

    import edgexfer.data.sources
    from edgexfer.stages.verify import VerifyConfig, run_verify

    data = make_image_folder(tmp_path / "data", per_class=4, size=40, seed=5,
                             classes={"red": (200, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 200)})
    checked = []
    real = edgexfer.data.sources._check_image

    def counting(path):
        checked.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(edgexfer.data.sources, "_check_image", counting)
    result = run_verify(VerifyConfig(run_dir=built_run, data=data, artifacts=("onnxruntime_fp32",), latency=False,
                                     plots=False, bootstrap_resamples=300, progress=False))
    assert len(checked) == 12
    dataset = result.data["dataset"]
    # Relabelled to the model's class order (blue, green, red), not the folder scan's.
    assert dataset["class_names"] == ["blue", "green", "red"] and dataset["class_counts"] == [4, 4, 4]
    (entry,) = result.data["artifacts"]
    assert entry["accuracy"]["top1"] == pytest.approx(result.data["reference"]["top1"])
    assert result.data["reference"]["per_class_accuracy"] == [100.0, 100.0, 100.0]


def test_every_verify_option_maps_to_a_config_field():
    # YAML keys are the CLI long options: config_from_params must turn each into its VerifyConfig field.
    import click

    from edgexfer.commands.verify import config_from_params, verify
    from edgexfer.stages.verify import VerifyConfig

    cases = {
        "data": (["--data", "d"], "data", Path("d")),
        "backends": (["--backends", "onnxruntime,openvino"], "backends", ("onnxruntime", "openvino")),
        "artifact": (["--artifact", "onnx", "--artifact", "x"], "artifacts", ("onnx", "x")),
        "max_drop": (["--max-drop", "1.5"], "max_drop", 1.5),
        "min_agreement": (["--min-agreement", "90"], "min_agreement", 90.0),
        "gate_on": (["--gate-on", "ci", "--max-drop", "2"], "gate_on", "ci"),
        "max_class_drop": (["--max-class-drop", "7.5"], "max_class_drop", 7.5),
        "max_p99_ms": (["--max-p99-ms", "12"], "max_p99_ms", 12.0),
        "min_speedup": (["--min-speedup", "1.5"], "min_speedup", 1.5),
        "batch_size": (["--batch-size", "3"], "batch_size", 3),
        "limit": (["--limit", "5"], "limit", 5),
        "bootstrap": (["--bootstrap", "300"], "bootstrap_resamples", 300),
        "latency": (["--no-latency"], "latency", False),
        "latency_batch": (["--latency-batch", "4"], "latency_batch", 4),
        "threads": (["--threads", "2"], "threads", 2),
        "out": (["--out", "o"], "out_dir", Path("o")),
        "plots": (["--no-plots"], "plots", False),
    }
    options = {p.name for p in verify.params if isinstance(p, click.Option)}
    assert options == set(cases)
    default = config_from_params(verify.make_context("verify", ["run"]).params, progress=False)
    assert default == VerifyConfig(run_dir=Path("run"), progress=False)
    for name, (args, field, value) in cases.items():
        config = config_from_params(verify.make_context("verify", ["run", *args]).params, progress=False)
        assert getattr(config, field) == value, name
        assert getattr(default, field) != value, name
