"""edgexfer.prefetch.ordered_prefetch: input order, bounded look-ahead, errors in order, cancellation."""

from __future__ import annotations

import threading
import time

import pytest

from edgexfer.prefetch import ordered_prefetch


def test_results_in_input_order_though_finished_out_of_order():
    finished = []

    def work(i):
        time.sleep(0.002 * (10 - i))  # later items finish first
        finished.append(i)
        return i * i

    out = list(ordered_prefetch(work, range(10), workers=4, window=8))
    assert out == [(i, i * i) for i in range(10)]
    assert finished != sorted(finished)


def test_look_ahead_is_bounded_by_the_window():
    started = []
    consumed = 0
    for _item, _result in ordered_prefetch(lambda i: started.append(i) or i, range(50), workers=3, window=5):
        time.sleep(0.002)
        consumed += 1
        assert len(started) <= consumed + 5
    assert consumed == 50


def test_the_first_error_in_input_order_is_raised_and_later_work_cancelled():
    calls = []

    def work(i):
        calls.append(i)
        if i in (3, 5):
            time.sleep(0.01 if i == 3 else 0)  # item 5 fails first in time; item 3 first in order
            raise ValueError(f"bad {i}")
        return i

    seen = []
    with pytest.raises(ValueError, match="bad 3"):
        for item, _ in ordered_prefetch(work, range(100), workers=2, window=4):
            seen.append(item)
    assert seen == [0, 1, 2]
    assert max(calls) < 10  # the queue was not drained: what had not started was cancelled


def test_workers_0_runs_each_item_when_asked_on_the_calling_thread():
    threads = []
    out = list(ordered_prefetch(lambda i: threads.append(threading.current_thread()) or i, range(3), 0, 4))
    assert out == [(0, 0), (1, 1), (2, 2)] and set(threads) == {threading.current_thread()}


def test_work_runs_concurrently():
    barrier = threading.Barrier(3, timeout=5)  # only passes if three items run at once
    assert [r for _, r in ordered_prefetch(lambda i: barrier.wait() is not None and i, range(3), 3, 3)] == [0, 1, 2]
