"""The OpenVINO backend (optional extra ``edgexfer[openvino]``): on x86 the other fast CPU runtime.

Build = convert the ONNX model to OpenVINO IR (``build/openvino_<precision>.xml`` + ``.bin``) with a
sidecar JSON holding the edgexfer metadata. INT8 takes the ``openvino`` target's QDQ model (the quantizer
candidate that won on OpenVINO at export: edgexfer's recipe or NNCF), or the CPU QDQ model in a run
exported without that target: OpenVINO's low-precision transformations turn their FakeQuantize pairs into
INT8 kernels. FP32 and INT8 runs pin the inference
precision to f32 for the layers that stay float, because on CPUs with BF16/AMX OpenVINO would
otherwise quietly run them in bf16 and parity with the ONNX model would drift.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from edgexfer.backends.base import Backend, BuildResult, Runner
from edgexfer.backends.common import as_logits, check_batch, layout_of_shape
from edgexfer.errors import ArtifactError, BackendUnavailableError, ConfigError

_OV_TYPES = {"f32": np.float32, "u8": np.uint8, "f16": np.float32}


def _ov() -> Any:
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailableError(
            f"openvino is not installed ({exc}); pip install 'edgexfer[openvino]'"
        ) from exc
    return openvino


def inference_precision(precision: str) -> str:
    """OpenVINO's INFERENCE_PRECISION_HINT for an edgexfer precision (int8 layers stay int8 either way)."""
    return "f16" if precision == "fp16" else "f32"


