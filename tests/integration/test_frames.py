"""Raw-frame models (``export --uint8-input --frame HxW``): the in-graph resize/crop/normalisation against
the host's Pillow path on frames of several sizes, on ONNX Runtime and OpenVINO; what a broken graph does
to the parity gate; TensorRT's uint8 rule (the strict fake parser); export end to end; predict on image
files and on a video written here with OpenCV."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import fake_trt
import onnx_factory as factory
import trt_models
from edgexfer.errors import ArtifactError, ParityError
from edgexfer.frames import FrameSpec, bgr_to_frame
from edgexfer.preprocess import Preprocess

PRE = Preprocess.imagenet(224, augment="none")


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A photo-like RGB frame: smooth colour field, hard-edged shapes (what aliasing shows on), noise."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    field = Image.fromarray(rng.integers(0, 256, (height // 40 + 2, width // 40 + 2, 3), dtype=np.uint8))
    image = field.resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(30):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(4, width // 4)), y0 + int(rng.integers(4, height // 4))
        draw.rectangle((x0, y0, x1, y1), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    pixels = np.asarray(image).astype(np.float32) + rng.normal(0, 3, (height, width, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _preprocessing(preprocess, spec):
    from onnx import helper

    from edgexfer.framegraph import frame_preprocessing_model

    return frame_preprocessing_model(preprocess, spec, "input", [helper.make_opsetid("", 17)], 8)


def _grey_levels(got: np.ndarray, want: np.ndarray, preprocess) -> float:
    return float(np.abs(got - want).max() * 255 * min(preprocess.std))


@pytest.mark.parametrize(
    "width,height,interpolation,order,bound",
    [
        (1920, 1080, "bilinear", "bgr", 1.0),  # a 1080p camera frame: 4.2x downscale, antialiasing matters
        (1080, 1920, "bilinear", "rgb", 1.0),  # portrait
        (1280, 720, "bicubic", "rgb", 3.0),
        (640, 480, "bilinear", "bgr", 1.0),
        (300, 240, "bilinear", "rgb", 1.0),  # shorter side below resize_size: an upscale
    ],
)
def test_frame_graph_matches_the_host_on_onnxruntime_and_openvino(width, height, interpolation, order, bound):
    """Pillow's resize + crop + normalise vs the graph, in grey levels, on both CPU runtimes."""
    import onnxruntime as ort

    from edgexfer.framegraph import host_reference

    preprocess = PRE.with_(interpolation=interpolation)
    spec = FrameSpec(height, width, order)
    model = _preprocessing(preprocess, spec)
    rgb = photo(width, height, seed=width)
    frame = np.ascontiguousarray(rgb[:, :, ::-1]) if order == "bgr" else rgb
    want = host_reference(frame, preprocess, order)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": frame[None]})[0][0]
    assert got.shape == (3, 224, 224)
    assert _grey_levels(got, want, preprocess) <= bound + 0.01  # float rounding of the normalisation
    # most pixels identical, the others one grey level off (Pillow rounds between its two passes)
    assert np.mean(np.abs(got - want)) * 255 * min(preprocess.std) < 0.25
    # an unfiltered resize (what ONNX Resize does without antialias) is far off on a 4x downscale
    if width == 1920:
        assert _grey_levels(want, _nearest_unfiltered(frame, preprocess, order), preprocess) > 20
    ov = pytest.importorskip("openvino")
    compiled = ov.Core().compile_model(ov.Core().read_model(model.SerializeToString()), "CPU")
    got_ov = compiled(frame[None])[compiled.output(0)][0]
    assert _grey_levels(got_ov, want, preprocess) <= bound + 0.01


def _nearest_unfiltered(frame, preprocess, order):
    from PIL import Image

    from edgexfer.framegraph import host_reference

    rgb = frame[:, :, ::-1] if order == "bgr" else frame
    image = Image.fromarray(np.ascontiguousarray(rgb))
    crop = image.resize((preprocess.size, preprocess.size), Image.NEAREST, box=preprocess.crop_box(*image.size))
    return host_reference(np.asarray(crop)[:, :, ::-1] if order == "bgr" else np.asarray(crop),
                          preprocess.with_(resize_size=preprocess.size), order)


