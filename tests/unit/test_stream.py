"""edgexfer.stream.pipelined (predict's and bench's pipeline): each batch's items with its own logits, in
input order; decoding overlaps inference; ``in_flight`` requests really run at once; errors in order."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edgexfer.backends.base import Runner
from edgexfer.stream import pipelined


class SlowRunner(Runner):
    """A concurrent runner whose logits are a function of the batch (row i's logits: its mean value and
    its negative), recording how many infer calls overlap and when each ran."""

    concurrent_infer = True

    def __init__(self, seconds: float = 0.02):
        self.seconds = seconds
        self.lock = threading.Lock()
        self.now = self.most = 0
        self.spans = []

    def infer(self, batch):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        start = time.perf_counter()
        time.sleep(self.seconds * (1 + (int(batch[0, 0, 0]) % 3)))  # uneven: later batches may finish first
        with self.lock:
            self.now -= 1
            self.spans.append((start, time.perf_counter()))
        means = batch.reshape(len(batch), -1).mean(axis=1)
        return np.stack([means, -means], axis=1).astype(np.float32)


def _row(index):
    return np.full((2, 2), index, dtype=np.float32)


def test_items_come_back_with_their_own_logits_in_input_order():
    runner = SlowRunner(0.005)
    out = list(pipelined(runner, _row, range(23), batch=4, workers=2, in_flight=3))
    items = [i for chunk, _ in out for i in chunk]
    assert items == list(range(23))
    assert [len(chunk) for chunk, _ in out] == [4, 4, 4, 4, 4, 3]
    for chunk, logits in out:
        np.testing.assert_array_equal(logits[:, 0], np.array(chunk, dtype=np.float32))
    assert runner.most == 3  # three batches were inferred at once (infer_stream's in_flight)


def test_decoding_overlaps_inference():
    runner = SlowRunner(0.03)
    decoded = []

    def prepare(index):
        decoded.append((index, time.perf_counter()))
        return _row(index)

    list(pipelined(runner, prepare, range(16), batch=2, workers=2, in_flight=1))
    first_infer_end = min(end for _, end in runner.spans)
    # With decode threads, rows of later batches are ready before the first batch's inference ends.
    assert sum(t < first_infer_end for i, t in decoded if i >= 2) >= 2


def test_a_decode_error_is_raised_at_its_batch_after_the_batches_before_it():
    runner = SlowRunner(0.001)

    def prepare(index):
        if index == 9:
            raise ValueError("bad image 9")
        return _row(index)

    got = []
    with pytest.raises(ValueError, match="bad image 9"):
        for chunk, _ in pipelined(runner, prepare, range(40), batch=4, workers=2, in_flight=2):
            got.extend(chunk)
    assert got == list(range(8))


def test_stopping_early_leaves_no_request_running():
    runner = SlowRunner(0.01)
    stream = pipelined(runner, _row, range(100), batch=2, workers=2, in_flight=3)
    next(stream)
    stream.close()
    assert runner.now == 0


def test_predict_chooses_requests_in_flight():
    from edgexfer.stages.predict import PredictConfig, requests_in_flight

    def config(**options):
        return PredictConfig(target="model.onnx", images=("a.jpg",), **options)

    assert requests_in_flight(config(), total=100, batch=16) == 0  # the runtime's choice
    assert requests_in_flight(config(workers=0), total=100, batch=16) == 1  # decode, then infer, one thread
    assert requests_in_flight(config(), total=16, batch=16) == 1  # one batch: nothing to overlap
    assert requests_in_flight(config(), total=None, batch=16) == 0  # a video: length unknown
    assert requests_in_flight(config(in_flight=3, workers=0), total=4, batch=16) == 3  # said explicitly
