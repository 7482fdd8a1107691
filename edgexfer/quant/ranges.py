"""Activation ranges for INT8 calibration: every method from one pass over the images (histograms: a second
pass over a subset).

min/max is tracked directly over every calibration image; ``entropy`` and ``percentile`` come from
histograms of a seeded subset of at most :data:`HISTOGRAM_IMAGES` images, laid out as ONNX Runtime's own
``HistogramCollector`` lays them out, so on that subset the ranges equal what ``quantize_static`` computes
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
# entropy and percentile ranges come from histograms of at most this many calibration images (a seeded
# subset; min/max sees every image): issue 13 measured their ranges barely move against all 512 images
# (benchmarks/results/export_time_resnet18.md) for a quarter of the cost. Part of the cache key.
HISTOGRAM_IMAGES = 128
METHOD_CHOICES = METHODS + ("auto",)
# ONNX Runtime's own defaults for its histogram calibrators (create_calibrator), kept explicit because
# they are part of the cache key.
COLLECTOR_OPTIONS: Dict[str, Dict[str, Any]] = {
    "minmax": {},
    # 2048 bins as TensorRT's entropy calibrator: with ORT's default of 128 bins and 128 quantized bins
    # the KL search has a single candidate and "entropy" silently equals the min/max range
    "entropy": {"symmetric": False, "num_bins": 2048, "num_quantized_bins": 128, "images": HISTOGRAM_IMAGES},
    "percentile": {"symmetric": True, "num_bins": 2048, "percentile": 99.999, "images": HISTOGRAM_IMAGES},
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
    histogram_images: int = HISTOGRAM_IMAGES,
    seed: int = 0,
) -> Dict[str, Ranges]:
    """Ranges of every float tensor of the model for each method.

    ``minmax`` is the observed min/max over every input. ``entropy`` and ``percentile`` come from
    histograms of a seeded subset of at most ``histogram_images`` inputs (:func:`histogram_subset`),
    built the way ONNX Runtime's ``HistogramCollector`` builds them when it is fed that subset at once
    (:data:`COLLECTOR_OPTIONS`; equal ranges, checked in the tests), and searched with its algorithms.
    A first pass over every input gives the min/max (and the subset's own extremes, which fix the
    histograms' edges); a second pass over the subset fills the histograms batch by batch (no re-binning,
    no buffered activations).
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
    histogram_methods = [m for m in methods if m != "minmax"]
    subset = histogram_subset(len(inputs), histogram_images, seed) if histogram_methods else np.arange(0)
    in_subset = np.zeros(len(inputs), dtype=bool)
    in_subset[subset] = True

    def run(batch: np.ndarray) -> Dict[str, np.ndarray]:
        return dict(zip(output_names, session.run(None, {input_name: batch})))

    overall, sub = _Extremes(), _Extremes(absolute=True)
    starts = range(0, len(inputs), batch_size)
    for start in tqdm(starts, desc="calibrating", disable=not progress, leave=False):
        outputs = run(inputs[start : start + batch_size])
        rows = np.flatnonzero(in_subset[start : start + batch_size])
        for name in tensors:
            overall.add(name, outputs[name])
            if rows.size:
                sub.add(name, outputs[name] if rows.size == len(outputs[name]) else outputs[name][rows])
    result: Dict[str, Ranges] = {}
    if "minmax" in methods:
        result["minmax"] = {name: (float(overall.low[name]), float(overall.high[name])) for name in tensors}
    if not histogram_methods:
        return result
    histograms = {m: _Histograms(m, sub) for m in histogram_methods}
    for start in tqdm(range(0, len(subset), batch_size), desc="histograms", disable=not progress, leave=False):
        outputs = run(inputs[subset[start : start + batch_size]])
        for name in tensors:
            for histogram in histograms.values():
                histogram.add(name, outputs[name])
    for method, histogram in histograms.items():
        result[method] = _histogram_ranges(method, histogram.collector())
    return result


def histogram_subset(count: int, wanted: int, seed: int = 0) -> np.ndarray:
    """The (sorted) indices of the inputs the histograms see: all ``count`` when ``wanted`` is larger, else a
    seeded random choice of ``wanted`` (calibration sets are often ordered by class)."""
    if wanted < 1:
        raise ConfigError(f"histogram images must be >= 1, got {wanted}")
    if count <= wanted:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=wanted, replace=False))


class _Extremes:
    """Running min/max per tensor (and min/max of absolute values when ``absolute``), kept as float32
    numpy scalars as ONNX Runtime's collectors keep them."""

    def __init__(self, absolute: bool = False) -> None:
        self.low: Dict[str, Any] = {}
        self.high: Dict[str, Any] = {}
        self.abs_low: Dict[str, Any] = {}
        self.absolute = absolute

    def add(self, name: str, value: np.ndarray) -> None:
        """Widen ``name``'s extremes by ``value``."""
        low, high = np.nanmin(value), np.nanmax(value)
        self.low[name] = low if name not in self.low else min(self.low[name], low)
        self.high[name] = high if name not in self.high else max(self.high[name], high)
        if self.absolute:
            # the smallest |x|: 0 when the signs differ, else the extreme nearest to zero
            abs_low = np.nanmin(np.abs(value)) if low < 0 < high else min(abs(low), abs(high))
            self.abs_low[name] = abs_low if name not in self.abs_low else min(self.abs_low[name], abs_low)

    def abs_high(self, name: str) -> Any:
        """The largest |x| seen."""
        return max(abs(self.low[name]), abs(self.high[name]))


class _Histograms:
    """One method's histograms, with the edges ONNX Runtime's ``HistogramCollector`` gives the subset fed at
    once: ``entropy`` (its ``collect_value``) bins the values over [-T, T], T the largest |x|; symmetric
    ``percentile`` (its ``collect_absolute_value``) bins |x| over [min |x|, max |x|] (numpy's default range).
    Counts are added batch by batch with those fixed edges, which gives the counts of one call on the whole
    subset (numpy bins every value on its own)."""

    def __init__(self, method: str, extremes: _Extremes) -> None:
        self.method, self.extremes = method, extremes
        self.options = COLLECTOR_OPTIONS[method]
        self.counts: Dict[str, np.ndarray] = {}
        self.edges: Dict[str, np.ndarray] = {}

    def _range(self, name: str, dtype: Any) -> Tuple[Any, Any]:
        x = self.extremes
        if self.method == "percentile" and self.options["symmetric"]:
            return dtype.type(x.abs_low[name]), dtype.type(x.abs_high(name))
        threshold = dtype.type(x.abs_high(name))
        return -threshold, threshold

    def add(self, name: str, value: np.ndarray) -> None:
        """Count ``value`` (one batch of tensor ``name``) into its histogram."""
        flat = value.reshape(-1)
        if self.method == "percentile" and self.options["symmetric"]:
            flat = np.abs(flat)
        counts, edges = np.histogram(flat, self.options["num_bins"], range=self._range(name, flat.dtype))
        if name in self.counts:
            self.counts[name] += counts
        else:
            self.counts[name], self.edges[name] = counts, edges.astype(flat.dtype)

    def collector(self) -> Any:
        """ONNX Runtime's ``HistogramCollector`` holding these histograms, in its own tuple layout."""
        collector = _histogram_collector(self.method)
        x = self.extremes
        for name, counts in self.counts.items():
            entry = (counts, self.edges[name], x.low[name], x.high[name])
            if self.method == "entropy" or not self.options["symmetric"]:
                entry += (-self._range(name, self.edges[name].dtype)[0],)
            collector.histogram_dict[name] = entry
        return collector


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