# ---- the parity gate catches a broken graph --------------------------------------------------------
@pytest.fixture(scope="module")
def colour(tmp_path_factory):
    root = tmp_path_factory.mktemp("colour")
    return factory.colour_model(root / "colour.onnx", size=32)


def _frame_variant(float_path: Path, out: Path, preprocess, spec) -> Path:
    import onnx

    from edgexfer.onnxedit import with_frame_input

    onnx.save(with_frame_input(onnx.load(str(float_path)), preprocess, spec), str(out))
    return out


def _photos(count=6):
    from PIL import Image

    return [Image.fromarray(photo(200 + 40 * i, 150 + 30 * i, seed=i)) for i in range(count)]


def test_a_broken_frame_graph_fails_the_parity_gate(colour, tmp_path, monkeypatch):
    """The gate passes the real graph and fails one with the wrong channel order, no crop or another mean
    (each broken by hand here), by tens of grey levels."""
    from edgexfer.stages.export.frame_models import LOGIT_TOLERANCE, frame_parity

    preprocess = Preprocess(size=32, resize_size=36, augment="none")
    spec = FrameSpec(120, 160, "bgr")
    images = _photos()

    def parity(path):
        return frame_parity(colour, path, preprocess, spec, images, 8, LOGIT_TOLERANCE["fp32"], "frame model")

    good = parity(_frame_variant(colour, tmp_path / "good.onnx", preprocess, spec))
    assert good["max_grey_levels"] <= 1.01 and good["min_cosine"] > 0.9999 and good["top1_agreement"] == 1.0
    wrong_order = _frame_variant(colour, tmp_path / "rgb.onnx", preprocess, FrameSpec(120, 160, "rgb"))
    wrong_mean = _frame_variant(colour, tmp_path / "mean.onnx", preprocess.with_(mean=(0.406, 0.456, 0.485)), spec)
    with monkeypatch.context() as patch:  # resample the whole frame to size x size: no centre crop
        patch.setattr(Preprocess, "crop_box", lambda self, w, h: (0.0, 0.0, float(w), float(h)))
        no_crop = _frame_variant(colour, tmp_path / "nocrop.onnx", preprocess, spec)
    for broken in (wrong_order, wrong_mean, no_crop):
        with pytest.raises(ParityError, match=r"grey levels; bound 3"):
            parity(broken)


