"""``edgexfer bench`` on CPU: real export (float, uint8-input, INT8 with calibration images), real builds,
real ONNX Runtime sessions, at a small input size so it stays fast."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgexfer.manifest import Manifest

CALIBRATION = Path(__file__).resolve().parents[2] / "calibration" / "fashion-mnist"


def _bench_args(tmp_path: Path, *extra: str, batch: str = "1,2"):
    return (
        "-q",
        "bench",
        "--model",
        "resnet18",
        "--size",
        "64",
        "--backend",
        "torch,onnxruntime",
        "--precision",
        "fp32,int8",
        "--batch",
        batch,
        "--min-time",
        "0.05",
        "--min-iterations",
        "6",
        "--work-dir",
        str(tmp_path / "work"),
        "--out",
        str(tmp_path / "results"),
        "--machine-name",
        "testbox",
        "--calibration",
        str(CALIBRATION),
        *extra,
    )


@pytest.mark.slow
def test_bench_matrix_writes_results_and_reuses_artifacts(tmp_path, cli_runner):
    code, out, err = cli_runner(*_bench_args(tmp_path))
    assert code == 0, err
    assert "results: " in out and "next: " in out
    data = json.loads((tmp_path / "results" / "testbox.json").read_text())
    assert data["schema_version"] == 1 and data["kind"] == "edgexfer-bench"
    assert data["weights_note"].startswith("random initialisation")
    machine = data["machine"]
    assert machine["threads_used"] == data["threads"] >= 1
    assert machine["cpu"] and "versions" in machine and "onnxruntime" in machine["versions"]
    rows = {(r["backend"], r["precision"], r["batch"]): r for r in data["results"]}
    assert set(rows) == {
        (b, p, n)
        for b, p in (("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"))
        for n in (1, 2)
    }
    for (_backend, _precision, batch), row in rows.items():
        assert row["status"] == "ok", row
        lat, e2e, host = row["latency"], row["e2e"], row["host"]
        assert lat["batch_size"] == batch and lat["n"] >= 6 and 0 < lat["p50_ms"] <= lat["p99_ms"]
        assert e2e["n"] >= 6 and host["n"] >= 6
        # an end-to-end call is the host's decode + preprocess plus the model call: it takes longer than the
        # host part, compared at the minimum, the sample least disturbed by other load (the model call alone
        # is not compared: on a busy machine torch's OpenMP threads time erratically)
        assert e2e["min_ms"] > host["min_ms"]
        assert row["speedup_vs_torch"] > 0
    assert rows[("torch", "fp32", 1)]["speedup_vs_torch"] == 1.0
    # The ONNX artifacts take uint8 pixels (preprocessing folded in); torch takes normalised floats.
    assert rows[("onnxruntime", "int8", 1)]["input"] == "uint8 NHWC"
    assert rows[("onnxruntime", "fp32", 1)]["input"] == "uint8 NHWC"
    assert rows[("torch", "fp32", 1)]["input"] == "float32 NCHW"
    assert any(h.startswith("resnet18 batch 1: fastest INT8 is onnxruntime at ") for h in data["headlines"])
    assert not any("target" in h for h in data["headlines"])  # facts, not this project's goals
    table = (tmp_path / "results" / "testbox.md").read_text()
    assert "| resnet18 | onnxruntime | int8 | uint8 NHWC | 1 |" in table
    assert (tmp_path / "results" / "testbox.png").read_bytes()[:4] == b"\x89PNG"
    # The artifacts were made by the real stages and recorded in the model's run directory.
    run = tmp_path / "work" / "resnet18-64"
    manifest = Manifest.open(run)
    assert manifest.get("onnx_int8_cpu").stage == "export"
    assert manifest.get("onnxruntime_int8").config["source"] == "onnx_int8_cpu_uint8"
    assert manifest.get("onnxruntime_fp32").config["source"] == "onnx_uint8"
    built = {
        name: manifest.get(name).sha256 for name in ("onnxruntime_int8", "onnxruntime_fp32", "onnx_int8_cpu")
    }
    created = manifest.get("onnxruntime_int8").created
    # A second run reuses the fresh artifacts instead of exporting and building again.
    code, out, err = cli_runner(*_bench_args(tmp_path, "--no-e2e", batch="1"))
    assert code == 0, err
    manifest = Manifest.open(run)
    assert {name: manifest.get(name).sha256 for name in built} == built
    assert manifest.get("onnxruntime_int8").created == created
    second = json.loads((tmp_path / "results" / "testbox.json").read_text())
    assert {r["batch"] for r in second["results"]} == {1} and "e2e" not in second["results"][0]


def test_bench_rejects_bad_options_in_one_line(tmp_path, cli_runner):
    code, out, err = cli_runner("bench", "--model", "resnet18", "--precision", "int4", "--out", str(tmp_path))
    assert (
        code == 2 and err.strip() == "edgexfer: error: unknown precision 'int4'; choose from fp32, fp16, int8"
    )
    code, out, err = cli_runner("bench", "--batch", "0", "--out", str(tmp_path))
    assert code == 2 and "batch sizes must be integers >= 1" in err
    code, out, err = cli_runner(
        "bench",
        "--model",
        "resnet181",
        "--backend",
        "onnxruntime",
        "--work-dir",
        str(tmp_path / "w"),
        "--out",
        str(tmp_path),
    )
    assert code == 2 and "unknown model 'resnet181'; did you mean resnet18" in err


def test_machine_slug_is_stable_and_file_safe():
    from edgexfer.hardware import machine_slug

    assert machine_slug({"cpu": "Intel(R) Xeon(R) Processor", "physical_cores": 2}) == "intel-xeon-2c"
    assert (
        machine_slug({"cpu": "ARMv8", "physical_cores": 6, "jetson": {"module": "NVIDIA Jetson Orin Nano"}})
        == "nvidia-jetson-orin-nano-6c"
    )
    assert (
        machine_slug(
            {
                "cpu": "AMD Ryzen 9 7950X 16-Core Processor",
                "physical_cores": 16,
                "gpus": [{"name": "NVIDIA GeForce RTX 4090"}],
            }
        )
        == "amd-ryzen-9-7950x-16-core-nvidia-geforce-rtx-4090-16c"
    )


def _ok(backend, precision, batch, p50, e2e=None, model="resnet18"):
    row = {"model": model, "backend": backend, "precision": precision, "batch": batch, "status": "ok",
           "input": "uint8 NHWC", "latency": {"p50_ms": p50}}
    if e2e is not None:
        row.update(e2e={"p50_ms": e2e}, e2e_ratio=e2e / p50)
    return row


def test_speedups_and_headlines_state_the_measured_facts():
    """Hand-made rows with known numbers: the speed-ups and the headline lines follow from them."""
    from edgexfer.stages.bench.document import headlines
    from edgexfer.stages.bench.measure import add_speedups

    rows = [
        _ok("torch", "fp32", 1, 12.0),
        _ok("onnxruntime", "int8", 1, 3.0, e2e=4.5),
        _ok("openvino", "int8", 1, 2.0, e2e=5.0),
        _ok("torch", "fp32", 8, 80.0),
        _ok("onnxruntime", "int8", 8, 40.0),
        {"model": "resnet18", "backend": "openvino", "precision": "int8", "batch": 8, "status": "error"},
        _ok("onnxruntime", "int8", 1, 1.0, model="mobilenet_v3_large"),  # no reference: no speed-up
    ]
    add_speedups(rows)
    assert [r.get("speedup_vs_torch") for r in rows] == [1.0, 4.0, 6.0, 1.0, 2.0, None, None]
    assert headlines(rows) == [
        "resnet18 batch 1: fastest INT8 is openvino at 2.00 ms vs torch eager fp32 12.00 ms: 6.00x faster",
        "resnet18 batch 1 openvino int8 (uint8 NHWC input): end to end 5.00 ms vs model alone 2.00 ms: 2.50x",
    ]


def test_random_models_take_the_calibration_classes_or_neutral_ones(tmp_path):
    from conftest import make_image_folder
    from edgexfer.bench_pipeline import NEUTRAL_CLASSES, bench_classes
    from edgexfer.data import folder_samples
    from edgexfer.errors import DataError
    from edgexfer.stages.bench.config import BenchConfig

    labelled = make_image_folder(tmp_path / "labelled", per_class=1)
    assert bench_classes(BenchConfig(calibration=labelled, work_dir=tmp_path / "w")) == (
        ("blue", "green", "red"), labelled)
    flat = tmp_path / "flat"
    flat.mkdir()
    (labelled / "red" / "img_000.png").rename(flat / "a.png")
    classes, images = bench_classes(BenchConfig(calibration=flat, work_dir=tmp_path / "w"))
    assert classes == NEUTRAL_CLASSES and images == tmp_path / "w" / "eval-photos"
    samples = folder_samples(images, class_names=classes)  # a labelled folder the export stage can use
    assert samples.class_names == list(NEUTRAL_CLASSES) and len(samples) == 2 * len(NEUTRAL_CLASSES)
    with pytest.raises(DataError, match="calibration folder .*nope' does not exist"):
        bench_classes(BenchConfig(calibration=tmp_path / "nope", work_dir=tmp_path / "w"))


def test_uint8_int8_variant_is_checked_on_calibration_images(tmp_path, monkeypatch):
    """The INT8 variant with uint8 input is compared with its source on real images; a variant with the
    wrong normalisation folded in is refused."""
    from conftest import make_image_folder
    from edgexfer import onnxedit
    from edgexfer.errors import ParityError
    from edgexfer.stages.bench import variant

    import onnx_factory as factory

    run = factory.exported_run(tmp_path / "run", int8=True)
    images = make_image_folder(tmp_path / "images", per_class=4, size=40)
    name = variant.uint8_int8_variant(run, "onnx_int8_cpu", images)
    record = Manifest.open(run).require(name)
    checked = record.metrics["vs_float_input"]
    assert name == "onnx_int8_cpu_uint8" and checked["images"] == 12 and checked["min_cosine"] > 0.999
    assert record.inputs == {"onnx_int8_cpu": Manifest.open(run).get("onnx_int8_cpu").sha256}

    real = onnxedit.with_uint8_input

    def wrong_mean(model, preprocess, layout):
        from dataclasses import replace

        return real(model, replace(preprocess, mean=(0.0, 0.0, 0.0)), layout)

    monkeypatch.setattr(onnxedit, "with_uint8_input", wrong_mean)
    other = factory.exported_run(tmp_path / "other", int8=True)
    with pytest.raises(ParityError, match="the uint8-input variant of 'onnx_int8_cpu' differs"):
        variant.uint8_int8_variant(other, "onnx_int8_cpu", images)
    assert not Manifest.open(other).has("onnx_int8_cpu_uint8")


@pytest.mark.slow
def test_bench_a_trained_run_records_results_in_the_run(trained_run_copy, tmp_path, cli_runner):
    from edgexfer.fsutil import sha256_file
    from edgexfer.stages.build import BuildConfig, run_build
    from edgexfer.stages.export import ExportConfig, run_export

    run = trained_run_copy
    run_export(ExportConfig(run_dir=run, eval_size=16, progress=False))
    run_build(BuildConfig(run_dir=run, backend="onnxruntime", precision="fp32", progress=False))
    code, out, err = cli_runner(
        "-q",
        "bench",
        "--run",
        str(run),
        "--backend",
        "torch,onnxruntime",
        "--batch",
        "1",
        "--no-e2e",
        "--min-time",
        "0.05",
        "--min-iterations",
        "5",
        "--machine-name",
        "box",
        "--work-dir",
        str(tmp_path / "w"),
    )
    assert code == 0, err
    data = json.loads((run / "bench" / "box.json").read_text())
    assert data["weights_note"] == f"trained weights of run {run}"
    assert [(r["backend"], r["precision"], r["artifact"]) for r in data["results"]] == [
        ("torch", "fp32", "checkpoint"),
        ("onnxruntime", "fp32", "onnxruntime_fp32"),
    ]
    assert all(r["status"] == "ok" and r["model"] == "resnet18" for r in data["results"])
    manifest = Manifest.open(run)
    assert manifest.get("bench_json").sha256 == sha256_file(run / "bench" / "box.json")
    assert manifest.stage("bench")["metrics"] == {"rows": 2}


def test_busy_machine_warning_thresholds():
    from edgexfer.hardware import busy_warning

    # Idle before; at the end only the bench's own two threads: no warning.
    assert busy_warning({"usable_cpus": 2, "load_average_start": 0.3, "load_average_end": 2.4}) == []
    (line,) = busy_warning({"usable_cpus": 2, "load_average_start": 5.3, "load_average_end": 2.5})
    assert line.startswith("WARNING: the machine was busy (1-min load average 5.3 before, 2.5 after, on 2")
    assert busy_warning({"usable_cpus": 2, "load_average_start": None, "load_average_end": 3.5})


def test_every_bench_option_reaches_the_config(tmp_path):
    """Walk the command's click parameters: each one, changed from its default, changes the config."""
    from edgexfer.commands.bench import bench, config_from_params
    from edgexfer.config import to_dict

    base = bench.make_context("bench", []).params
    changes = {"model": ("resnet18,mobilenet_v3_large",), "run": str(tmp_path), "backend": ("onnxruntime",),
               "precision": ("int8",), "batch": ("2", "4"), "size": 64, "threads": 2, "uint8_input": False,
               "e2e": False, "min_time": 0.5, "min_iterations": 7, "work_dir": "w", "out": "o",
               "machine_name": "box", "calibration": "c", "mode": "throughput", "in_flight": 3,
               "decode_workers": 2, "frame": "240x320", "frame_format": "bgr"}
    assert set(changes) == set(base), "a bench option is missing from this walk"
    reference = to_dict(config_from_params(base, progress=False))
    for name, value in changes.items():
        changed = {k for k, v in to_dict(config_from_params({**base, name: value}, progress=False)).items()
                   if v != reference[k]}
        assert changed, f"--{name.replace('_', '-')} does not reach BenchConfig"
    config = config_from_params({**base, "batch": ("2,4", "8")}, progress=False)
    assert config.batch_sizes == (2, 4, 8)


