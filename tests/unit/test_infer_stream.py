"""Runner.infer_stream: several requests in flight (ONNX Runtime threads, OpenVINO AsyncInferQueue),
results in input order and equal to infer() one by one; the sequential fallback for other runners."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import onnx_factory as factory
from edgexfer.backends import get_backend
from edgexfer.backends.base import Runner


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    path = factory.export_float(factory.tiny_net(), root / "model.onnx")
    # Batches of different sizes, so a result handed to the wrong position shows in its shape too.
    batches = [np.random.default_rng(i).standard_normal((1 + i % 3, 3, 32, 32)).astype(np.float32)
               for i in range(12)]
    return {"onnx": path, "root": root, "batches": batches}


def _concurrency(runner, monkeypatch):
    """Record the most infer() calls running at once."""
    state = {"now": 0, "most": 0}
    lock = threading.Lock()
    infer = type(runner).infer

    def counting(self, batch):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        try:
            import time

            time.sleep(0.01)
            return infer(self, batch)
        finally:
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(type(runner), "infer", counting)
    return state


def test_onnxruntime_keeps_several_runs_in_flight_in_order(model, monkeypatch):
    with get_backend("onnxruntime").load(model["onnx"], {"threads": 1}) as runner:
        expected = [runner.infer(b) for b in model["batches"]]
        state = _concurrency(runner, monkeypatch)
        got = list(runner.infer_stream(iter(model["batches"]), in_flight=3))
    assert state["most"] == 3
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_openvino_async_requests_in_order_and_equal_to_infer(model):
    pytest.importorskip("openvino")
    backend = get_backend("openvino")
    result = backend.build(model["onnx"], "fp32", model["root"] / "ov")
    with backend.load(result.path, {"threads": 2}) as runner:
        expected = [runner.infer(b) for b in model["batches"]]
        assert runner.default_in_flight() >= 1
        got = list(runner.infer_stream(iter(model["batches"]), in_flight=4))
        assert runner.describe()["stream_requests"] == 4
        assert str(runner._throughput.get_property("PERFORMANCE_HINT")) == "THROUGHPUT"
        partial = runner.infer_stream(iter(model["batches"]), in_flight=4)
        first = next(partial)
        partial.close()  # stopping early waits for the requests in flight, then ends
    # Leaving the with-block dropped both compiled models: it returned (no deadlock at teardown).
    assert [g.shape for g in got] == [e.shape for e in expected]
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(first, expected[0], rtol=1e-4, atol=1e-4)


def test_runners_without_concurrent_infer_run_one_at_a_time(model):
    class Doubling(Runner):
        def __init__(self):
            self.now = self.most = 0

        def infer(self, batch):
            self.now += 1
            self.most = max(self.most, self.now)
            self.now -= 1
            return batch.reshape(len(batch), -1)[:, :3] * 2

    runner = Doubling()
    assert runner.default_in_flight() == 1
    got = list(runner.infer_stream(iter(model["batches"]), in_flight=4))
    assert runner.most == 1
    for a, b in zip(got, model["batches"]):
        np.testing.assert_array_equal(a, b.reshape(len(b), -1)[:, :3] * 2)


def test_bench_throughput_rows_for_onnxruntime_and_openvino(model, tmp_path):
    pytest.importorskip("openvino")
    from conftest import make_image_folder
    from edgexfer.onnxmeta import read_metadata
    from edgexfer.stages.bench.config import BenchConfig, BenchTarget
    from edgexfer.stages.bench.inputs import shared_pixels
    from edgexfer.stages.bench.throughput import measure_throughput

    preprocess = read_metadata(model["onnx"]).preprocess
    photos = sorted(make_image_folder(tmp_path / "photos", per_class=2, size=48, seed=1).rglob("*.png"))
    ov = get_backend("openvino").build(model["onnx"], "fp32", tmp_path / "ov").path
    config = BenchConfig(models=("tiny",), min_time_s=0.3, rounds=2, progress=False, mode="throughput")
    targets = [BenchTarget("tiny", name, "fp32", path, preprocess, name)
               for name, path in (("onnxruntime", model["onnx"]), ("openvino", ov))]
    pixels = shared_pixels(photos, preprocess, 4)
    rows = [{"status": "ok"}, {"status": "ok"}]
    with get_backend("onnxruntime").load(model["onnx"], {"threads": 1}) as ort, \
            get_backend("openvino").load(ov, {"threads": 1}) as ovr:
        measure_throughput([(0, (targets[0], ort)), (1, (targets[1], ovr))], 4, pixels, photos, config, rows)
        ov_default = ovr.default_in_flight()
    for row, in_flight in zip(rows, (2, ov_default)):
        assert row["throughput"]["in_flight"] == in_flight and row["throughput_sequential"]["in_flight"] == 1
        assert row["pipelined"]["decode_workers"] >= 1 and len(row["throughput"]["rounds"]) == 2
        for what in ("throughput", "throughput_sequential", "pipelined"):
            assert row[what]["images_per_s"] > 0
        assert row["pipelined_ratio"] == pytest.approx(row["pipelined"]["images_per_s"]
                                                       / row["throughput"]["images_per_s"])