# ---- TensorRT: uint8 only into a Cast ----------------------------------------------------------------
def test_tensorrt_parses_the_frame_models_and_refuses_uint8_before_the_cast(tmp_path):
    """The float and the symmetric-INT8 frame models build on the strict fake (8.6, 10.x); the same graph
    with a Slice, a Transpose or a Resize moved in front of the Cast is refused as real TensorRT does."""
    import onnx
    from onnx import helper

    from edgexfer.backends.tensorrt import build_defaults
    from edgexfer.backends.trt_build import build_engine
    from edgexfer.onnxedit import with_frame_input

    models = trt_models.make_models(tmp_path / "models")
    preprocess = Preprocess(size=32, resize_size=36, augment="none")
    spec = FrameSpec(96, 128, "bgr")
    machine = {"gpu": "Orin", "compute_capability": "8.7", "l4t": "36.3", "jetpack": "6.0", "driver": "12.2"}
    for source, precision in (("float", "fp16"), ("int8_trt", "int8")):
        path = tmp_path / f"{source}_frame.onnx"
        model = with_frame_input(onnx.load(str(models[source])), preprocess, spec)
        onnx.save(model, str(path))
        for version in ("8.6.1", "10.3.0"):
            trt = fake_trt.make_fake_trt(version)
            out = tmp_path / f"{source}_{version}"
            out.mkdir()
            build_engine(trt, path, precision, out, {}, dict(machine, tensorrt=version), build_defaults())
            engine = trt.log["built"][-1]
            assert engine["inputs"][0]["dtype"] == "UINT8" and list(engine["inputs"][0]["shape"][1:]) == [96, 128, 3]
            assert trt.log["errors"] == []
    float_frame = onnx.load(str(tmp_path / "float_frame.onnx"))
    cast = next(n for n in float_frame.graph.node if n.op_type == "Cast")
    for op in ("Slice", "Transpose", "Resize"):
        wrong = onnx.ModelProto()
        wrong.CopyFrom(float_frame)
        nodes = list(wrong.graph.node)
        first = nodes.index(next(n for n in nodes if n.name == cast.name))
        early = {
            "Slice": helper.make_node("Slice", ["input", "s0", "s1", "s2"], ["early"], name="early"),
            "Transpose": helper.make_node("Transpose", ["input"], ["early"], name="early", perm=[0, 1, 2, 3]),
            "Resize": helper.make_node("Resize", ["input", "", "rs"], ["early"], name="early", mode="nearest"),
        }[op]
        wrong.graph.initializer.extend([
            onnx.numpy_helper.from_array(np.array([0], np.int64), "s0"),
            onnx.numpy_helper.from_array(np.array([96], np.int64), "s1"),
            onnx.numpy_helper.from_array(np.array([1], np.int64), "s2"),
            onnx.numpy_helper.from_array(np.ones(4, np.float32), "rs"),
        ])
        wrong.graph.node[first].input[0] = "early"
        wrong.graph.node.insert(first, early)
        path = tmp_path / f"wrong_{op}.onnx"
        onnx.save(wrong, str(path))
        out = tmp_path / f"wrong_{op}"
        out.mkdir()
        with pytest.raises(ArtifactError, match=f"UINT8 tensor 'input' cannot feed {op}"):
            build_engine(fake_trt.make_fake_trt("10.3.0"), path, "fp16", out, {}, dict(machine, tensorrt="10.3.0"),
                         build_defaults())


# ---- export end to end -----------------------------------------------------------------------------
@pytest.mark.slow
def test_export_writes_checked_frame_models_for_float_and_int8(tmp_path):
    import onnx

    import qdq_audit
    from conftest import make_image_folder, make_run_dir
    from edgexfer.manifest import Manifest
    from edgexfer.onnxmeta import read_metadata
    from edgexfer.quant import rules
    from edgexfer.stages.export import ExportConfig, run_export

    run = make_run_dir(tmp_path / "run", size=32)
    images = make_image_folder(tmp_path / "images", per_class=4, size=90, seed=5)
    result = run_export(ExportConfig(run_dir=run, uint8_input=True, frame="120x160", frame_format="BGR", int8=True,
                                     target="tensorrt", calib=images, calib_size=12, calib_method="minmax",
                                     eval_data=images, eval_size=12, parity_images=12, progress=False,
                                     shared_cache=False))
    assert {"onnx_frame", "onnx_int8_tensorrt_frame"} <= set(result.paths)
    manifest = Manifest.open(run)
    for name, precision in (("onnx_frame", "fp32"), ("onnx_int8_tensorrt_frame", "int8")):
        record = manifest.require(name)
        assert record.config["frame"] == "120x160" and record.config["frame_format"] == "bgr"
        m = record.metrics
        assert m["images"] == 12 and m["max_grey_levels"] <= 1.01 and m["top1_agreement"] >= 0.9
        assert m["frame"] == {"height": 120, "width": 160, "format": "bgr"}
        meta = read_metadata(result.paths[name])
        assert (meta.input_format, meta.extra["frame"], meta.precision) == ("frame_bgr", "120x160", precision)
    assert set(manifest.get("onnx_int8_tensorrt_frame").inputs) == {"checkpoint", "onnx_int8_tensorrt"}
    int8_frame = onnx.load(str(result.paths["onnx_int8_tensorrt_frame"]))
    assert rules.check_rules(int8_frame, rules.QdqRules.tensorrt()) == []
    assert qdq_audit.tensorrt_problems(int8_frame) == []
    first = int8_frame.graph.node[0]
    assert (first.op_type, first.input[0]) == ("Cast", "input")  # TensorRT: uint8 goes into a Cast first


