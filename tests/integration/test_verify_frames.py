"""verify on raw-frame models (``export --frame``): ``onnx_frame`` is verified by default, on the same held-out
images as the others, each made into a frame as predict makes it, in the model's channel order.

The model is the colour classifier (logit i = mean of channel i), so a frame fed in the wrong channel order
turns red into blue and the agreement with the float reference falls to the green third.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import onnx_factory as factory
from conftest import make_image_folder
from edgexfer.frames import FrameSpec


def _frame_run(run_dir: Path, order: str) -> Path:
    """An ONNX-only run (the float colour model is the reference) with its ``onnx_frame`` beside it."""
    import onnx

    from edgexfer.manifest import Manifest
    from edgexfer.onnxedit import with_frame_input
    from edgexfer.onnxmeta import OnnxMeta, read_metadata, set_metadata

    float_path = factory.colour_model(run_dir / "export" / "model.onnx", size=32)
    meta = read_metadata(float_path)
    spec = FrameSpec(72, 96, order)
    model = with_frame_input(onnx.load(str(float_path)), meta.preprocess, spec)
    set_metadata(model, OnnxMeta(arch="colour", class_names=meta.class_names, preprocess=meta.preprocess,
                                 input_format=spec.input_format, extra={"frame": spec.text}))
    frame_path = run_dir / "export" / f"model_frame_{spec.text}_{order}.onnx"
    onnx.save(model, str(frame_path))
    with Manifest.update(run_dir, create=True) as manifest:
        manifest.add_artifact("onnx", float_path, kind="onnx", stage="export", config={"opset": 17})
        manifest.add_artifact("onnx_frame", frame_path, kind="onnx", stage="export", inputs=["onnx"],
                              config={"frame": spec.text, "frame_format": order})
    return run_dir


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    # 60x60 squares: smaller than the 72x96 frame, so every image is scaled up to cover it, then cropped.
    return make_image_folder(tmp_path_factory.mktemp("vf") / "images", per_class=4, size=60, seed=11)


@pytest.mark.parametrize("order,cache", [("bgr", True), ("rgb", False)])
def test_verify_runs_the_frame_model_on_frames_in_its_channel_order(order, cache, images, tmp_path, monkeypatch):
    from edgexfer.stages import verify_data
    from edgexfer.stages.verify import VerifyConfig, verify_artifacts

    if not cache:  # frames decoded per batch instead of kept: the same figures
        monkeypatch.setattr(verify_data, "FRAME_CACHE_BYTES", 0)
    run = _frame_run(tmp_path / "run", order)
    result = verify_artifacts(VerifyConfig(run_dir=run, data=images, plots=False, progress=False,
                                           bootstrap_resamples=200, min_iterations=3, min_time_s=0.01,
                                           max_time_s=0.1))
    data = json.loads(result.json_path.read_text())
    (entry,) = [e for e in data["artifacts"] if e["name"] == "onnx_frame"]
    assert entry["status"] == "passed", entry["error"]
    assert entry["frame"] == {"height": 72, "width": 96, "format": order}
    assert entry["input"] == {"dtype": "uint8", "layout": "NHWC"}
    assert data["reference"]["top1"] == 100.0  # the colour model is right on every square
    # Fed in the wrong channel order, red and blue squares swap: agreement ~33%, top-1 ~33%.
    assert entry["agreement"]["agreement_pct"] == 100.0
    assert entry["accuracy"]["top1"] == 100.0
    assert entry["latency"]["p50_ms"] > 0
    report = result.report_path.read_text()
    assert f"`onnx_frame` takes raw 72x96 {order.upper()} frames" in report
    assert any(line.startswith("| `onnx_frame` | ") and "100.00" in line for line in report.splitlines())


def test_frame_inputs_are_what_predict_feeds(images, tmp_path):
    """Each frame equals predict's row for the same file (edgexfer.stream.file_row), labels in InputCache order."""
    from edgexfer import data as data_module
    from edgexfer.preprocess import Preprocess
    from edgexfer.stages.verify_data import InputCache
    from edgexfer.stream import file_row

    samples = data_module.folder_samples(images)
    indices = np.arange(0, len(samples), 2)
    cache = InputCache(samples, indices, Preprocess(size=32, resize_size=36, augment="none"), progress=False)
    spec = FrameSpec(72, 96, "bgr")
    frames = cache.frames(spec)
    assert cache.frames(spec) is frames  # made once per frame size
    batch = frames.batch(1, 4, np.uint8, "NHWC")
    assert batch.shape == (3, 72, 96, 3) and batch.dtype == np.uint8
    for row, index in enumerate(indices[1:4]):
        np.testing.assert_array_equal(batch[row], file_row(samples.paths[index], None, spec, np.uint8, "NHWC"))
    from edgexfer.errors import ArtifactError

    with pytest.raises(ArtifactError, match="uint8 NHWC"):
        frames.batch(0, 2, np.float32, "NCHW")
