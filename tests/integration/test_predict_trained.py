"""On a really fine-tuned run: export -> build (smoke check on the run's own val split) -> predict,
with the predicted classes checked against the labels."""

from __future__ import annotations

import json

import pytest

from edgexfer.manifest import Manifest


@pytest.mark.slow
def test_trained_run_build_and_predict_are_accurate(trained_run_copy, cli_runner):
    from edgexfer.data import samples_for_run
    from edgexfer.stages.export import ExportConfig, run_export

    run = trained_run_copy
    run_export(
        ExportConfig(
            run_dir=run,
            int8=True,
            target="cpu",
            calib_size=48,
            calib_method="minmax",
            eval_size=48,
            parity_images=8,
            progress=False,
        )
    )
    for backend in ("onnxruntime", "openvino"):
        code, _, err = cli_runner("build", str(run), "--backend", backend, "--precision", "int8")
        assert code == 0, err
        smoke = Manifest.open(run).get(f"{backend}_int8").metrics["smoke"]
        assert smoke["images"] == 8 and smoke["top1_agreement"] >= 7 / 8 and smoke["mean_cosine"] > 0.98

    samples = samples_for_run(run, "val")
    paths = list(samples.paths)
    for artifact in ("onnxruntime_int8", "openvino_int8", "onnx"):
        code, out, err = cli_runner("predict", str(run), *paths, "--artifact", artifact, "--json", "-k", "1")
        assert code == 0, err
        predictions = json.loads(out)["predictions"]
        predicted = [item["top"][0]["class"] for item in predictions]
        truth = [samples.class_names[label] for label in samples.labels]
        accuracy = sum(p == t for p, t in zip(predicted, truth)) / len(truth)
        assert accuracy >= 0.9, (artifact, accuracy)  # the float model reaches 100% on these 48 images
