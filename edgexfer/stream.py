"""The pipelined image stream that ``predict`` and ``bench --mode throughput`` share.

Image files (or video frames) are turned into rows of the runner's input on ``workers`` decode threads
(:func:`edgexfer.prefetch.ordered_prefetch`), gathered into batches, and the batches go through
:meth:`edgexfer.backends.base.Runner.infer_stream` with ``in_flight`` requests running at once (OpenVINO's
asynchronous requests, ONNX Runtime's concurrent runs, TensorRT's execution contexts). Decoding batch
k+1 while batches k-1 and k are inferred is what lets the end-to-end throughput approach the model's own;
results come back in input order, each batch's items with its logits.

Memory stays bounded: at most ``batch * (in_flight + 1)`` rows are decoded ahead of the batches taken,
and ``infer_stream`` holds at most ``in_flight`` batches.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Deque, Iterable, Iterator, List, Tuple

import numpy as np


def file_row(path: Any, preprocess: Any, frame: Any, dtype: Any, layout: str) -> np.ndarray:
    """One image file as one row of a runner's input: decoded and preprocessed (``preprocess``), or for a
    raw-frame model (``frame``: a :class:`edgexfer.frames.FrameSpec`) decoded into a frame of its size and
    channel order (scaled to cover it and centre-cropped only where the image's size differs)."""
    if frame is not None:
        from edgexfer.frames import load_frame

        return load_frame(path, frame)
    from edgexfer.preprocess import image_to_input

    return image_to_input(preprocess.open(path), preprocess, dtype, layout)


def pipelined(runner: Any, prepare: Callable[[Any], np.ndarray], items: Iterable[Any], batch: int,
              workers: int, in_flight: int = 0) -> Iterator[Tuple[List[Any], np.ndarray]]:
    """``(items of the batch, its logits)`` for consecutive batches of ``items``, in input order.

    ``prepare(item)`` runs on ``workers`` threads (0: on the consumer's thread, when its batch is
    gathered); the batches run through ``runner.infer_stream(batches, in_flight)`` (0: the runner's own
    choice). The first error (a file that does not decode, a failing inference) is raised where its
    batch's result would have come out; the work queued behind it is dropped.
    """
    from edgexfer.prefetch import chunked, ordered_prefetch

    in_flight = in_flight or runner.default_in_flight()
    rows = ordered_prefetch(prepare, items, workers, window=batch * (in_flight + 1))
    waiting: Deque[List[Any]] = deque()  # the items of the batches infer_stream has taken, oldest first
    failed: List[BaseException] = []

    def batches() -> Iterator[np.ndarray]:
        # A row that fails ends the batches here; the error is raised after the batches before it have
        # come out (infer_stream reads ahead, so raising it here would lose them).
        try:
            for chunk in chunked(rows, batch):
                waiting.append([item for item, _ in chunk])
                yield np.stack([row for _, row in chunk])
        except Exception as exc:  # noqa: BLE001 - re-raised below, in its place in the order
            failed.append(exc)

    # One in flight: the runner's own infer (its latency-compiled model; OpenVINO's infer_stream compiles
    # a second, THROUGHPUT-hinted one, which one request at a time does not need).
    stream = runner.infer_stream(batches(), in_flight) if in_flight > 1 else map(runner.infer, batches())
    try:
        for logits in stream:
            yield waiting.popleft(), np.asarray(logits)
        if failed:
            raise failed[0]
    finally:
        if hasattr(stream, "close"):
            stream.close()  # waits for the requests in flight, then stops the decode threads
        rows.close()