def cpu_capabilities() -> List[str]:
    """OpenVINO's OPTIMIZATION_CAPABILITIES of the CPU device (``FP16`` decides whether fp16 runs)."""
    return list(_ov().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


class OpenVinoRunner(Runner):
    """A compiled OpenVINO model on CPU (latency hint, threads = physical cores)."""

    name = "openvino"

    def __init__(
        self,
        xml_path: Path,
        precision: str = "fp32",
        threads: Optional[int] = None,
        device: str = "CPU",
        pin_threads: bool = False,
    ):
        self.xml_path = Path(xml_path)
        self.precision = precision
        self.threads = threads
        self.device = device
        self.pin_threads = pin_threads
        self.compiled: Any = None
        self.request: Any = None
        self._throughput: Any = None
        self.stream_requests = 0
        self._spatial: Tuple[Optional[int], Optional[int]] = (None, None)

    def activate(self) -> None:
        """Read and compile the model; read input dtype/layout from it."""
        from edgexfer.hardware import physical_cores

        ov = _ov()
        core = ov.Core()
        config = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": int(self.threads or physical_cores()),
            "INFERENCE_PRECISION_HINT": inference_precision(self.precision),
        }
        if self.pin_threads:
            config["ENABLE_CPU_PINNING"] = True
        try:
            self.compiled = core.compile_model(str(self.xml_path), self.device, config)
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError with long text
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ArtifactError(
                f"OpenVINO cannot compile '{self.xml_path}' for {self.device}: {first}"
            ) from exc
        port = self.compiled.inputs[0]
        type_name = port.get_element_type().get_type_name()
        if type_name not in _OV_TYPES:
            raise ArtifactError(f"'{self.xml_path}' takes {type_name} input; edgexfer feeds f32 or u8 images")
        self.input_dtype = _OV_TYPES[type_name]
        shape = port.get_partial_shape()
        dims = [d.get_length() if d.is_static else None for d in shape]
        self.input_layout = layout_of_shape(dims)
        hw = dims[2:4] if self.input_layout == "NCHW" else dims[1:3]
        self._spatial = (hw[0], hw[1]) if len(hw) == 2 else (None, None)
        self.request = self.compiled.create_infer_request()

    def deactivate(self) -> None:
        """Drop the compiled model."""
        self.request = None
        self.compiled = None
        self._throughput = None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run a batch through the infer request; returns float32 logits."""
        if self.request is None:
            raise RuntimeError("OpenVinoRunner.infer called outside 'with runner:'")
        array = check_batch(
            batch,
            self.input_dtype,
            self.input_layout,
            self._spatial,
            f"OpenVINO model '{self.xml_path.name}'",
        )
        # Shared input and output: OpenVINO reads the caller's array in place and hands back its own
        # output buffer, which is copied once here (the next call reuses it); the default copies both
        # ways and builds a result dict per call (vendor-parity host overhead, benchmarks/vendor_parity.py).
        self.request.infer({0: array}, share_inputs=True, share_outputs=True)
        output = self.request.get_output_tensor(0).data
        return as_logits(
            np.array(output, copy=True), array.shape[0], f"OpenVINO model '{self.xml_path.name}'"
        )

    def _throughput_model(self) -> Any:
        """The same IR compiled with the THROUGHPUT hint (several CPU streams), made on first use."""
        if self.compiled is None:
            raise RuntimeError("OpenVinoRunner.infer_stream called outside 'with runner:'")
        if self._throughput is None:
            from edgexfer.hardware import physical_cores

            self._throughput = _ov().Core().compile_model(str(self.xml_path), self.device, {
                "PERFORMANCE_HINT": "THROUGHPUT",
                "INFERENCE_NUM_THREADS": int(self.threads or physical_cores()),
                "INFERENCE_PRECISION_HINT": inference_precision(self.precision),
            })
        return self._throughput

    def default_in_flight(self) -> int:
        """OpenVINO's OPTIMAL_NUMBER_OF_INFER_REQUESTS for the THROUGHPUT-compiled model."""
        return int(self._throughput_model().get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))

    def infer_stream(self, batches: Iterable[np.ndarray], in_flight: int = 0) -> Iterator[np.ndarray]:
        """Logits of every batch in order, ``in_flight`` asynchronous infer requests on the THROUGHPUT-
        compiled model (0: OpenVINO's optimal number), used round-robin: the oldest is waited for (and
        its output handed out) before it takes the next batch.

        No Python callbacks (AsyncInferQueue's): a callback makes OpenVINO's threads take the GIL, and
        dropping the compiled model then deadlocks (seen: ~CPUStreamsExecutor joining a thread that waits
        for the GIL the main thread holds).
        """
        from collections import deque

        compiled = self._throughput_model()
        count = in_flight or self.default_in_flight()
        requests = [compiled.create_infer_request() for _ in range(count)]
        self.stream_requests = count
        where = f"OpenVINO model '{self.xml_path.name}'"
        pending: Any = deque()  # (request, batch size), oldest first
        try:
            for batch in batches:
                array = check_batch(batch, self.input_dtype, self.input_layout, self._spatial, where)
                if len(pending) == count:
                    request, size = pending.popleft()
                    request.wait()  # releases the GIL while it waits
                    yield as_logits(np.array(request.get_output_tensor(0).data, copy=True), size, where)
                else:
                    request = requests[len(pending)]
                request.start_async({0: array})  # copies the input: the caller may reuse its array
                pending.append((request, array.shape[0]))
            while pending:
                request, size = pending.popleft()
                request.wait()
                yield as_logits(np.array(request.get_output_tensor(0).data, copy=True), size, where)
        finally:
            for request, _ in pending:  # the consumer stopped early: no request outlives this call
                request.wait()

    def describe(self) -> Dict[str, Any]:
        """Runner facts plus device, threads and OpenVINO version."""
        facts = super().describe()
        facts.update(
            {
                "model": str(self.xml_path),
                "device": self.device,
                "openvino": _ov().get_version(),
                "inference_precision": inference_precision(self.precision),
                "threads": self.threads or "physical cores",
                "pinned": self.pin_threads,
                **({"stream_requests": self.stream_requests} if self.stream_requests else {}),
            }
        )
        return facts


