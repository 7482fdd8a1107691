"""Frames from a video file or a camera through OpenCV (the optional ``video`` extra), for ``predict --video``.

OpenCV is imported here only, lazily: without it ``predict --video`` fails with one line (exit 4, like any
runtime that is not installed) and nothing else in edgexfer notices. Frames come out as OpenCV decodes
them: ``H x W x 3`` uint8 BGR; :func:`edgexfer.frames.bgr_to_frame` or :func:`bgr_to_image` turns them into
what the model takes.
"""

from __future__ import annotations

from typing import Any, Iterator, Tuple, Union

import numpy as np

from edgexfer.errors import BackendUnavailableError, DataError


def load_cv2() -> Any:
    """The ``cv2`` module, or :class:`BackendUnavailableError` saying how to install it."""
    import os

    # OpenCV logs failed opens as WARN lines on stderr; the DataError below is the one line to show
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    try:
        import cv2
    except ImportError as exc:
        raise BackendUnavailableError(
            f"--video needs OpenCV, which is not installed here ({exc}); "
            "pip install 'edgexfer[video]' (opencv-python-headless)"
        ) from exc
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # in case cv2 was imported earlier
    except AttributeError:  # pragma: no cover - builds without the logging utilities
        pass
    return cv2


def video_source(text: str) -> Union[int, str]:
    """A camera index (all digits, e.g. ``0``) or a video file path / stream URL, as ``--video`` takes it."""
    return int(text) if str(text).strip().isdigit() else str(text)


def open_video(text: str) -> Tuple[Any, str]:
    """(an opened ``cv2.VideoCapture``, a description) for ``--video FILE|CAMERA_INDEX``; one DataError
    (exit 2) naming the source when it cannot be opened or has no frame to read."""
    import os

    source = video_source(text)  # a missing file is said first: it needs no OpenCV to know
    if isinstance(source, str) and "://" not in source and not os.path.isfile(source):
        raise DataError(f"video '{source}' does not exist; pass a video file or a camera index such as 0")
    cv2 = load_cv2()
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        capture.release()
        what = f"camera {source}" if isinstance(source, int) else f"video '{source}'"
        raise DataError(f"cannot open {what} with OpenCV; pass a video file OpenCV can decode (e.g. .avi, .mp4) "
                        "or the index of a connected camera")
    return capture, f"camera {source}" if isinstance(source, int) else str(source)


def read_frames(capture: Any, description: str) -> Iterator[np.ndarray]:
    """Every frame (BGR uint8) until the video ends; released at the end or when abandoned. A source that
    opened but yields no frame at all is a DataError."""
    count = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok or frame is None:
                break
            count += 1
            yield frame
    finally:
        capture.release()
    if count == 0:
        raise DataError(f"{description} opened but gave no frame; is it an empty or unsupported video?")


def bgr_to_image(bgr: np.ndarray) -> Any:
    """One OpenCV BGR frame -> a PIL RGB image (for models that take preprocessed input)."""
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1]))