# ---- predict ---------------------------------------------------------------------------------------
@pytest.fixture
def colour_frame_model(colour, tmp_path):
    """The colour classifier behind a 120x160 BGR frame input, with the export's metadata."""
    import onnx

    from edgexfer.onnxedit import with_frame_input
    from edgexfer.onnxmeta import OnnxMeta, read_metadata, set_metadata

    meta = read_metadata(colour)
    spec = FrameSpec(120, 160, "bgr")
    model = with_frame_input(onnx.load(str(colour)), meta.preprocess, spec)
    set_metadata(model, OnnxMeta(arch="colour", class_names=meta.class_names, preprocess=meta.preprocess,
                                 input_format="frame_bgr", extra={"frame": "120x160"}))
    path = tmp_path / "colour_frame.onnx"
    onnx.save(model, str(path))
    return path


def _square(colour_rgb, width, height):
    pixels = np.full((height, width, 3), 30, np.uint8)
    pixels[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = colour_rgb
    return pixels


def test_predict_takes_image_files_into_a_frame_model(colour_frame_model, tmp_path, cli_runner):
    """Files of other sizes become 120x160 frames (cover + centre crop); the frame size is exact as is."""
    from PIL import Image

    from edgexfer.frames import load_frame

    files = []
    for name, rgb, size in (("red", (220, 30, 30), (400, 300)), ("green", (30, 200, 40), (160, 120)),
                            ("blue", (30, 40, 220), (90, 200))):
        files.append(tmp_path / f"{name}.png")
        Image.fromarray(_square(rgb, *size)).save(files[-1])
    spec = FrameSpec(120, 160, "bgr")
    exact = load_frame(files[1], spec)
    assert np.array_equal(exact, _square((30, 200, 40), 160, 120)[:, :, ::-1])  # no resize, channels swapped
    assert load_frame(files[0], spec).shape == (120, 160, 3)
    code, out, err = cli_runner("predict", str(colour_frame_model), *map(str, files), "--jsonl", "-k", "1")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["top"][0]["class"] for line in lines] == ["red", "green", "blue"]


def _write_video(path: Path, colours, size=(320, 240)) -> Path:
    cv2 = pytest.importorskip("cv2")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, size)
    assert writer.isOpened()
    for rgb in colours:
        writer.write(np.ascontiguousarray(_square(rgb, *size)[:, :, ::-1]))  # OpenCV writes BGR
    writer.release()
    return path


@pytest.mark.parametrize("frame_model", [True, False])
def test_predict_video_streams_one_result_per_frame(frame_model, colour, colour_frame_model, tmp_path, cli_runner):
    """Frames of a video written here (MJPG .avi, 320x240) through the pipelined predict: in order, one JSON
    line each, right class, for the frame model (resized to 120x160) and the plain float model alike."""
    reds, greens, blues = [(220, 30, 30)] * 3, [(30, 200, 40)] * 2, [(30, 40, 220)] * 4
    video = _write_video(tmp_path / "clip.avi", reds + greens + blues)
    model = colour_frame_model if frame_model else colour
    code, out, err = cli_runner("predict", str(model), "--video", str(video), "--jsonl", "-k", "1",
                                "--batch-size", "4", "--workers", "2")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["frame"] for line in lines] == list(range(9))
    assert [line["top"][0]["class"] for line in lines] == ["red"] * 3 + ["green"] * 2 + ["blue"] * 4
    assert lines[4]["image"] == f"{video}#4" and "predicted 9 image(s)" in err


def test_bgr_frames_from_opencv_reach_the_model_in_its_channel_order():
    bgr = np.zeros((120, 160, 3), np.uint8)
    bgr[..., 0] = 200  # blue in OpenCV's order
    assert bgr_to_frame(bgr, FrameSpec(120, 160, "rgb"))[0, 0].tolist() == [0, 0, 200]
    assert bgr_to_frame(bgr, FrameSpec(120, 160, "bgr"))[0, 0].tolist() == [200, 0, 0]
    assert bgr_to_frame(bgr, FrameSpec(60, 80, "rgb")).shape == (60, 80, 3)


