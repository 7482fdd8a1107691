"""TensorRT ``infer_stream``: several execution contexts, each on its own CUDA stream with its own buffers,
round-robin, results in input order; against the strict, asynchronous fake (fake_trt_cuda.py: work runs
when its stream is synchronized; a buffer or context used by two streams' unfinished work is an error).
"""

from __future__ import annotations

import numpy as np
import pytest

import fake_trt
import fake_trt_cuda
import onnx_factory as factory
import trt_models
from edgexfer.backends import trt_devmem, trt_runtime
from edgexfer.backends.tensorrt import TensorRTBackend, build_defaults
from edgexfer.backends.trt_build import build_engine
from edgexfer.backends.trt_lanes import Lane
from edgexfer.errors import ArtifactError


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return trt_models.make_models(tmp_path_factory.mktemp("trt_stream_models"))


@pytest.fixture
def memories(monkeypatch):
    """Fake device memory (one stream each); the list of every one made."""
    made = []

    def make(preferred=None):
        made.append(fake_trt.FakeMemory())
        return made[-1]

    monkeypatch.setattr(trt_devmem, "device_memory", make)
    return made


def _engine(monkeypatch, models, tmp_path, version="10.3.0", max_batch=4):
    trt = fake_trt.make_fake_trt(version)
    monkeypatch.setattr(trt_runtime, "load_trt", lambda: trt)
    path = build_engine(trt, models["float"], "fp32", tmp_path, {"max_batch": max_batch},
                        trt_runtime.trt_machine(trt), build_defaults()).path
    return trt, path


def _batches():
    """Batches of 1..6 images (6 splits into 4 + 2 on a max-batch-4 profile), different pixels each."""
    images = np.concatenate(factory.calibration_batches(count=24))
    sizes, out, start = [3, 1, 6, 2, 4, 5, 1], [], 0
    for size in sizes:
        out.append(images[start: start + size])
        start += size
    return out


def test_contexts_run_on_their_own_streams_and_results_come_back_in_order(monkeypatch, models, tmp_path,
                                                                         memories):
    trt, path = _engine(monkeypatch, models, tmp_path)
    batches = _batches()
    with TensorRTBackend().load(path) as runner:
        expected = [runner.infer(batch) for batch in batches]
        assert runner.default_in_flight() == 2
        fake_trt_cuda.DEVICE.most_busy = 0
        got = list(runner.infer_stream(iter(batches), in_flight=3))
        lanes = runner._objects["lanes"]
        assert len(lanes) == 3 and runner.describe()["execution_contexts"] == 3
        contexts = [lane.context for lane in lanes]
        streams = [set(context.streams) for context in contexts]
        assert all(len(s) == 1 for s in streams) and len(set.union(*streams)) == 3  # a stream per context
        assert [len(set(context.addresses.values())) for context in contexts] == [2, 2, 2]
        assert len({a for context in contexts for a in context.addresses.values()}) == 6  # no shared buffers
        assert sum(len(context.calls) for context in contexts) >= 9  # 8 chunks here + the infer() calls
        assert fake_trt_cuda.DEVICE.most_busy == 3  # three requests were in flight at once
    assert [g.shape for g in got] == [e.shape for e in expected]
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert trt.log["errors"] == []
    assert all(memory.closed for memory in memories) and len(memories) == 3  # every lane's stream released


def test_stopping_early_leaves_no_request_in_flight(monkeypatch, models, tmp_path, memories):
    _, path = _engine(monkeypatch, models, tmp_path)
    with TensorRTBackend().load(path) as runner:
        stream = runner.infer_stream(iter(_batches()), in_flight=2)
        first = next(stream)
        stream.close()
        assert all(lane.pending is None for lane in runner._objects["lanes"])
        assert not any(fake_trt_cuda.DEVICE.busy(memory.stream) for memory in memories)
        np.testing.assert_allclose(first, runner.infer(_batches()[0]), atol=1e-6)


