"""The build half of the fake ``tensorrt`` (see fake_trt.py): OnnxParser, Builder, IBuilderConfig, timing
caches and optimization profiles, each rejecting what the real one rejects (sources named per rule)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from fake_trt_engine import serialize

ONNX_TO_TRT = {1: "FLOAT", 10: "HALF", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL", 2: "UINT8"}
CACHE_MAGIC = b"FAKETIMINGCACHE1"


class _ParserError:
    """IParserError: ``desc()`` and a ``str()`` that names node and operator (pyOnnx.cpp @8.5.2 L47-50)."""

    def __init__(self, node: int, op: str, desc: str) -> None:
        self.node_index, self.op, self.text = node, op, desc

    def desc(self) -> str:
        return self.text

    def __str__(self) -> str:
        return f"In node {self.node_index} (importNode {self.op}): UNSUPPORTED_NODE: {self.text}"


def _tensor_types(model: Any) -> Dict[str, int]:
    """ONNX element type of every named tensor (inputs, initializers, inferred node outputs)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types_ = {i.name: i.type.tensor_type.elem_type for i in list(inferred.graph.input) + list(inferred.graph.output)}
    types_.update({v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info})
    types_.update({t.name: t.data_type for t in model.graph.initializer})
    return types_


def _node_errors(model: Any, v: Tuple[int, ...]) -> List[_ParserError]:
    """What the real ONNX importer refuses in this graph."""
    from onnx import numpy_helper

    types_ = _tensor_types(model)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    errors = []
    for index, node in enumerate(model.graph.node):
        def fail(text: str) -> None:
            errors.append(_ParserError(index, node.op_type, text))  # noqa: B023 - used at once

        if node.op_type == "LayerNormalization" and v < (8, 6):
            # operators.md @release/8.5-GA L86 "LayerNormalization | N"; ModelImporter: no importer registered.
            fail("No importer registered for op: LayerNormalization")
        for name in node.input:
            if types_.get(name) != 2:  # UINT8
                continue
            # "Use the IdentityLayer to convert uint8 network-level inputs to {float32, float16} prior to use
            # with other TensorRT layers" (DataType.uint8, pyFoundationalTypesDoc.h @8.5.2 L36-48, unchanged
            # to 11.1); Cast from UINT8 only to FLOAT/HALF (builtin_op_importers.cpp @release/8.5-GA L311-315);
            # Transpose never lists UINT8 (operators.md 8.5-GA L190, 8.6-GA L191, 10.1-GA L208).
            to = next((a.i for a in node.attribute if a.name == "to"), None)
            if node.op_type == "Identity" or (node.op_type == "Cast" and to in (1, 10)):
                continue
            fail(f"UINT8 tensor '{name}' cannot feed {node.op_type}; uint8 converts only through Cast to FLOAT/HALF")
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            if len(node.input) < 3 and v < (8, 6):  # QuantDequantLinearHelper @release/8.5-GA: 3 inputs
                fail(f"{node.op_type} requires 3 inputs")
            zero = inits.get(node.input[2]) if len(node.input) > 2 else None
            if zero is not None and (zero.dtype.name != "int8" or zero.any()):
                fail(f"{node.op_type}: zero point must be int8 zero")  # operators.md: zero point must be 0
            if node.op_type == "DequantizeLinear" and types_.get(node.input[0]) != 3:
                fail("DequantizeLinear input must be INT8")  # operators.md @8.5-GA/8.6-GA L50: INT8 only
    return errors


def make_parser(trt: Any, state: Dict[str, Any], v: Tuple[int, ...], parse_errors: Optional[List[str]]) -> type:
    class OnnxParser:
        def __init__(self, network: Any, logger: Any) -> None:
            state["use_logger"](logger)
            self.network = network
            self.errors: List[_ParserError] = [_ParserError(0, "Foo", e) for e in parse_errors or []]

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, index: int) -> _ParserError:
            return self.errors[index]

        def parse_from_file(self, path: str) -> bool:
            import onnx

            model = onnx.load(path)
            self.errors += _node_errors(model, v)
            if self.errors:
                return False
            self.network.load(model)
            return True

    return OnnxParser


