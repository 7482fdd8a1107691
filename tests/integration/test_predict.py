"""`edgexfer predict` from a run directory or an artifact file, on real ONNX Runtime / OpenVINO / torch."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import onnx_factory as factory
from conftest import CLASS_COLOURS, make_image_folder
from edgexfer.stages.build import BuildConfig, run_build


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """An exported run with onnxruntime_int8 and openvino_fp32 built, plus images of 3 classes."""
    root = tmp_path_factory.mktemp("predict")
    run = factory.exported_run(root / "run", int8=True)
    images = make_image_folder(root / "images", per_class=2, size=40, seed=3)
    for backend, precision in (("onnxruntime", "int8"), ("openvino", "fp32")):
        run_build(
            BuildConfig(
                run_dir=run,
                backend=backend,
                precision=precision,
                smoke_data=images,
                smoke_images=3,
                progress=False,
            )
        )
    return {"run": run, "images": images, "files": sorted(images.rglob("*.png"))}


@pytest.fixture(scope="module")
def trained_int8(trained_run, tmp_path_factory):
    """The trained run (100% on its 48 validation images) exported to INT8 by the real export stage and
    built for ONNX Runtime int8: an INT8 model whose predictions mean something."""
    from edgexfer.data import samples_for_run
    from edgexfer.stages.export import ExportConfig, run_export

    run = shutil.copytree(trained_run, tmp_path_factory.mktemp("predict_trained") / "run")
    run_export(ExportConfig(run_dir=run, int8=True, target="cpu", calib_size=48, calib_method="minmax",
                            eval_size=48, parity_images=8, progress=False))
    run_build(BuildConfig(run_dir=run, backend="onnxruntime", precision="int8", progress=False))
    samples = samples_for_run(run, "val")
    pick = list(range(0, len(samples), 4))  # 12 images, 4 per class
    return {"run": run, "files": [samples.paths[i] for i in pick],
            "labels": [samples.class_names[samples.labels[i]] for i in pick]}


def _torch_probabilities(run, files):
    """Softmax of the checkpoint's torch logits: the reference for every artifact."""
    import torch

    from edgexfer.checkpoint import load_checkpoint
    from edgexfer.preprocess import load_image

    model, meta = load_checkpoint(run / "finetune" / "best.pt")
    batch = np.stack([meta.preprocess.to_array(load_image(f)) for f in files])
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(batch)), dim=1).numpy()


def _scores(document, class_names):
    """(images, classes) probabilities from a ``--json`` document predicted with every class in top-k."""
    return np.array([[{t["class"]: t["score"] for t in item["top"]}[c] for c in class_names]
                     for item in document["predictions"]])


def test_run_dir_uses_the_best_built_artifact_and_json_is_complete(cli_runner, built):
    code, out, err = cli_runner("predict", str(built["run"]), *map(str, built["files"]), "--json", "-k", "2")
    assert code == 0, err
    document = json.loads(out)  # stdout holds exactly one JSON document
    assert document["artifact"] == "onnxruntime_int8" and document["backend"] == "onnxruntime"
    assert document["path"] == str(built["run"] / "build" / "onnxruntime_int8.onnx")
    assert [p["image"] for p in document["predictions"]] == [str(f) for f in built["files"]]
    for item in document["predictions"]:
        top = item["top"]
        assert [t["index"] for t in top] == [list(CLASS_COLOURS).index(t["class"]) for t in top]
        assert len(top) == 2 and top[0]["score"] >= top[1]["score"] and top[0]["score"] + top[1]["score"] < 1
    assert "next: edgexfer verify" in err


def test_int8_predictions_match_the_float_model_on_a_trained_run(cli_runner, trained_int8):
    run, files = trained_int8["run"], trained_int8["files"]
    code, out, err = cli_runner("predict", str(run), *files, "--json", "-k", "3")
    assert code == 0, err
    document = json.loads(out)
    assert document["artifact"] == "onnxruntime_int8"
    from edgexfer.onnxmeta import read_metadata

    classes = read_metadata(run / "export" / "model.onnx").class_names
    int8 = _scores(document, classes)
    reference = _torch_probabilities(run, files)
    # The INT8 model makes the float model's decisions (the right ones) with nearly its confidence; a
    # model from other weights, or fed other pixels, does not.
    assert [classes[i] for i in int8.argmax(1)] == [classes[i] for i in reference.argmax(1)] == trained_int8["labels"]
    # confident, far from uniform (1/3): a near-uniform pair of models cannot pass the 0.05 bound below
    assert reference.max(1).min() > 0.6
    assert np.abs(int8 - reference).max() < 0.05


