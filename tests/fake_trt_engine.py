"""The runtime half of the fake ``tensorrt`` (see fake_trt.py): serialized engines, Runtime, ICudaEngine and
IExecutionContext, over the asynchronous fake device of fake_trt_cuda.py. An engine is self-contained (its
record and the ONNX model it runs with ONNX Runtime), so a build -> load -> infer round trip checks buffer
plumbing and batching.

Each strict behaviour names the real source it mirrors.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from fake_trt_cuda import ALIGNMENT, DEVICE, FakeMemory, RaceError  # noqa: F401  (re-exported for fake_trt)

MAGIC = b"FAKEENGINE1"
# Numpy types of the fake DataType members (by name, like edgexfer's own mapping must be).
NUMPY = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
         "BOOL": np.bool_, "UINT8": np.uint8}


def serialize(record: Dict[str, Any], model_bytes: bytes) -> bytes:
    """An engine blob: magic, JSON record, then the ONNX model."""
    head = json.dumps(record).encode()
    return MAGIC + len(head).to_bytes(8, "little") + head + model_bytes


def deserialize(data: bytes) -> Optional[Tuple[Dict[str, Any], bytes]]:
    """(record, model bytes), or None for a blob that is not a fake engine."""
    if not data.startswith(MAGIC):
        return None
    size = int.from_bytes(data[len(MAGIC) : len(MAGIC) + 8], "little")
    start = len(MAGIC) + 8
    try:
        return json.loads(data[start : start + size]), data[start + size :]
    except ValueError:
        return None


def vc_runs(built: Tuple[int, ...], here: Tuple[int, ...]) -> bool:
    """Version-compatible engines (built with >= 8.6) run on later runtimes of the same major, and across
    majors only 8 -> 9, 8 -> 10, 10 -> 11 (Version Compatibility, docs 10.16.1; Support Matrix 11.4.1)."""
    if here < built or built < (8, 6):
        return False
    return here[0] == built[0] or (built[0], here[0]) in {(8, 9), (8, 10), (10, 11)}


def make_runtime(trt: Any, state: Dict[str, Any]) -> type:
    """The fake ``trt.Runtime`` class for the module ``trt``."""
    version = tuple(int(p) for p in trt.__version__.split(".")[:3])
    slots = ["_dla_core", "log_messages"] + (["engine_host_code_allowed"] if version >= (8, 6) else [])

    class Runtime:
        # pybind11 classes reject unknown attributes: 8.5's IRuntime has no engine_host_code_allowed
        # (pyCore.cpp @8.5.2 L1153-1163; added by @v8.6.1 L1297).
        __slots__ = slots

        def __init__(self, logger: Any) -> None:
            state["use_logger"](logger)
            self._dla_core = -1  # "Defaults to -1" (IRuntime::setDLACore, NvInferRuntime.h @8.5.2 L644)
            if version >= (8, 6):
                self.engine_host_code_allowed = False

        @property
        def num_DLA_cores(self) -> int:
            return state["dla_cores"]

        @property
        def DLA_core(self) -> int:
            return self._dla_core

        @DLA_core.setter
        def DLA_core(self, core: int) -> None:
            if state["dla_cores"] > 0:  # "if getNbDLACores() returns 0, then this function does nothing"
                self._dla_core = int(core)

        def deserialize_cuda_engine(self, data: bytes) -> Optional["FakeEngine"]:
            parsed = deserialize(bytes(data))
            if parsed is None:
                return state["error"]("Serialization assertion failed: magic tag does not match")
            record, model = parsed
            built = tuple(record["version"])
            if built != version and not (record["version_compatible"] and vc_runs(built, version)):
                return state["error"](f"engine plan built with TensorRT {built}, runtime is {version}")
            if record["version_compatible"] and not getattr(self, "engine_host_code_allowed", False):
                # trtexec opts in before deserialising VC engines (sampleEngines.cpp @v10.3.0 L104-107).
                return state["error"]("engine has an embedded lean runtime but host code is not allowed")
            level, cc = record["hardware_level"], state["compute_capability"]
            if record["cc"] != cc and not (level == "AMPERE_PLUS" and float(cc) >= 8.0):
                return state["error"](f"engine built for sm {record['cc']}, this device is {cc}")
            if record["dla_core"] is not None and state["dla_cores"] == 0:
                return state["error"]("engine needs DLA, this device has none")
            return FakeEngine(trt, state, record, model, self._dla_core)

    return Runtime


class FakeEngine:
    """An ICudaEngine: I/O tensors, dtypes and the profile are those of the build (not constants)."""

    def __init__(self, trt: Any, state: Dict[str, Any], record: Dict[str, Any], model: bytes, dla: int):
        import onnxruntime

        self.trt, self.state, self.record = trt, state, record
        self.session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
        self.tensors = {t["name"]: t for t in record["inputs"] + record["outputs"]}
        self.names = [t["name"] for t in record["inputs"] + record["outputs"]]
        self.num_io_tensors = len(self.names)
        self.num_optimization_profiles = 1
        self.version = tuple(int(p) for p in trt.__version__.split(".")[:3])
        self.contexts: List["FakeContext"] = []
        # Fake-only facts a test may read, like trtexec --dumpLayerInfo would show them:
        self.precisions: List[str] = record["precisions"]
        self.dla_core_used = dla if record["dla_core"] is not None else None

    def get_tensor_name(self, index: int) -> str:
        return self.names[index]

    def get_tensor_mode(self, name: str) -> Any:
        modes = self.trt.TensorIOMode
        return modes.INPUT if self.tensors[name]["io"] == "input" else modes.OUTPUT

    def get_tensor_dtype(self, name: str) -> Any:
        return getattr(self.trt.DataType, self.tensors[name]["dtype"])

    def get_tensor_shape(self, name: str) -> Tuple[int, ...]:
        return tuple(self.tensors[name]["shape"])

    def get_tensor_profile_shape(self, name: str, profile: int) -> List[Tuple[int, ...]]:
        return [tuple(s) for s in self.record["profile"][name]]

    def create_execution_context(self) -> Optional["FakeContext"]:
        if self.state["context_oom"]:  # createExecutionContext returns nullptr -> None in Python
            return self.state["error"]("out of device memory creating the execution context")
        context = FakeContext(self)
        self.contexts.append(context)
        return context

    def profile_taken(self, index: int, asker: "FakeContext") -> bool:
        """Before TensorRT 9 a profile is one context's at a time: "each execution context in concurrent use
        must use a separate optimization profile" (NvInferRuntime.h @8.5.2 L1589-1591); from 9 profiles are
        shared (PreviewFeature::kPROFILE_SHARING_0806, "will become the default behavior in TensorRT 9.0",
        NvInfer.h @v8.6.1 L9032-9037; "The default value for this flag is on", NvInfer.h @v10.3.0 L8600-8604)."""
        return self.version < (9,) and any(c.profile == index for c in self.contexts if c is not asker)


class FakeContext:
    """IExecutionContext with the name-based API and the real API's failure modes (False, not raise)."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.shapes: Dict[str, Tuple[int, ...]] = {}
        self.addresses: Dict[str, int] = {}
        self.calls: List[int] = []
        self.streams: List[int] = []  # the stream of every enqueue
        # "The first execution context created will call setOptimizationProfile(0) implicitly. For other
        # execution contexts, setOptimizationProfile() must be called with unique profile index" (NvInferRuntime.h
        # @8.5.2 L1589-1591); from 10 "The newly created execution context will be assigned optimization
        # profile 0" (NvInferRuntime.h @v10.3.0 L2612-2615).
        self.profile: Optional[int] = None if engine.profile_taken(0, self) else 0

    def set_optimization_profile_async(self, index: int, stream: int) -> bool:
        if not 0 <= index < self.engine.num_optimization_profiles or self.engine.profile_taken(index, self):
            return self._fail(f"setOptimizationProfileAsync: profile {index} is not free for this context")
        self.profile = index
        return True

    def _fail(self, message: str) -> bool:
        self.engine.state["error"](message)
        return False

    def set_input_shape(self, name: str, shape: Any) -> bool:
        """False, with the old shape kept, for a name that is not an input or a shape outside the profile:
        "false if the provided name does not map to an input tensor, or if some other error occurred"
        (NvInferRuntime.h @8.5.2 L2560, @v10.3.0 L3738); the profile's range is the valid range
        (IOptimizationProfile, NvInferRuntime.h @v10.3.0 L2152-2155)."""
        tensor = self.engine.tensors.get(name)
        shape = tuple(int(d) for d in shape)
        if self.profile is None:
            return self._fail("set_input_shape: this context has no optimization profile (set one first)")
        if tensor is None or tensor["io"] != "input":
            return self._fail(f"set_input_shape: '{name}' is not an input tensor")
        low, _, high = (tuple(s) for s in self.engine.record["profile"][name])
        fits = len(shape) == len(low) and all(lo <= d <= hi for d, lo, hi in zip(shape, low, high))
        if not fits:
            return self._fail(f"set_input_shape: {shape} is outside the profile {low}..{high}")
        self.shapes[name] = shape
        return True

    def get_tensor_shape(self, name: str) -> Tuple[int, ...]:
        tensor = self.engine.tensors[name]
        if tensor["io"] == "input":
            return self.shapes.get(name, tuple(tensor["shape"]))
        inputs = [t["name"] for t in self.engine.record["inputs"]]
        batch = self.shapes[inputs[0]][0] if inputs[0] in self.shapes else -1
        return tuple(batch if d == -1 else d for d in tensor["shape"])

    def set_tensor_address(self, name: str, address: int) -> bool:
        if name not in self.engine.tensors:
            return self._fail(f"set_tensor_address: '{name}' is not an I/O tensor")
        if int(address) % ALIGNMENT:
            return self._fail(f"set_tensor_address: {address:#x} is not {ALIGNMENT}-byte aligned")
        self.addresses[name] = int(address)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        """False unless every input shape is set and every I/O tensor has an address: "Before calling
        enqueueV3(), each input must have a non-null address and each output must have a non-null address"
        (NvInferRuntime.h @v10.3.0 L3988-3989). The inference runs when the stream does (fake_trt_cuda.py),
        reading the input buffer then and writing the outputs then; the shapes and addresses are those set
        now. Refused while this context's previous enqueue, on another stream, is unfinished (its activation
        memory is in use, NvInferRuntime.h @v10.3.0 L3653-3656)."""
        record = self.engine.record
        if self.profile is None:
            return self._fail("enqueueV3: this context has no optimization profile")
        for tensor in record["inputs"]:
            if tensor["name"] not in self.shapes:
                return self._fail(f"enqueueV3: input '{tensor['name']}' has no shape")
        missing = [n for n in self.engine.names if n not in self.addresses]
        if missing:
            return self._fail(f"enqueueV3: no address for {missing}")
        if self.streams and self.streams[-1] != stream_handle and DEVICE.busy(self.streams[-1]):
            return self._fail(f"enqueueV3: this context's enqueue on stream {self.streams[-1]:#x} has not finished; "
                              "one context runs one inference at a time (use one context per stream)")
        DEVICE.claim(stream_handle, list(self.addresses.values()), "enqueueV3")
        shapes, addresses = dict(self.shapes), dict(self.addresses)
        DEVICE.issue(stream_handle, lambda: self._execute(shapes, addresses))
        self.streams.append(stream_handle)
        self.calls.append(shapes[record["inputs"][0]["name"]][0])
        return True

    def _execute(self, shapes: Dict[str, Tuple[int, ...]], addresses: Dict[str, int]) -> None:
        record = self.engine.record
        feeds = {}
        for tensor in record["inputs"]:
            shape, dtype = shapes[tensor["name"]], np.dtype(NUMPY[tensor["dtype"]])
            data = DEVICE.read(addresses[tensor["name"]], int(np.prod(shape)) * dtype.itemsize)
            feeds[tensor["name"]] = np.frombuffer(data, dtype=dtype).reshape(shape)
        names = [t["name"] for t in record["outputs"]]
        for name, value in zip(names, self.engine.session.run(names, feeds)):
            dtype = NUMPY[self.engine.tensors[name]["dtype"]]
            assert DEVICE.write(addresses[name], np.ascontiguousarray(value, dtype=dtype).tobytes()), (
                f"enqueueV3: output '{name}' buffer too small")
        batch = shapes[record["inputs"][0]["name"]][0]
        self.engine.trt.log["executed"] = self.engine.trt.log.get("executed", 0) + batch
