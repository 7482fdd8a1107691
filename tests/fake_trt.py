"""A fake ``tensorrt`` module for testing the TensorRT backend's logic on machines without a GPU.

It mimics the documented Python API surface edgexfer uses (Builder, NetworkDefinitionCreationFlag,
BuilderFlag, OnnxParser, IBuilderConfig, timing caches, optimization profiles, Runtime, ICudaEngine,
IExecutionContext with the name-based API), with the per-version differences: 11.x has no
EXPLICIT_BATCH and no FP16/INT8 builder flags. Its "engine" is the ONNX model run by ONNX Runtime on
fake device memory, so a build -> load -> infer round trip checks buffer plumbing and batching.
Enum values are deliberately not TensorRT's numbers: code must use names.
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np


def make_fake_trt(
    version: str = "10.3.0",
    dla_cores: int = 0,
    build_fails: bool = False,
    parse_errors: Optional[List[str]] = None,
) -> Any:
    """A module-like namespace for TensorRT ``version``; ``.log`` records what the code did."""
    major = int(version.split(".")[0])
    log: Dict[str, Any] = {"flags": set(), "cache_in": [], "parsed": [], "profiles": []}

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 5

    if major < 11:
        NetworkDefinitionCreationFlag.EXPLICIT_BATCH = 3

    class BuilderFlag:
        GPU_FALLBACK = "GPU_FALLBACK"
        VERSION_COMPATIBLE = "VERSION_COMPATIBLE"
        TF32 = "TF32"

    if major < 11:
        BuilderFlag.FP16 = "FP16"
        BuilderFlag.INT8 = "INT8"

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            self.level = level

    class TensorIOMode:
        INPUT = "in"
        OUTPUT = "out"

    class Tensor:
        def __init__(self, name: str, shape: tuple) -> None:
            self.name, self.shape = name, shape

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags = flags
            self.inputs: List[Tensor] = []

        def get_input(self, index: int) -> Tensor:
            return self.inputs[index]

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger) -> None:
            self.network = network
            self.errors = list(parse_errors or [])

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, index: int) -> Any:
            return types.SimpleNamespace(desc=lambda: self.errors[index])

        def parse_from_file(self, path: str) -> bool:
            import onnx

            model = onnx.load(path)
            log["parsed"].append(
                {"path": path, "initializer_types": sorted({t.data_type for t in model.graph.initializer})}
            )
            first = model.graph.input[0]
            dims = tuple(d.dim_value if d.dim_value > 0 else -1 for d in first.type.tensor_type.shape.dim)
            self.network.inputs.append(Tensor(first.name, dims))
            self.network.source = path
            return not self.errors

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def serialize(self) -> bytes:
            return self.data + b"+tuned"

    class Profile:
        def set_shape(self, name: str, low: tuple, opt: tuple, high: tuple) -> None:
            log["profiles"].append((name, low, opt, high))

    class Config:
        def __init__(self) -> None:
            self.cache: Optional[TimingCache] = None
            self.hardware_compatibility_level = None
            self.default_device_type = None
            self.DLA_core = None

        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            log["workspace"] = (pool, size)

        def set_flag(self, flag: str) -> None:
            log["flags"].add(flag)

        def create_timing_cache(self, data: bytes) -> TimingCache:
            log["cache_in"].append(bytes(data))
            return TimingCache(bytes(data))

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            self.cache = cache
            return True

        def get_timing_cache(self) -> TimingCache:
            return self.cache

        def add_optimization_profile(self, profile: Profile) -> int:
            return 0

    class Builder:
        def __init__(self, logger: Logger) -> None:
            self.num_DLA_cores = dla_cores

        def create_network(self, flags: int) -> Network:
            log["network_flags"] = flags
            return Network(flags)

        def create_builder_config(self) -> Config:
            config = Config()
            log["config"] = config
            return config

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> Optional[bytes]:
            if build_fails:
                return None
            return b"FAKEENGINE:" + str(network.source).encode()

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            self.engine_host_code_allowed = False

        def deserialize_cuda_engine(self, data: bytes) -> Any:
            if not data.startswith(b"FAKEENGINE:"):
                return None
            return FakeEngine(Path(data[len(b"FAKEENGINE:") :].decode()), TensorIOMode)

    namespace = types.SimpleNamespace(
        __version__=version,
        NetworkDefinitionCreationFlag=NetworkDefinitionCreationFlag,
        BuilderFlag=BuilderFlag,
        Logger=Logger,
        Builder=Builder,
        OnnxParser=OnnxParser,
        Runtime=Runtime,
        TensorIOMode=TensorIOMode,
        MemoryPoolType=types.SimpleNamespace(WORKSPACE="WORKSPACE"),
        HardwareCompatibilityLevel=types.SimpleNamespace(AMPERE_PLUS="AMPERE_PLUS"),
        DeviceType=types.SimpleNamespace(DLA="DLA", GPU="GPU"),
        nptype=lambda dtype: {"float32": np.float32, "uint8": np.uint8}[dtype],
        log=log,
    )
    return namespace


class FakeEngine:
    """An 'engine' that runs the ONNX model with ONNX Runtime; profile max batch 4."""

    MAX_BATCH = 4

    def __init__(self, onnx_path: Path, modes: Any) -> None:
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        self.modes = modes
        first = self.session.get_inputs()[0]
        self.names = [first.name, self.session.get_outputs()[0].name]
        self.input_shape = tuple(d if isinstance(d, int) else -1 for d in first.shape)
        self.num_io_tensors = 2

    def get_tensor_name(self, index: int) -> str:
        return self.names[index]

    def get_tensor_mode(self, name: str) -> str:
        return self.modes.INPUT if name == self.names[0] else self.modes.OUTPUT

    def get_tensor_dtype(self, name: str) -> str:
        return "float32"

    def get_tensor_shape(self, name: str) -> tuple:
        return self.input_shape if name == self.names[0] else (-1, 3)

    def get_tensor_profile_shape(self, name: str, profile: int) -> tuple:
        rest = self.input_shape[1:]
        return ((1,) + rest, (1,) + rest, (self.MAX_BATCH,) + rest)

    def create_execution_context(self) -> "FakeContext":
        return FakeContext(self)


class FakeContext:
    """Name-based execution on :class:`FakeMemory` addresses."""

    memory: "FakeMemory" = None  # set by the test

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.shapes: Dict[str, tuple] = {}
        self.addresses: Dict[str, int] = {}
        self.calls: List[int] = []

    def set_input_shape(self, name: str, shape: tuple) -> bool:
        if shape[0] > FakeEngine.MAX_BATCH:
            raise AssertionError(f"batch {shape[0]} exceeds the profile maximum")
        self.shapes[name] = shape
        return True

    def get_tensor_shape(self, name: str) -> tuple:
        batch = self.shapes[self.engine.names[0]][0]
        return (batch, 3) if name == self.engine.names[1] else self.shapes[name]

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream: int) -> bool:
        in_name, out_name = self.engine.names
        shape = self.shapes[in_name]
        data = FakeContext.memory.read(self.addresses[in_name], int(np.prod(shape)) * 4)
        inputs = np.frombuffer(data, dtype=np.float32).reshape(shape)
        logits = self.engine.session.run([out_name], {in_name: inputs})[0].astype(np.float32)
        FakeContext.memory.write(self.addresses[out_name], logits.tobytes())
        self.calls.append(shape[0])
        return True


class FakeMemory:
    """Device memory as host bytearrays keyed by fake addresses."""

    name = "fake"

    def __init__(self) -> None:
        self.buffers: Dict[int, bytearray] = {}
        self.next = 0x1000
        self.freed: List[int] = []
        FakeContext.memory = self

    def alloc(self, nbytes: int) -> int:
        address = self.next
        self.buffers[address] = bytearray(nbytes)
        self.next += nbytes + 256
        return address

    def free(self, handle: int) -> None:
        self.freed.append(handle)

    def pointer(self, handle: int) -> int:
        return handle

    def to_device(self, handle: int, array: np.ndarray) -> None:
        self.write(handle, array.tobytes())

    def to_host(self, array: np.ndarray, handle: int) -> None:
        array.reshape(-1).view(np.uint8)[:] = np.frombuffer(self.read(handle, array.nbytes), dtype=np.uint8)

    def write(self, address: int, data: bytes) -> None:
        buffer = self.buffers[address]
        assert len(data) <= len(buffer), "write past the end of a device buffer"
        buffer[: len(data)] = data

    def read(self, address: int, nbytes: int) -> bytes:
        buffer = self.buffers[address]
        assert nbytes <= len(buffer), "read past the end of a device buffer"
        return bytes(buffer[:nbytes])

    def stream_handle(self) -> int:
        return 7

    def synchronize(self) -> None:
        pass

    def close(self) -> None:
        pass