class OpenVinoBackend(Backend):
    """OpenVINO on CPU: fp32, fp16 (where the CPU has FP16 capability) and int8 (QDQ)."""

    name = "openvino"
    precisions = ("fp32", "fp16", "int8")
    int8_source = "onnx_int8_openvino"
    int8_target = "openvino"
    int8_fallback_sources = ("onnx_int8_cpu",)
    suffixes = (".xml",)

    def availability(self) -> Tuple[bool, str]:
        """Usable when openvino imports and lists a CPU device."""
        try:
            ov = _ov()
            devices = ov.Core().available_devices
        except Exception as exc:  # noqa: BLE001 - availability must not raise
            return False, str(exc).splitlines()[0]
        if "CPU" not in devices:
            return False, f"openvino {ov.get_version()} sees no CPU device (devices: {devices})"
        return True, f"openvino {ov.get_version().split('-')[0]} (devices: {', '.join(devices)})"

    def check_precision(self, precision: str) -> None:
        """fp16 needs the CPU's FP16 capability (AVX512-FP16/AMX-FP16 on x86, most Arm cores)."""
        super().check_precision(precision)
        if precision == "fp16":
            self.require_available()
            caps = cpu_capabilities()
            if "FP16" not in caps:
                raise ConfigError(
                    f"backend 'openvino' cannot run fp16 on this CPU (capabilities: "
                    f"{', '.join(caps)}); use fp32 or int8"
                )

    def build(
        self, onnx_path: Path, precision: str, out_dir: Path, options: Optional[Dict[str, Any]] = None
    ) -> BuildResult:
        """Convert ``onnx_path`` to IR ``out_dir/openvino_<precision>.xml`` (+ .bin) and its sidecar."""
        from edgexfer.backends.sidecar import onnx_metadata_props, write_sidecar
        from edgexfer.fsutil import sha256_file
        from edgexfer.hardware import cpu_info

        self.require_available()
        self.check_precision(precision)
        ov = _ov()
        source = Path(onnx_path)
        if not source.is_file():
            raise ArtifactError(f"ONNX model '{source}' does not exist")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        xml = out_dir / f"openvino_{precision}.xml"
        try:
            model = ov.Core().read_model(str(source))
        except Exception as exc:  # noqa: BLE001
            raise ArtifactError(
                f"OpenVINO cannot read '{source}': {str(exc).strip().splitlines()[0]}"
            ) from exc
        # IR is two files; write both into a private temp folder, then move .bin before .xml so a
        # reader never finds an .xml whose .bin is missing or older.
        with tempfile.TemporaryDirectory(prefix=".openvino.", dir=str(out_dir)) as tmp_dir:
            tmp_xml = Path(tmp_dir) / xml.name
            ov.save_model(model, str(tmp_xml), compress_to_fp16=(precision == "fp16"))
            os.replace(tmp_xml.with_suffix(".bin"), xml.with_suffix(".bin"))
            os.replace(tmp_xml, xml)
        cpu = cpu_info()
        facts = {
            "openvino": ov.get_version(),
            "source": str(source),
            "cpu": cpu["model"],
            "cpu_features": cpu["features"],
            "weights_sha256": sha256_file(xml.with_suffix(".bin")),
        }
        write_sidecar(xml, self.name, precision, onnx_metadata_props(source), facts)
        return BuildResult(
            path=xml,
            kind="openvino-ir",
            precision=precision,
            backend=self.name,
            extra={**facts, "weights": xml.with_suffix(".bin").name},
        )

    def artifact_files(self, path: Path) -> List[Path]:
        """The IR is the .xml, its weights (.bin) and the sidecar; the .xml comes last."""
        path = Path(path)
        weights = [path.with_suffix(".bin")] if path.suffix == ".xml" else []
        return weights + super().artifact_files(path)

    def load(self, artifact_path: Path, options: Optional[Dict[str, Any]] = None) -> Runner:
        """A runner for an IR .xml (precision from its sidecar) or an ONNX file directly.

        Options: ``threads``, ``pin_threads``, ``precision`` (overrides the sidecar), ``device``.
        """
        from edgexfer.backends.sidecar import read_sidecar, sidecar_path

        options = dict(options or {})
        path = Path(artifact_path)
        if not path.is_file():
            raise ArtifactError(f"OpenVINO model '{path}' does not exist")
        precision = options.get("precision")
        sidecar = read_sidecar(path) if path.suffix == ".xml" and sidecar_path(path).is_file() else {}
        if precision is None:
            precision = sidecar.get("precision")
        if path.suffix == ".xml":
            _check_weights(path, sidecar.get("build", {}).get("weights_sha256"))
        return OpenVinoRunner(
            path,
            precision=str(precision or "fp32"),
            threads=options.get("threads"),
            device=str(options.get("device", "CPU")),
            pin_threads=bool(options.get("pin_threads", False)),
        )


def _check_weights(xml: Path, recorded: Optional[str]) -> None:
    """The IR's .bin must exist and, when the sidecar recorded its hash, still have it: OpenVINO would
    otherwise run the .xml's graph on other weights without a word."""
    from edgexfer.fsutil import sha256_file

    weights = xml.with_suffix(".bin")
    if not weights.is_file():
        raise ArtifactError(f"OpenVINO IR '{xml}' has no weights file '{weights.name}' beside it")
    if recorded and sha256_file(weights) != recorded:
        raise ArtifactError(
            f"OpenVINO weights '{weights}' changed since '{xml.name}' was built (sha256 differs from its "
            "sidecar); rebuild it with 'edgexfer build'"
        )
