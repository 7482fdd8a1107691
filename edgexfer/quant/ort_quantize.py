"""Driving ONNX Runtime's static quantizer with precomputed calibration ranges.

Ranges come from :mod:`edgexfer.quant.ranges` (every method in one pass, cached), so the quantizer is
handed them through ``quantize_static(calibration_cache_path=...)`` and never calibrates again.
That parameter first shipped in onnxruntime 1.27.0 (:data:`MIN_ONNXRUNTIME`); the tests install
exactly that release and quantize with it (tests/integration/test_onnxruntime_floor.py).
"""

from __future__ import annotations

import inspect
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Sequence

from edgexfer.errors import BackendUnavailableError, ModelError
from edgexfer.quant.ranges import Ranges, tensors_data
from edgexfer.quant.recipes import QuantRecipe

MIN_ONNXRUNTIME = "1.27.0"
_CWD_LOCK = threading.Lock()


def check_quantizer() -> None:
    """BackendUnavailableError when the installed ONNX Runtime cannot take precomputed ranges.

    pip enforces the declared floor, but a Jetson venv made with ``--system-site-packages`` can see an
    older system ONNX Runtime; say so in one line instead of failing inside the quantizer.
    """
    import onnxruntime
    from onnxruntime.quantization import quantize_static

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        raise BackendUnavailableError(
            f"INT8 export needs onnxruntime >= {MIN_ONNXRUNTIME} (quantize_static with "
            f"calibration_cache_path); this environment has {onnxruntime.__version__}: "
            f"pip install 'onnxruntime>={MIN_ONNXRUNTIME}'"
        )


def prepare_for_quantization(
    float_path: "os.PathLike[str] | str", out_path: "os.PathLike[str] | str"
) -> Path:
    """ONNX Runtime's ``quant_pre_process``: shape inference and graph clean-up before quantization.

    Its symbolic shape inference can write scratch models (``sym_shape_infer_temp.onnx``, ``<uuid>.data``)
    into the current directory and leave them there when it fails (seen on torchvision's Swin, ~111 MB):
    it runs with a private scratch folder as the working directory, under a lock (the directory is
    process-wide). Its failures (a plain ``Exception``) become one line naming the model, not a traceback.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source, target = os.path.abspath(os.fspath(float_path)), os.path.abspath(os.fspath(out_path))
    with _CWD_LOCK, tempfile.TemporaryDirectory(prefix=".prequant-", dir=os.path.dirname(target)) as scratch:
        previous = os.getcwd()
        os.chdir(scratch)
        try:
            quant_pre_process(source, target, skip_symbolic_shape=False)
        except Exception as exc:  # onnxruntime raises a bare Exception ("Incomplete symbolic shape inference")
            raise ModelError(
                f"ONNX Runtime's INT8 pre-processing (shape inference) failed on {os.path.basename(source)}: "
                f"{str(exc).strip() or type(exc).__name__}; this model cannot be quantized by ONNX Runtime's "
                "quantizer (docs/models.md lists the families that can); export it without --int8"
            ) from exc
        finally:
            os.chdir(previous)
    return Path(target)


def quantize_with_ranges(
    prepared: "os.PathLike[str] | str",
    recipe: QuantRecipe,
    method: str,
    ranges: Ranges,
    work_dir: "os.PathLike[str] | str",
    exclude: Sequence[str] = (),
) -> Any:
    """Quantize ``prepared`` by ``recipe`` with precomputed ``ranges``; return the fixed-up ModelProto."""
    import onnx
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    data = tensors_data(ranges, method)
    with tempfile.TemporaryDirectory(prefix=".quant-", dir=os.fspath(work_dir)) as work:
        out = Path(work) / "model_int8.onnx"
        cache_file = Path(work) / "ranges.json"
        save_tensors_data(data, cache_file)
        _quiet(
            quantize_static,
            os.fspath(prepared),
            os.fspath(out),
            None,
            calibrate_method=data.calibration_method,
            calibration_cache_path=os.fspath(cache_file),
            nodes_to_exclude=list(exclude),
            **recipe.quantizer_options(),
        )
        model = onnx.load(os.fspath(out))
    return recipe.fix_up(model, ranges)


def _quiet(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` with ONNX Runtime's quantization warnings (pre-processing nags) kept out of the log."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        return fn(*args, **kwargs)
    finally:
        root.setLevel(level)