def test_float_onnx_matches_torch_exactly_and_text_output(cli_runner, built):
    code, out, _ = cli_runner(
        "predict", str(built["run"]), str(built["images"]), "--artifact", "onnx", "-k", "3"
    )
    assert code == 0
    lines = [line for line in out.splitlines() if line.endswith(tuple("0123456789"))]
    assert len(lines) == len(built["files"])  # the folder expanded to its 6 images
    reference = _torch_probabilities(built["run"], built["files"])
    code, out, _ = cli_runner(
        "predict", str(built["run"]), *map(str, built["files"]), "--artifact", "onnx", "--json", "-k", "3"
    )
    for row, item in zip(reference, json.loads(out)["predictions"]):
        for entry in item["top"]:
            assert entry["score"] == pytest.approx(float(row[entry["index"]]), abs=1e-4)
        assert item["top"][0]["index"] == int(row.argmax())


@pytest.mark.parametrize(
    "relative, backend",
    [
        ("export/model.onnx", "onnxruntime"),
        ("build/openvino_fp32.xml", "openvino"),
        ("finetune/best.pt", "torch"),
    ],
)
def test_direct_artifact_paths(cli_runner, built, relative, backend):
    files = list(map(str, built["files"][:3]))
    code, out, err = cli_runner("predict", str(built["run"] / relative), *files, "--json")
    assert code == 0, err
    document = json.loads(out)
    assert document["backend"] == backend
    reference = _torch_probabilities(built["run"], built["files"][:3])
    got = [item["top"][0]["index"] for item in document["predictions"]]
    assert got == [int(i) for i in reference.argmax(1)]


def _numbered_copies(files, folder, count):
    """``count`` image files named 00.png, 01.png ... (cycling over ``files``): distinct paths in order."""
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for index in range(count):
        copy = folder / f"{index:02d}.png"
        shutil.copyfile(files[index % len(files)], copy)
        copies.append(copy)
    return copies


def _record(monkeypatch, events, decode_delay=None, infer_delay=0.0):
    """Record decode (path, thread) and infer events; optionally slow either down."""
    import threading
    import time

    import edgexfer.preprocess
    from edgexfer.backends.onnxruntime import OnnxRuntimeRunner

    load_image, infer = edgexfer.preprocess.load_image, OnnxRuntimeRunner.infer

    def loading(path, fit=None):
        if decode_delay:
            time.sleep(decode_delay(path))
        events.append(("decode", path.name, threading.current_thread().name))
        return load_image(path, fit=fit)

    def inferring(self, batch):
        events.append(("infer start", len(batch)))
        time.sleep(infer_delay)
        out = infer(self, batch)
        events.append(("infer end", len(batch)))
        return out

    monkeypatch.setattr(edgexfer.preprocess, "load_image", loading)
    monkeypatch.setattr(OnnxRuntimeRunner, "infer", inferring)


def test_workers_0_decodes_batch_by_batch_on_the_inference_thread(built, monkeypatch):
    from edgexfer.stages.predict import PredictConfig, run_predict

    events = []
    _record(monkeypatch, events)
    files = built["files"]  # 6 images
    result = run_predict(PredictConfig(target=built["run"], images=tuple(files), artifact="onnx", batch_size=4,
                                       workers=0))
    kinds = [e[0] if e[0] != "decode" else "decode" for e in events if e[0] != "infer end"]
    assert kinds == ["decode"] * 4 + ["infer start"] + ["decode"] * 2 + ["infer start"]
    assert {e[2] for e in events if e[0] == "decode"} == {"MainThread"}
    assert [p["image"] for p in result.predictions] == [str(f) for f in files]