class _Tensor:
    def __init__(self, name: str, shape: Tuple[int, ...], dtype: str) -> None:
        self.name, self.shape, self.dtype = name, shape, dtype


def _io(values: Any) -> List[_Tensor]:
    return [
        _Tensor(
            value.name,
            tuple(d.dim_value if d.dim_value > 0 else -1 for d in value.type.tensor_type.shape.dim),
            ONNX_TO_TRT[value.type.tensor_type.elem_type],
        )
        for value in values
    ]


class _Network:
    def __init__(self, flags: int, strongly_typed: bool) -> None:
        self.flags, self.strongly_typed = flags, strongly_typed
        self.inputs: List[_Tensor] = []
        self.outputs: List[_Tensor] = []
        self.model = None

    def load(self, model: Any) -> None:
        self.model = model
        self.inputs, self.outputs = _io(model.graph.input), _io(model.graph.output)
        self.has_qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
        self.fp16_typed = any(t.data_type == 10 for t in model.graph.initializer)

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, index: int) -> _Tensor:
        return self.inputs[index]


def make_builder(trt: Any, state: Dict[str, Any], v: Tuple[int, ...], build_fails: bool) -> type:
    cc = state["compute_capability"]
    config_slots = ["flags", "cache", "profiles", "default_device_type", "DLA_core", "pool"]
    if v >= (8, 6):
        config_slots.append("hardware_compatibility_level")  # IBuilderConfig, pyCore.cpp @v8.6.1 L1229

    class TimingCache:
        def __init__(self, cc_: str, entries: List[str]) -> None:
            self.cc, self.entries = cc_, list(entries)

        def serialize(self) -> bytes:
            return CACHE_MAGIC + json.dumps({"cc": self.cc, "entries": self.entries}).encode()

    class Profile:
        def __init__(self) -> None:
            self.shapes: Dict[str, Tuple[Any, Any, Any]] = {}

        def set_shape(self, name: str, low: Any, opt: Any, high: Any) -> None:
            self.shapes[name] = (tuple(low), tuple(opt), tuple(high))

    class Config:
        __slots__ = config_slots  # unknown attributes raise AttributeError, as on pybind11 objects

        def __init__(self) -> None:
            self.flags = {trt.BuilderFlag.TF32}  # "TF32 ... Enabled by default" (pyCoreDoc.h @v10.13.0)
            self.cache, self.profiles, self.pool = None, [], {}
            self.default_device_type, self.DLA_core = trt.DeviceType.GPU, -1
            if v >= (8, 6):
                self.hardware_compatibility_level = trt.HardwareCompatibilityLevel.NONE

        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            self.pool[pool] = size

        def set_flag(self, flag: Any) -> None:
            self.flags.add(trt.BuilderFlag(flag))

        def clear_flag(self, flag: Any) -> None:  # pyCore.cpp @8.5.2 L1066
            self.flags.discard(trt.BuilderFlag(flag))

        def get_flag(self, flag: Any) -> bool:
            return flag in self.flags

        def create_timing_cache(self, blob: bytes) -> Optional[TimingCache]:
            """A fresh cache for b"", None for a blob it cannot read: createTimingCache is noexcept and
            returns a pointer (NvInfer.h @v10.3.0 L9249-9266)."""
            blob = bytes(blob)
            if not blob:
                return TimingCache(cc, [])
            if not blob.startswith(CACHE_MAGIC):
                return state["error"]("timing cache: bad magic")
            try:
                record = json.loads(blob[len(CACHE_MAGIC) :])
            except ValueError:
                return state["error"]("timing cache: corrupt")
            return TimingCache(record["cc"], record["entries"])

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            """False for a cache of another device unless ignore_mismatch (pyCoreDoc.h @8.5.2 set_timing_cache)."""
            if cache is None:
                raise TypeError("set_timing_cache(): incompatible function arguments")
            if cache.cc != cc and not ignore_mismatch:
                return False
            self.cache = cache
            return True

        def get_timing_cache(self) -> TimingCache:
            return self.cache

        def add_optimization_profile(self, profile: Profile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

    class Builder:
        def __init__(self, logger: Any) -> None:
            state["use_logger"](logger)

        @property
        def num_DLA_cores(self) -> int:
            return state["dla_cores"]

        def create_network(self, flags: int) -> _Network:
            names = trt.NetworkDefinitionCreationFlag
            strong = v >= (11,) or (hasattr(names, "STRONGLY_TYPED") and bool(flags & (1 << names.STRONGLY_TYPED)))
            if v < (10,) and not flags & (1 << names.EXPLICIT_BATCH):
                raise AssertionError("8.x ONNX parsing needs an explicit-batch network")
            return _Network(flags, strong)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: _Network, config: Config) -> Optional[bytes]:
            return _build(trt, state, v, network, config, build_fails)

    return Builder