def test_trt8_runs_one_context_per_profile(monkeypatch, models, tmp_path, memories):
    """Before TensorRT 9 concurrent contexts need separate profiles; edgexfer's engines have one."""
    trt, path = _engine(monkeypatch, models, tmp_path, version="8.6.1")
    batches = _batches()
    with TensorRTBackend().load(path) as runner:
        expected = [runner.infer(batch) for batch in batches]
        assert runner.default_in_flight() == 1
        got = list(runner.infer_stream(iter(batches), in_flight=3))
        assert len(runner._objects["lanes"]) == 1
        # The fake holds TensorRT 8 to it: a second context has no profile and cannot run.
        second = Lane(runner, runner._objects["engine"].create_execution_context(), fake_trt.FakeMemory(), 4096)
        with pytest.raises(ArtifactError, match="refused input shape"):
            second.submit(np.ascontiguousarray(batches[0]))
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert "set_input_shape: this context has no optimization profile (set one first)" in trt.log["errors"]


def test_two_requests_in_flight_on_one_context_are_refused(monkeypatch, models, tmp_path, memories):
    """What the fake catches if the runner shared a context between lanes (enqueueV3 while the context's
    enqueue on another stream is unfinished)."""
    trt, path = _engine(monkeypatch, models, tmp_path)
    batch = np.ascontiguousarray(_batches()[0])
    with TensorRTBackend().load(path) as runner:
        context = runner._objects["context"]
        one, two = (Lane(runner, context, fake_trt.FakeMemory(), 1 << 16) for _ in range(2))
        one.submit(batch)
        with pytest.raises(ArtifactError, match="failed to run"):
            two.submit(batch)
        assert "has not finished; one context runs one inference at a time" in trt.log["errors"][-1]
        one.collect()
        two.pending = None
        two.submit(batch)  # once the first finished, the context may run again on another stream
        np.testing.assert_allclose(two.collect(), runner.infer(batch), atol=1e-6)


def test_two_requests_in_flight_sharing_buffers_are_a_race(monkeypatch, models, tmp_path, memories):
    """What the fake catches if lanes shared an input or output buffer (enqueueV3: registered memory must not
    be modified before stream synchronization)."""
    _, path = _engine(monkeypatch, models, tmp_path)
    batches = [np.ascontiguousarray(b) for b in _batches()[:2]]
    with TensorRTBackend().load(path) as runner:
        engine = runner._objects["engine"]
        one = Lane(runner, engine.create_execution_context(), fake_trt.FakeMemory(), 1 << 16)
        two = Lane(runner, engine.create_execution_context(), fake_trt.FakeMemory(), 1 << 16)
        two.d_in = one.d_in  # the bug: both lanes copy into one input buffer
        one.submit(batches[0])
        with pytest.raises(fake_trt_cuda.RaceError, match="in use by unfinished work on stream"):
            two.submit(batches[1])
        one.collect()
        three = Lane(runner, engine.create_execution_context(), fake_trt.FakeMemory(), 1 << 16)
        one.submit(batches[0])
        three.outputs = dict(one.outputs)  # the bug: both lanes write one output buffer
        with pytest.raises(fake_trt_cuda.RaceError, match="enqueueV3: device buffer"):
            three.submit(batches[1])
        one.collect()


def test_results_are_read_after_the_stream_ran(monkeypatch, models, tmp_path, memories):
    """The fake runs enqueued work only when its stream does: logits read before that are not the model's."""
    _, path = _engine(monkeypatch, models, tmp_path)
    batch = np.ascontiguousarray(_batches()[2][:4])
    with TensorRTBackend().load(path) as runner:
        lane = runner._objects["lanes"][0]
        lane.submit(batch)
        early = {name: host.copy() for name, host in lane.hosts.items()}
        logits = lane.collect()
        np.testing.assert_allclose(logits, runner.infer(batch), atol=1e-6)
        assert not np.allclose(early["logits"], logits)