@pytest.mark.slow
def test_bench_models_with_frame_also_make_and_bench_a_frame_model(tmp_path, cli_runner):
    """--frame: the random-weight model is also exported as a raw-frame model (its own run directory), built
    from it (float and INT8) and benched on frames next to the ordinary rows."""
    args = list(_bench_args(tmp_path, "--frame", "72x96", "--frame-format", "BGR", "--mode", "throughput",
                            batch="1"))
    args[args.index("--backend") + 1] = "onnxruntime"
    code, out, err = cli_runner(*args)
    assert code == 0, err
    rows = {(r["precision"], r.get("frame") is not None): r for r in
            json.loads((tmp_path / "results" / "testbox.json").read_text())["results"]}
    assert set(rows) == {("fp32", False), ("int8", False), ("fp32", True), ("int8", True)}
    for precision in ("fp32", "int8"):
        row = rows[(precision, True)]
        assert row["status"] == "ok" and row["artifact"] == f"onnxruntime_{precision}_frame"
        assert row["input"] == "uint8 72x96 bgr frame" and row["frame"] == {"height": 72, "width": 96, "format": "bgr"}
        assert row["latency"]["p50_ms"] > 0 and row["pipelined"]["images_per_s"] > 0
        assert rows[(precision, False)]["input"] == "uint8 NHWC"
    frame_run = tmp_path / "work" / "resnet18-64-frame-72x96-bgr"
    manifest = Manifest.open(frame_run)
    assert manifest.get("onnxruntime_int8_frame").config["source"] == "onnx_int8_cpu_frame"
    assert manifest.get("onnxruntime_fp32_frame").config["source"] == "onnx_frame"
    assert Manifest.open(tmp_path / "work" / "resnet18-64").has("onnx_uint8")  # the ordinary export is intact
    code, out, err = cli_runner("-q", "bench", "--run", str(frame_run), "--frame", "72x96", "--frame-format", "bgr",
                                "--batch", "1", "--min-time", "0.05", "--min-iterations", "3", "--no-e2e",
                                "--machine-name", "box", "--backend", "onnxruntime")
    assert code == 0, err  # --run --frame: the run's frame builds of that frame (and its ordinary builds)
    assert {r["artifact"] for r in json.loads((frame_run / "bench" / "box.json").read_text())["results"]} >= {
        "onnxruntime_fp32_frame", "onnxruntime_int8_frame"}
    code, out, err = cli_runner("bench", "--run", str(frame_run), "--frame", "72x96", "--out", str(tmp_path))
    assert code == 2 and "has no raw-frame build of 72x96 rgb (frame builds: 72x96 bgr)" in err
    code, out, err = cli_runner("bench", "--model", "resnet18", "--frame", "40x40", "--size", "64",
                                "--out", str(tmp_path))
    assert code == 2 and "smaller than the model's" in err