def _other_precision(trt: Any, state: Dict[str, Any], network: _Network, flags: set) -> str:
    """What layers outside the Q/DQ pairs compute in. Weakly typed: fp16 with BuilderFlag.FP16 ("Enable
    FP16 layer selection", pyCoreDoc.h; the fake takes the lowest enabled precision, where real TensorRT
    may keep a layer higher when that is faster: the pessimistic case for accuracy), tf32 with the TF32
    flag on an Ampere+ GPU, else fp32. Strongly typed: the ONNX tensor types decide ("Use explicit
    quantization with Strong Typing. Precision-control build flags are not required", docs.nvidia.com
    TensorRT "Explicit Quantization"), so fp16 only for an fp16-typed model."""
    flag = trt.BuilderFlag
    half = network.fp16_typed if network.strongly_typed else getattr(flag, "FP16", None) in flags
    return "fp16" if half else ("tf32" if flag.TF32 in flags and float(state["compute_capability"]) >= 8.0 else "fp32")


def _layer_precisions(model: Any, other: str) -> Dict[str, str]:
    """Per weighted layer (Conv, Gemm, MatMul): int8 when its activation and its weight both come through
    DequantizeLinear (explicit quantization: the Q/DQ placement says which layers run INT8, "Explicit
    Quantization", docs.nvidia.com TensorRT 8.6-10.x), else ``other``."""
    producer = {out: node for node in model.graph.node for out in node.output}
    layers = {}
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul"):
            dq = [getattr(producer.get(name), "op_type", None) == "DequantizeLinear" for name in node.input[:2]]
            layers[node.name] = "int8" if len(dq) == 2 and all(dq) else other
    return layers


def _fp16_emulated(model: Any, layers: Dict[str, str]) -> bytes:
    """The model the fake engine runs: weighted layers that compute in fp16 get their float weights rounded
    to fp16 and their output rounded through fp16 ("When TensorRT chooses a precision for a layer, it
    automatically converts weights as necessary to run the layer", Developer Guide 8.x, Reduced
    Precision), so an engine's logits differ from ONNX Runtime's fp32 ones as a real fp16 layer's do."""
    import copy

    import numpy as np
    from onnx import helper, numpy_helper

    emulated = copy.deepcopy(model)
    inits = {t.name: t for t in emulated.graph.initializer}
    nodes = []
    for node in emulated.graph.node:
        nodes.append(node)
        if layers.get(node.name) != "fp16":
            continue
        for name in node.input[1:]:
            if name in inits and inits[name].data_type == 1:  # FLOAT
                rounded = numpy_helper.to_array(inits[name]).astype(np.float16).astype(np.float32)
                inits[name].CopyFrom(numpy_helper.from_array(rounded, name))
        out = node.output[0]
        node.output[0] = f"{out}/fake_fp32"
        nodes += [
            helper.make_node("Cast", [f"{out}/fake_fp32"], [f"{out}/fake_fp16"], to=10),
            helper.make_node("Cast", [f"{out}/fake_fp16"], [out], to=1),
        ]
    del emulated.graph.node[:]
    emulated.graph.node.extend(nodes)
    return emulated.SerializeToString()


