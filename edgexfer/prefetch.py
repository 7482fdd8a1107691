"""Ordered, bounded prefetch: ``fn(item)`` on worker threads, results yielded in input order.

What lets predict decode image k+1.. while image k's batch is inferred: PIL's JPEG decode and resize
release the GIL, as do ONNX Runtime / OpenVINO inference calls, so threads overlap for real. At most
``window`` results are in flight or waiting, so memory does not grow with the number of items. The
first exception (in input order) is raised where its result would have been yielded; the work
queued after it is cancelled.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Deque, Iterable, Iterator, List, Tuple, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def ordered_prefetch(
    fn: Callable[[Item], Result], items: Iterable[Item], workers: int, window: int
) -> Iterator[Tuple[Item, Result]]:
    """``(item, fn(item))`` for every item, in input order, computed by ``workers`` threads at most
    ``window`` items ahead of the consumer; ``workers=0`` computes each one when it is asked for."""
    if workers <= 0:
        for item in items:
            yield item, fn(item)
        return
    window = max(window, workers)
    source = iter(items)
    pending: Deque = deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edgexfer-prefetch")
    try:
        for item in source:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) >= window:
                break
        while pending:
            item, future = pending.popleft()
            result = future.result()  # re-raises fn's exception, in input order
            for more in source:  # top the window up before handing the result out
                pending.append((more, pool.submit(fn, more)))
                break
            yield item, result
    finally:
        # On an error or an abandoned generator: drop what has not started, wait for what has.
        pool.shutdown(wait=True, cancel_futures=True)


def chunked(items: Iterable[Item], size: int) -> Iterator[List[Item]]:
    """Consecutive lists of ``size`` items; the last may be shorter."""
    chunk: List[Item] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
