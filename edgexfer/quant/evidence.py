"""The evidence behind an INT8 choice: a per-layer sensitivity table and every candidate's accuracy/latency.

Per quantized layer of the kept model (:func:`layer_table`):

- **SQNR** of its output against float (dB; :mod:`edgexfer.quant.sensitivity`, ONNX Runtime's
  ``qdq_loss_debug`` convention: activation and weight noise of the layer added in linear power);
- **the drop when that layer alone stays float**: the kept model with the layer's Q/DQ inputs taken out
  (:func:`keep_layer_float`: its activation inputs rewired to the float tensors, its weights back to the
  float model's), scored like the candidates (the target's judge or runtime) on the first
  :data:`SENSITIVITY_IMAGES` held-out images. Bounded in time: only the ``top_k`` layers with the lowest
  SQNR get this column (the others print "-"), and the report says so;
- **its latency share**: ONNX Runtime's profiler (``SessionOptions.enable_profiling``) on the kept model,
  batch 1, kernel time per node summed over :data:`PROFILE_RUNS` runs. Chosen over OpenVINO's per-layer
  counters because its node names are the ONNX model's own (OpenVINO renames and fuses layers), it runs
  every candidate of every target here, and it is the cpu target's own runtime; for tensorrt and
  openvino the share is ONNX Runtime's and the table says so. A fused node (QLinearConv made from
  DQ -> Conv -> Q) keeps the layer's name in ONNX Runtime's QDQ fusion, so time maps to the layer;
  the time of the remaining Q/DQ and other nodes is the "other" row.

:func:`pareto_points`: float and every candidate as (top-1 drop, agreement, p50 latency on the target's
runtime, measured in one interleaved set), the kept one marked.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgexfer.quant.graph import Graph

SENSITIVITY_IMAGES = 200
SQNR_IMAGES = 32
PROFILE_RUNS = 20
DEFAULT_TOP_K = 4


def keep_layer_float(qdq_model: Any, float_model: Any, node_name: str) -> Any:
    """A copy of ``qdq_model`` where node ``node_name`` runs in float: each input that comes through a
    DequantizeLinear takes the float tensor instead (the Q's input for activations, the float model's
    initializer of the same node for weights and bias, else the dequantized constant)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(qdq_model)
    graph = Graph(model)
    node = next((n for n in model.graph.node if n.name == node_name), None)
    if node is None:
        raise KeyError(f"no node named {node_name!r} in the QDQ model")
    float_node = next((n for n in float_model.graph.node if n.name == node_name), None)
    float_inits = {i.name: i for i in float_model.graph.initializer}
    for index, name in enumerate(list(node.input)):
        dq = graph.dequantized_by(name)
        if dq is None:
            continue
        if graph.is_weight_path(dq.input[0]):
            source = float_node.input[index] if float_node is not None and index < len(float_node.input) else ""
            if source in float_inits:
                value = numpy_helper.to_array(float_inits[source])
            else:
                value = _dequantize(graph, dq)
            new_name = f"{node_name}/float_input_{index}"
            model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), new_name))
            node.input[index] = new_name
        else:
            q = graph.producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[index] = q.input[0]
    _drop_dead_nodes(model)
    return model


def _dequantize(graph: Graph, dq: Any) -> np.ndarray:
    """The value of a DequantizeLinear of constants, computed as ONNX defines it (per-axis when 1-D scale)."""
    x = graph.const(dq.input[0])
    if x is None:  # a Q/DQ pair on a float weight: the Q's input is the float weight
        q = graph.producer[dq.input[0]]
        return graph.const(q.input[0])
    scale = graph.const(dq.input[1]).astype(np.float64)
    zero = graph.const(dq.input[2]).astype(np.float64) if len(dq.input) > 2 and dq.input[2] else 0.0
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    if np.ndim(scale) == 1 and x.ndim > 1:
        shape = [1] * x.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
        zero = np.reshape(zero, shape) if np.ndim(zero) == 1 else zero
    return ((x.astype(np.float64) - zero) * scale).astype(np.float32)


