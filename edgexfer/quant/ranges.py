"""Activation ranges for INT8 calibration, every method from one inference pass.

min/max is tracked directly; ``entropy`` and ``percentile`` feed ONNX Runtime's own
``HistogramCollector`` from the same activations, so the ranges equal what ``quantize_static`` computes
(checked in the tests). The entropy (KL) search is ORT's algorithm, vectorised, at TensorRT's 2048 bins.
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgexfer.errors import ConfigError

METHODS = ("minmax", "entropy", "percentile")
METHOD_CHOICES = METHODS + ("auto",)
# ONNX Runtime's own defaults for its histogram calibrators (create_calibrator), kept explicit because
# they are part of the cache key.
COLLECTOR_OPTIONS: Dict[str, Dict[str, Any]] = {
    "minmax": {},
    # 2048 bins as TensorRT's entropy calibrator: with ORT's default of 128 bins and 128 quantized bins
    # the KL search has a single candidate and "entropy" silently equals the min/max range
    "entropy": {"symmetric": False, "num_bins": 2048, "num_quantized_bins": 128},
    "percentile": {"symmetric": True, "num_bins": 2048, "percentile": 99.999},
}
Ranges = Dict[str, Tuple[float, float]]


# ---- range collection ----------------------------------------------------------------------------
def calibration_tensors(model: Any) -> List[str]:
    """Float tensors that are inputs or outputs of some node (not initializers), in graph order."""
    import onnx

    infos = {
        vi.name: vi
        for vi in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input)
    }
    initializers = {init.name for init in model.graph.initializer}
    names: List[str] = []
    for node in model.graph.node:
        for name in list(node.input) + list(node.output):
            info = infos.get(name)
            if (
                info is not None
                and name not in initializers
                and name not in names
                and info.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
            ):
                names.append(name)
    return names


def collect_ranges(
    model_path: "os.PathLike[str] | str",
    inputs: np.ndarray,
    methods: Sequence[str],
    batch_size: int = 16,
    progress: bool = False,
    max_buffer_bytes: int = 1 << 30,
) -> Dict[str, Ranges]:
    """Ranges of every float tensor of the model for each method, from one inference pass.

    ``minmax`` is the observed min/max; ``entropy`` and ``percentile`` use ONNX Runtime's own
    histogram collector with :data:`COLLECTOR_OPTIONS`, so results equal what ``quantize_static``
    would compute. Activations are buffered up to ``max_buffer_bytes`` before they are added to the
    histograms (all at once, as ORT does, when they fit).
    """
    from tqdm import tqdm

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(
            f"unknown calibration method '{unknown[0]}'; choose one of {', '.join(METHOD_CHOICES)}"
        )
    session, tensors = _augmented_session(model_path)
    input_name = session.get_inputs()[0].name
    output_names = [o.name for o in session.get_outputs()]
    lows: Dict[str, float] = {}
    highs: Dict[str, float] = {}
    collectors = {m: _histogram_collector(m) for m in methods if m != "minmax"}
    buffered: Dict[str, List[np.ndarray]] = {name: [] for name in tensors}
    size = 0

    def flush() -> None:
        # ORT's histogram collectors re-bin when a later chunk widens the range; feeding everything at
        # once (as quantize_static does) gives exactly its ranges, so chunks are only used for memory
        merged = {name: np.concatenate(values) for name, values in buffered.items() if values}
        with contextlib.redirect_stdout(io.StringIO()):  # ORT's collectors print progress to stdout
            for collector in collectors.values():
                collector.collect(merged)
        for values in buffered.values():
            values.clear()

    starts = range(0, len(inputs), batch_size)
    for start in tqdm(starts, desc="calibrating", disable=not progress, leave=False):
        outputs = dict(zip(output_names, session.run(None, {input_name: inputs[start : start + batch_size]})))
        for name in tensors:
            value = outputs[name]
            lows[name] = min(lows.get(name, np.inf), float(np.min(value)))
            highs[name] = max(highs.get(name, -np.inf), float(np.max(value)))
            if collectors:
                buffered[name].append(value)
                size += value.nbytes
        if collectors and size > max_buffer_bytes:
            flush()
            size = 0
    if collectors and size:
        flush()
    result: Dict[str, Ranges] = {}
    if "minmax" in methods:
        result["minmax"] = {name: (lows[name], highs[name]) for name in tensors}
    for method, collector in collectors.items():
        result[method] = _histogram_ranges(method, collector)
    return result


def _histogram_collector(method: str) -> Any:
    """ONNX Runtime's ``HistogramCollector`` for ``method`` with :data:`COLLECTOR_OPTIONS`."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    options = COLLECTOR_OPTIONS[method]
    return HistogramCollector(
        method=method,
        num_quantized_bins=options.get("num_quantized_bins", 128),
        percentile=options.get("percentile", 99.999),
        scenario="same",
        symmetric=options["symmetric"],
        num_bins=options["num_bins"],
    )