def test_decode_threads_overlap_inference_and_results_keep_input_order(built, monkeypatch, tmp_path):
    from edgexfer.stages.predict import PredictConfig, run_predict

    files = _numbered_copies(built["files"], tmp_path / "imgs", 24)
    reference = run_predict(PredictConfig(target=built["run"], images=tuple(files), artifact="onnx", workers=0))
    events = []
    # Later files decode faster, so threads finish them out of order; inference is slow enough to overlap.
    _record(monkeypatch, events, decode_delay=lambda path: 0.002 * (24 - int(path.stem)), infer_delay=0.05)
    result = run_predict(PredictConfig(target=built["run"], images=tuple(files), artifact="onnx", batch_size=2,
                                       workers=3, in_flight=2))
    assert [p["image"] for p in result.predictions] == [str(f) for f in files]
    assert result.predictions == reference.predictions  # same pixels, same scores, same order
    assert result.in_flight == 2 and reference.in_flight == 1  # --workers 0: one batch after another
    decodes = [e for e in events if e[0] == "decode"]
    assert all(e[2].startswith("edgexfer-prefetch") for e in decodes)
    assert [e[1] for e in decodes] != sorted(e[1] for e in decodes)  # really finished out of order
    # Two batches are inferred at once (ONNX Runtime's concurrent runs through infer_stream) ...
    running = most = 0
    for event in events:
        running += {"infer start": 1, "infer end": -1}.get(event[0], 0)
        most = max(most, running)
    assert most == 2
    # ... decoding goes on while a batch is inferred ...
    first_start, first_end = events.index(("infer start", 2)), events.index(("infer end", 2))
    assert any(e[0] == "decode" for e in events[first_start:first_end])
    # ... but at most (2 in flight + the 3 batches of the decode window) x 2 images ahead of the images
    # inference has started on.
    taken = 0
    for position, event in enumerate(events):
        if event[0] == "infer start":
            taken += event[1]
            assert sum(e[0] == "decode" for e in events[:position]) <= taken + 2 * (2 + 3)
    assert result.images == 24 and result.images_per_s > 0


def test_glob_and_list_file_inputs_and_jsonl(cli_runner, built, tmp_path, monkeypatch):
    files = _numbered_copies(built["files"], tmp_path / "imgs", 5)
    monkeypatch.chdir(tmp_path)
    listing = tmp_path / "list.txt"
    listing.write_text("# three of them\nimgs/03.png\n\nimgs/01.png\n" + str(files[4]) + "\n")
    code, out, err = cli_runner("predict", str(built["run"]), str(tmp_path / "imgs" / "0[0-2].png"),
                                "--list", str(listing), "--jsonl", "-k", "1", "--workers", "2")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]  # stdout is JSON lines only
    assert [item["image"] for item in lines] == [str(files[i]) for i in (0, 1, 2)] + [
        "imgs/03.png", "imgs/01.png", str(files[4])]
    assert all(len(item["top"]) == 1 for item in lines)
    assert "predicted 6 image(s)" in err and "images/s" in err
    code, out, err = cli_runner("predict", str(built["run"]), str(files[0]), "--json")
    assert json.loads(out)["images"] == 1 and json.loads(out)["images_per_s"] > 0


@pytest.mark.parametrize("workers", ["0", "3"])
def test_corrupt_image_in_the_middle_with_decode_threads(cli_runner, built, tmp_path, workers):
    files = _numbered_copies(built["files"], tmp_path / "imgs", 6)
    files[3].write_bytes(files[3].read_bytes()[:60])  # header reads, pixel data does not
    args = ("predict", str(built["run"]), *map(str, files), "--batch-size", "2", "--workers", workers)
    for output in ((), ("--json",)):  # nothing on stdout: no partial document
        code, out, err = cli_runner(*args, *output)
        assert (code, out) == (2, "") and "03.png" in err and "corrupt or truncated" in err, err
        assert err.count("\n") == 1
    code, out, err = cli_runner(*args, "--jsonl")  # the batches before the bad one were streamed already
    assert code == 2 and "corrupt or truncated" in err and err.count("\n") == 1
    assert [json.loads(line)["image"] for line in out.splitlines()] == [str(files[0]), str(files[1])]