def _drop_dead_nodes(model: Any) -> None:
    """Remove nodes whose outputs nothing uses, and initializers no node uses."""
    outputs = {o.name for o in model.graph.output}
    while True:
        used = {name for n in model.graph.node for name in n.input} | outputs
        dead = [n for n in model.graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            model.graph.node.remove(node)
    used = {name for n in model.graph.node for name in n.input}
    for init in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(init)


def node_times_ms(model_path: "os.PathLike[str] | str", batch: np.ndarray, runs: int = PROFILE_RUNS,
                  threads: Optional[int] = None) -> Dict[str, float]:
    """Mean kernel milliseconds per run of each node, by ONNX Runtime's profiler (CPU, batch as given)."""
    import onnxruntime as ort

    from edgexfer.backends.onnxruntime import session_options

    with tempfile.TemporaryDirectory(prefix=".profile-", dir=os.fspath(Path(model_path).parent)) as work:
        options = session_options(threads)
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(work, "ort")
        session = ort.InferenceSession(os.fspath(model_path), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: batch}
        for _ in range(3 + runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: Dict[str, List[float]] = {}
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            totals.setdefault(event["name"][: -len("_kernel_time")], []).append(float(event["dur"]) / 1000.0)
    # the first 3 runs warm the session up: keep each node's last ``runs`` timings
    return {name: float(np.sum(times[-runs:])) / runs for name, times in totals.items()}


def latency_shares(times: Dict[str, float], layers: Sequence[str]) -> Tuple[Dict[str, float], float, float]:
    """(ms per layer, ms of everything else, total ms): a profiled node counts for a layer when its name is
    the layer's or the layer's name plus a fusion suffix ("_quant", "_token_N")."""
    per_layer = {name: 0.0 for name in layers}
    other = 0.0
    for name, ms in times.items():
        base = name
        for suffix in ("_quant",):
            if base.endswith(suffix):
                base = base[: -len(suffix)]
        base = base.split("_token_")[0]
        if base in per_layer:
            per_layer[base] += ms
        else:
            other += ms
    return per_layer, other, sum(times.values())


LogitsFn = Callable[[Any], np.ndarray]  # model (ModelProto) -> logits on the sensitivity images


def layer_table(
    float_path: Path,
    qdq_model: Any,
    work_dir: Path,
    sqnr_inputs: np.ndarray,
    logits_of: LogitsFn,
    float_logits: np.ndarray,
    labels: np.ndarray,
    top_k: int = DEFAULT_TOP_K,
    int8_logits: Optional[np.ndarray] = None,
    memo: Optional[Dict[Any, Any]] = None,
) -> Dict[str, Any]:
    """The per-layer table of ``qdq_model`` (see the module docstring) as a JSON-safe dict; ``int8_logits``:
    the model's own logits on these images when the caller has them (else ``logits_of`` runs it). The
    SQNR and profile depend on the model's bytes only (ONNX Runtime, the same images): with ``memo``, a
    byte-identical model (cpu's and openvino's often are) reuses them."""
    import onnx

    from edgexfer.compare import compare_logits
    from edgexfer.metrics import topk_accuracy
    from edgexfer.quant.sensitivity import layer_sqnr, rank_nodes

    started = time.perf_counter()
    float_model = onnx.load(os.fspath(float_path))
    qdq_path = Path(work_dir) / "evidence_qdq.onnx"
    onnx.save(qdq_model, os.fspath(qdq_path))
    key = ("evidence-sqnr-profile", _graph_sha256(qdq_model), len(sqnr_inputs))
    if memo is None or key not in memo:
        activations, weights = layer_sqnr(float_path, qdq_path, sqnr_inputs)
        times = node_times_ms(qdq_path, sqnr_inputs[:1])
        if memo is not None:
            memo[key] = (activations, weights, times)
    activations, weights, times = memo[key] if memo is not None else (activations, weights, times)
    qdq_names = {n.name for n in qdq_model.graph.node}
    # unnamed nodes cannot be told apart in the profile or kept float by name
    ranked = [(name, db) for name, db in rank_nodes(float_model, activations, weights) if name and name in qdq_names]
    ops = {n.name: n.op_type for n in float_model.graph.node}
    per_layer, other, total = latency_shares(times, [name for name, _ in ranked])
    float_top1 = topk_accuracy(float_logits, labels, 1)
    if int8_logits is None:
        int8_logits = logits_of(qdq_model)
    int8_top1 = topk_accuracy(int8_logits, labels, 1)
    int8_agreement = compare_logits(float_logits, int8_logits).top1_agreement
    rows = []
    for rank, (name, db) in enumerate(ranked):
        row: Dict[str, Any] = {"layer": name, "op": ops.get(name, "?"), "sqnr_db": round(db, 2),
                               "latency_ms": round(per_layer[name], 4),
                               "latency_share": round(per_layer[name] / total, 4) if total else None}
        if rank < top_k:
            logits = logits_of(keep_layer_float(qdq_model, float_model, name))
            top1 = topk_accuracy(logits, labels, 1)
            agreement = compare_logits(float_logits, logits).top1_agreement
            row.update(drop_if_float=round(float_top1 - top1, 3), recovered=round(top1 - int8_top1, 3),
                       agreement_if_float=round(agreement, 4))
        rows.append(row)
    qdq_path.unlink()
    return {
        "layers": rows,
        "quantized_layers": len(rows),
        "top_k": min(top_k, len(rows)),
        "images": int(len(labels)),
        "sqnr_images": int(len(sqnr_inputs)),
        "float_top1": round(float_top1, 3),
        "int8_top1": round(int8_top1, 3),
        "int8_drop": round(float_top1 - int8_top1, 3),
        "int8_agreement": round(int8_agreement, 4),
        "latency_source": f"onnxruntime {_ort_version()} profiler, CPU, batch 1, mean of {PROFILE_RUNS} runs",
        "latency_total_ms": round(total, 4),
        "latency_other_ms": round(other, 4),
        "seconds": round(time.perf_counter() - started, 2),
    }


def _graph_sha256(model: Any) -> str:
    """sha256 of ``model`` without its metadata_props: the export stamps the kept model with its target's
    metadata while another target (cpu, then openvino) may still hold the same model object."""
    import hashlib

    import onnx

    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    del bare.metadata_props[:]
    return hashlib.sha256(bare.SerializeToString()).hexdigest()


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def pareto_points(scores: Sequence[Any], latencies: Dict[str, float], kept: str) -> List[Dict[str, Any]]:
    """float and each candidate score (:class:`~edgexfer.quant.candidates.CandidateScore`) as a point:
    top-1 drop, agreement, p50 latency (``latencies`` by name, "float" included), kept or not, and whether
    another point is at least as good on both axes and better on one (``dominated``)."""
    points = [{"name": "float", "drop": 0.0, "agreement": 1.0, "latency_ms": latencies.get("float"), "kept": False}]
    for score in scores:
        points.append({"name": score.quantizer, "drop": round(score.drop, 4), "agreement": round(score.agreement, 6),
                       "latency_ms": latencies.get(score.quantizer), "kept": score.quantizer == kept})
    for point in points:
        point["dominated"] = any(
            other is not point and other["latency_ms"] is not None and point["latency_ms"] is not None
            and other["drop"] <= point["drop"] and other["latency_ms"] <= point["latency_ms"]
            and (other["drop"] < point["drop"] or other["latency_ms"] < point["latency_ms"])
            for other in points
        )
        if point["latency_ms"] is not None:
            point["latency_ms"] = round(point["latency_ms"], 4)
    return points


def collect(competition: Any, request: Any, judge: Any = None, top_k: int = DEFAULT_TOP_K) -> Dict[str, Any]:
    """The evidence of one target's competition (:class:`~edgexfer.quant.selection.Competition`): the kept
    model's layer table, scored like the candidates were (``judge``, else the target's runtime), and the
    Pareto points of float and every candidate, their latencies measured in one interleaved set on the
    target's runtime."""
    import contextlib

    import onnx

    from edgexfer.backends.base import get_backend
    from edgexfer.quant.selection import interleaved_p50_ms

    started = time.perf_counter()
    backend = get_backend(competition.runtime)
    # an even stride over the held-out slice, which may be ordered by class
    count = min(SENSITIVITY_IMAGES, len(request.eval_labels))
    picked = np.linspace(0, len(request.eval_labels) - 1, count).round().astype(int)
    inputs = request.eval_inputs[picked]

    def logits_of(model: Any) -> np.ndarray:
        if judge is not None:
            return judge.logits(model, inputs, request.batch_size)
        path = Path(request.work_dir) / "evidence_variant.onnx"
        onnx.save(model, os.fspath(path))
        with backend.load(path, {"precision": "int8"}) as runner:
            return np.concatenate([runner.infer(inputs[i : i + request.batch_size])
                                   for i in range(0, count, request.batch_size)])

    # the competition scored the kept model on these very images with the same judge/runtime: reuse its logits
    scored = competition.score.logits
    known = scored[picked] if scored is not None and len(scored) == len(request.eval_labels) else None
    table = layer_table(request.prepared, competition.winner.model, request.work_dir,
                        request.calib.arrays[:SQNR_IMAGES], logits_of, request.float_logits[picked],
                        request.eval_labels[picked], top_k, known, request.memo)
    table["int8_logits_from"] = "the competition's scoring" if known is not None else "run here"
    # a candidate whose graph is another's (only constants differ) gets that one's timing, as in the choice
    names = [c.quantizer for c in competition.candidates]
    timed = [c for c in competition.candidates if c.details.get("same_graph_as") not in names]
    with contextlib.ExitStack() as stack:
        runners = [stack.enter_context(backend.load(request.float_path, {"precision": "fp32"}))]
        runners += [stack.enter_context(backend.load(c.path, {"precision": "int8"})) for c in timed]
        p50 = interleaved_p50_ms(runners, inputs[:1])
    latencies = dict(zip(["float"] + [c.quantizer for c in timed], p50))
    for candidate in competition.candidates:
        if candidate.quantizer not in latencies:
            latencies[candidate.quantizer] = latencies[candidate.details["same_graph_as"]]
    return {
        "target": competition.winner.target,
        "kept": competition.winner.quantizer,
        "reason": competition.reason,
        "runtime": competition.runtime if judge is None else judge.scored_on,
        "latency_runtime": competition.runtime,
        "table": table,
        "pareto": pareto_points(competition.scores, latencies, competition.winner.quantizer),
        "seconds": round(time.perf_counter() - started, 2),
    }