def _histogram_ranges(method: str, collector: Any) -> Ranges:
    """The ranges a filled histogram collector gives for ``method``."""
    if method == "entropy":  # ORT's KL search, vectorised: its pure-Python loops take minutes at 2048 bins
        computed = {
            name: entropy_range(hist[0], hist[1], hist[2], hist[3], COLLECTOR_OPTIONS["entropy"]["num_quantized_bins"])
            for name, hist in collector.get_histogram_dict().items()
        }
    else:
        with contextlib.redirect_stdout(io.StringIO()):  # ORT's collectors print progress to stdout
            computed = collector.compute_collection_result()
    return {name: (_scalar(value[0]), _scalar(value[1])) for name, value in computed.items()}


def entropy_range(
    hist: np.ndarray, edges: np.ndarray, low: Any, high: Any, num_quantized_bins: int = 128
) -> Tuple[float, float]:
    """The KL-divergence-optimal clipping range of a symmetric histogram.

    The same search, arithmetic and tie-breaking as ONNX Runtime's ``HistogramCollector.get_entropy_threshold``
    (checked equal in the tests), with the per-bin loops replaced by numpy reshapes.
    """
    from scipy.special import rel_entr

    num_bins = hist.size
    zero = num_bins // 2
    half = num_quantized_bins // 2
    cumulative = np.concatenate([[0], np.cumsum(hist)])
    best_kl, best = None, (edges[0], edges[-1])
    for i in range(half, zero + 1):
        start, end = zero - i, min(zero + i + 1, num_bins)
        sliced = hist[start:end]
        p = sliced.copy()
        p[0] += cumulative[start]
        p[-1] += cumulative[-1] - cumulative[end]
        nonzeros = (p != 0).astype(np.int64)
        merged = sliced.size // num_quantized_bins
        body = num_quantized_bins * merged
        quantized = sliced[:body].reshape(num_quantized_bins, merged).sum(1)
        quantized[-1] += sliced[body:].sum()
        norm = nonzeros[:body].reshape(num_quantized_bins, merged).sum(1)
        q = np.zeros(p.size, dtype=np.int64)
        with np.errstate(divide="ignore", invalid="ignore"):
            q[:body] = np.repeat(np.where(norm != 0, quantized / np.maximum(norm, 1), 0), merged).astype(
                np.int64
            )
        p_s, q_s = _smooth(p), _smooth(q)
        if p_s is None or q_s is None:
            kl = np.inf
        else:  # scipy.stats.entropy(p, q), spelled out: its argument checks cost more than the sum
            kl = float(np.float32(np.sum(rel_entr(1.0 * p_s / np.sum(p_s), 1.0 * q_s / np.sum(q_s)))))
        if best_kl is None or kl < best_kl:
            best_kl, best = kl, (edges[start], edges[end])
    lo, hi = best
    return float(max(lo, low)), float(min(hi, high))


def _smooth(p: np.ndarray, eps: float = 0.0001) -> Optional[np.ndarray]:
    """ONNX Runtime's ``smooth_distribution``: zeros become eps, taken off the non-zero bins."""
    is_zeros = (p == 0).astype(np.float32)
    is_nonzeros = (p != 0).astype(np.float32)
    n_zeros = is_zeros.sum()
    n_nonzeros = p.size - n_zeros
    if not n_nonzeros:
        return None
    eps1 = eps * float(n_zeros) / float(n_nonzeros)
    if eps1 >= 1.0:
        return None
    smoothed = p.astype(np.float32)
    smoothed += eps * is_zeros + (-eps1) * is_nonzeros
    return smoothed


def _augmented_session(model_path: "os.PathLike[str] | str") -> Tuple[Any, List[str]]:
    """An ORT session of the model with every calibration tensor as an extra output, and those names."""
    import onnx
    import onnxruntime as ort

    model = onnx.shape_inference.infer_shapes(onnx.load(os.fspath(model_path)))
    tensors = calibration_tensors(model)
    existing = {o.name for o in model.graph.output}
    infos = {vi.name: vi for vi in list(model.graph.value_info) + list(model.graph.input)}
    for name in tensors:
        if name not in existing:
            model.graph.output.append(infos[name])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # as ORT's calibrators
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    ), tensors


def tensors_data(ranges: Ranges, method: str) -> Any:
    """ONNX Runtime's ``TensorsData`` for ``ranges`` (what its quantizers take)."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData

    ort_method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    return TensorsData(
        ort_method,
        {
            name: TensorData(lowest=np.array(lo, dtype=np.float32), highest=np.array(hi, dtype=np.float32))
            for name, (lo, hi) in ranges.items()
        },
    )


def _scalar(value: Any) -> float:
    """A Python float from a numpy scalar or 1-element array (ORT returns both)."""
    return float(np.asarray(value).reshape(-1)[0])