def test_predict_video_without_opencv_or_with_a_bad_video(colour, tmp_path, cli_runner, monkeypatch):
    (tmp_path / "junk.avi").write_bytes(b"not a video at all")
    code, _, err = cli_runner("predict", str(colour), "--video", str(tmp_path / "junk.avi"))
    assert code == 2 and "cannot open video" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli_runner("predict", str(colour), "--video", str(tmp_path / "missing.avi"))
    assert code == 2 and "does not exist" in err
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 raises ImportError, as when not installed
    code, _, err = cli_runner("predict", str(colour), "--video", "0")
    assert code == 4 and "pip install 'edgexfer[video]'" in err and len(err.strip().splitlines()) == 1


# ---- build, bench and verify of a run with raw-frame models ------------------------------------------
@pytest.mark.slow
def test_frame_builds_stand_beside_the_others_and_bench_and_verify_know_them(tmp_path, cli_runner):
    """build --source onnx_frame records <backend>_fp32_frame (its own files, smoke-checked on frames);
    bench times it on frames (model alone, end to end and pipelined from frame-size JPEGs); verify runs it
    (and onnx_frame) on frames of the held-out images."""
    from conftest import make_image_folder, make_run_dir
    from edgexfer.manifest import Manifest
    from edgexfer.stages.build import BuildConfig, run_build
    from edgexfer.stages.export import ExportConfig, run_export

    run = make_run_dir(tmp_path / "run", size=32)
    images = make_image_folder(tmp_path / "images", per_class=3, size=60, seed=3)
    run_export(ExportConfig(run_dir=run, uint8_input=True, frame="72x96", frame_format="bgr", eval_data=images,
                            eval_size=9, parity_images=9, progress=False, shared_cache=False))
    backends = ["onnxruntime"] + (["openvino"] if _has("openvino") else [])
    for backend in backends:
        run_build(BuildConfig(run_dir=run, backend=backend, precision="fp32", smoke_data=images, progress=False))
        frame = run_build(BuildConfig(run_dir=run, backend=backend, precision="fp32", source="onnx_frame",
                                      smoke_data=images, progress=False))
        assert frame.name == f"{backend}_fp32_frame" and frame.path.name.startswith(f"{backend}_fp32_frame.")
        assert frame.smoke["mean_cosine"] > 0.999
    manifest = Manifest.open(run)
    for backend in backends:  # both builds recorded, each with its own files, both fresh
        assert manifest.is_fresh(f"{backend}_fp32") and manifest.is_fresh(f"{backend}_fp32_frame")
    code, out, err = cli_runner("-q", "bench", "--run", str(run), "--backend", ",".join(backends), "--batch", "1",
                                "--min-time", "0.05", "--min-iterations", "3", "--mode", "throughput",
                                "--machine-name", "box", "--work-dir", str(tmp_path / "w"))
    assert code == 0, err
    rows = {r["artifact"]: r for r in json.loads((run / "bench" / "box.json").read_text())["results"]}
    for backend in backends:
        row = rows[f"{backend}_fp32_frame"]
        assert row["status"] == "ok" and row["input"] == "uint8 72x96 bgr frame"
        assert row["frame"] == {"height": 72, "width": 96, "format": "bgr"}
        assert row["e2e"]["p50_ms"] > 0 and row["pipelined"]["images_per_s"] > 0
        assert "frame" not in rows[f"{backend}_fp32"]
    code, out, err = cli_runner("verify", str(run), "--data", str(images), "--no-plots")
    entries = {e["name"]: e for e in json.loads((run / "verify" / "verify.json").read_text())["artifacts"]}
    for name in ["onnx_frame"] + [f"{backend}_fp32_frame" for backend in backends]:
        entry = entries[name]  # run on frames of the same images, measured next to the others
        assert entry["frame"] == {"height": 72, "width": 96, "format": "bgr"} and name in out
        assert entry["status"] in ("passed", "inconclusive") and entry["agreement"]["agreement_pct"] >= 80


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