def test_non_image_and_corrupt_image_are_one_line_errors(cli_runner, built, tmp_path, monkeypatch):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(built["files"][0].read_bytes()[:60])
    for bad, words in (
        (text, "is not an image PIL can read"),
        (truncated, "corrupt or truncated"),
        (tmp_path / "missing.png", "does not exist"),
    ):
        code, out, err = cli_runner("predict", str(built["run"]), str(built["files"][0]), str(bad))
        assert code == 2, (bad, err)
        assert words in err and "Traceback" not in err and err.count("\n") == 1
        assert out == ""
    # Corrupt data in a later batch: the same one line, and no partial output.
    code, out, err = cli_runner("predict", str(built["run"]), *map(str, built["files"]), str(truncated),
                                "--batch-size", "2")
    assert (code, out) == (2, "") and "corrupt or truncated" in err and err.count("\n") == 1
    # A missing file or a non-image is found before any model is loaded.
    from edgexfer.backends.onnxruntime import OnnxRuntimeRunner

    def no_loading(self):
        raise AssertionError("the model was loaded before the images were checked")

    monkeypatch.setattr(OnnxRuntimeRunner, "activate", no_loading)
    for bad, words in ((text, "is not an image PIL can read"), (tmp_path / "missing.png", "does not exist")):
        code, out, err = cli_runner("predict", str(built["run"]), *map(str, built["files"]), str(bad))
        assert code == 2 and words in err, err


def test_bad_targets(cli_runner, built, tmp_path):
    image = str(built["files"][0])
    code, _, err = cli_runner("predict", str(built["run"]), image, "--artifact", "tensorrt_fp16")
    assert code == 2 and "has no artifact 'tensorrt_fp16'" in err
    odd = tmp_path / "model.tflite"
    odd.write_bytes(b"x")
    code, _, err = cli_runner("predict", str(odd), image)
    assert code == 2 and "cannot tell which runtime runs 'model.tflite'" in err
    code, _, err = cli_runner("predict", str(built["run"]), image, "--backend", "coreml")
    assert code == 2 and "unknown backend 'coreml'" in err


def test_engine_file_without_tensorrt_is_exit_4(cli_runner, built, tmp_path):
    try:
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    from edgexfer.backends.sidecar import onnx_metadata_props, write_sidecar

    engine = tmp_path / "tensorrt_fp16.engine"
    engine.write_bytes(b"serialized engine from another machine")
    write_sidecar(
        engine,
        "tensorrt",
        "fp16",
        onnx_metadata_props(built["run"] / "export" / "model.onnx"),
        {"tensorrt": "10.3.0", "gpu": "Orin", "compute_capability": "8.7"},
    )
    code, _, err = cli_runner("predict", str(engine), str(built["files"][0]))
    assert code == 4 and "backend 'tensorrt' is not usable here" in err


def test_stale_built_artifact_is_skipped_for_the_next_best(built, tmp_path):
    from edgexfer.stages.predict import PredictConfig, run_predict

    run = tmp_path / "run"
    shutil.copytree(built["run"], run)
    path = run / "build" / "onnxruntime_int8.onnx"
    path.write_bytes(path.read_bytes() + b"\0")  # now stale: its hash no longer matches the manifest
    result = run_predict(PredictConfig(target=run, images=(built["files"][0],)))
    assert result.artifact == "openvino_fp32"


def test_provider_option(cli_runner, built):
    image = str(built["files"][0])
    code, out, err = cli_runner(
        "predict", str(built["run"]), image, "--artifact", "onnx", "--provider", "cpu", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["backend"] == "onnxruntime"
    code, _, err = cli_runner(
        "predict", str(built["run"]), image, "--artifact", "openvino_fp32", "--provider", "cuda"
    )
    assert code == 2 and "--provider chooses an execution provider, which backend 'openvino'" in err
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        code, _, err = cli_runner(
            "predict", str(built["run"]), image, "--artifact", "onnx", "--provider", "cuda"
        )
        assert code == 4 and "'cuda' is not in this onnxruntime build" in err