def _build(trt: Any, state: Dict[str, Any], v: Tuple[int, ...], network: _Network, config: Any, fails: bool):
    error, flag = state["error"], trt.BuilderFlag
    if fails or network.model is None:
        return error("build failed")
    precision_flags = {getattr(flag, n, None) for n in ("FP16", "INT8")} - {None}
    if network.strongly_typed and precision_flags & config.flags:
        return error("precision flags are not allowed for strongly typed networks")
    if network.has_qdq and not network.strongly_typed and flag.INT8 not in config.flags:
        # 8.x Developer Guide, Working with INT8: "the INT8 flag must be set" for quantized operations.
        return error("Q/DQ layers need BuilderFlag.INT8")
    profile = config.profiles[0].shapes if config.profiles else {}
    for tensor in network.inputs:
        if tensor.name not in profile:
            if -1 in tensor.shape:
                return error(f"no optimization profile for dynamic input '{tensor.name}'")
            profile[tensor.name] = (tensor.shape,) * 3
        low, opt, high = profile[tensor.name]
        if not all(a <= b <= c for a, b, c in zip(low, opt, high)):
            return error(f"profile for '{tensor.name}' is not min <= opt <= max")
        if config.default_device_type == trt.DeviceType.DLA and not low == opt == high:
            # "If run on DLA with explicit dimensions, only leading dimension can be a wildcard. And provided
            # profile must have same minimum, optimum, and maximum dimensions." (NvInfer.h @8.5.2 L6614-6615)
            return error("DLA needs a profile with min = opt = max")
    level = getattr(config, "hardware_compatibility_level", None)
    if level == "AMPERE_PLUS" and float(state["compute_capability"]) < 8.0:
        # AMPERE_PLUS "is only supported for engines built on NVIDIA Ampere and later GPUs"
        # (HardwareCompatibilityLevelDoc, @v8.6.1 and main).
        return error("hardware compatibility needs an Ampere+ build GPU")
    if config.cache is not None:
        key = f"{Path(str(network.model.graph.name))}|{sorted(f.name for f in config.flags)}|{network.fp16_typed}"
        state_hits = key in config.cache.entries
        trt.log["cache_hits"] += int(state_hits)
        if not state_hits:
            config.cache.entries.append(key)
    dla = config.DLA_core if config.default_device_type == trt.DeviceType.DLA else None
    other = _other_precision(trt, state, network, config.flags)
    layers = _layer_precisions(network.model, other)
    batch_free = [(t.name, t.shape) for t in network.outputs]
    record = {
        "version": list(v), "cc": state["compute_capability"], "dla_core": dla,
        "version_compatible": getattr(flag, "VERSION_COMPATIBLE", None) in config.flags,
        "hardware_level": str(level) if level not in (None, "NONE") else None,
        "precisions": sorted({other} | ({"int8"} if network.has_qdq else set())),
        "layers": layers,
        "inputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "io": "input"} for t in network.inputs],
        "outputs": [{"name": n, "shape": list(s), "dtype": t.dtype, "io": "output"}
                    for (n, s), t in zip(batch_free, network.outputs)],
        "profile": {name: [list(s) for s in shapes] for name, shapes in profile.items()},
    }
    trt.log["built"].append(record)
    emulate = other == "fp16" and not network.fp16_typed  # an fp16-typed model already computes in fp16
    return serialize(record, _fp16_emulated(network.model, layers) if emulate else network.model.SerializeToString())
