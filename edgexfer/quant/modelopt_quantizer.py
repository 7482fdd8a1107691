"""NVIDIA ModelOpt's ONNX PTQ as a quantizer candidate for the TensorRT target (optional extra
``edgexfer[modelopt]``).

``modelopt.onnx.quantization.quantize`` inserts TensorRT-style Q/DQ (symmetric int8, per-channel weights,
per-tensor activations) into the pre-processed float model and calibrates with ONNX Runtime. Here it is
asked for ONNX Runtime's CPU execution provider only (``calibration_eps=["cpu"]``: it runs without CUDA,
it logs that the CUDA provider and NVML are missing and goes on), fp32 for the layers it leaves in
float (``high_precision_dtype="fp32"``: its default fp16 conversion lifts the opset to 19, above what
TensorRT 8.5/8.6 parse) and the export's opset. Its model is judged by the TensorRT rules in
:mod:`edgexfer.quant.rules` like edgexfer's own. The layers edgexfer's accuracy guard kept in float for
the target are passed as ``nodes_to_exclude``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

from edgexfer.quant.candidates import (
    CandidateModel,
    QuantizeRequest,
    Quantizer,
    installed_version,
    package_availability,
)

log = logging.getLogger(__name__)

MIN_MODELOPT = (0, 27)  # calibration_eps and high_precision_dtype in quantize()
CALIB_IMAGES = 128  # ModelOpt calibrates on every image it is given, in one ONNX Runtime pass


def modelopt_version() -> str:
    """The installed nvidia-modelopt's version ('' when it is not installed)."""
    return installed_version("nvidia-modelopt")


def float_weighted(model: Any) -> List[str]:
    """Names of the Conv/Gemm/MatMul nodes of ``model`` whose weight input comes through no DequantizeLinear."""
    from edgexfer.quant.graph import WEIGHTED_OPS, Graph

    graph = Graph(model)
    return [node.name for node in graph.nodes if node.op_type in WEIGHTED_OPS and len(node.input) > 1
            and graph.dequantized_by(node.input[1]) is None]


class ModelOptQuantizer(Quantizer):
    """``modelopt.onnx.quantization.quantize`` (int8, max calibration, ONNX Runtime on the CPU) for TensorRT."""

    name = "modelopt"
    targets: Tuple[str, ...] = ("tensorrt",)
    extra = "modelopt"

    def __init__(self, calibration_method: str = "max", calib_images: int = CALIB_IMAGES):
        self.calibration_method = calibration_method
        self.calib_images = calib_images

    def availability(self) -> Tuple[bool, str]:
        """Usable when nvidia-modelopt (with its [onnx] dependencies) is installed; checked without importing."""
        ok, reason = package_availability("modelopt", "nvidia-modelopt", MIN_MODELOPT)
        if ok and importlib.util.find_spec("onnx_graphsurgeon") is None:
            return False, "nvidia-modelopt is installed without its [onnx] dependencies (onnx_graphsurgeon)"
        return ok, reason

    def settings(self) -> Dict[str, Any]:
        """The options passed to ModelOpt (for the manifest)."""
        return {"quantize_mode": "int8", "calibration_method": self.calibration_method,
                "calibration_eps": ["cpu"], "high_precision_dtype": "fp32", "calib_images": self.calib_images}

    def quantize(self, target: str, request: QuantizeRequest) -> CandidateModel:
        """ModelOpt's int8 QDQ model of the pre-processed float model; the guard's float layers excluded."""
        import onnx

        from edgexfer.quant.graph import default_opset
        from edgexfer.quant.rules import qdq_summary

        excluded = self._excluded(request, target)
        started = time.perf_counter()
        model = self._run(request, excluded)
        # ModelOpt keeps some layers in float by its own rules (e.g. a classifier's Gemm): float layers,
        # like the ones the guard excludes, which the TensorRT rules then accept by name
        own_float = [name for name in float_weighted(model) if name not in excluded]
        path = request.work_dir / f"candidate_{target}_{self.name}.onnx"
        onnx.save(model, os.fspath(path))
        details = {
            "target": target,
            "calib_method": f"modelopt-{self.calibration_method}",
            "modelopt": modelopt_version(),
            "settings": self.settings(),
            "excluded_nodes": excluded + own_float,
            "left_in_float_by_modelopt": own_float,
            "qdq": qdq_summary(model),
            "quantize_seconds": round(time.perf_counter() - started, 3),
            "opset": default_opset(model),
            "modelopt_opset": getattr(self, "converted_from", None),
            "dedicated_qdq_pairs_added": getattr(self, "dedicated_pairs", 0),
        }
        return CandidateModel(self.name, target, model, path, excluded + own_float, details)

    def _excluded(self, request: QuantizeRequest, target: str) -> List[str]:
        import onnx

        wanted = request.float_layers.get(target, [])
        names = {node.name for node in onnx.load(os.fspath(request.prepared), load_external_data=False).graph.node}
        return [name for name in wanted if name in names]

    def _run(self, request: QuantizeRequest, excluded: List[str]) -> Any:
        import onnx
        from modelopt.onnx.quantization import quantize

        from edgexfer.quant.graph import default_opset

        source = onnx.load(os.fspath(request.prepared), load_external_data=False)
        input_name = source.graph.input[0].name
        arrays = request.calib.arrays[: self.calib_images]
        log.info("modelopt %s: quantizing with %d calibration images", modelopt_version(), len(arrays))
        with tempfile.TemporaryDirectory(prefix=".modelopt-", dir=os.fspath(request.work_dir)) as work:
            out = Path(work) / "model_int8.onnx"
            quantize(
                onnx_path=os.fspath(request.prepared),
                quantize_mode="int8",
                calibration_data={input_name: arrays},
                calibration_method=self.calibration_method,
                calibration_eps=["cpu"],
                high_precision_dtype="fp32",
                nodes_to_exclude=excluded or None,
                opset=default_opset(source),
                output_path=os.fspath(out),
                log_level="WARNING",
            )
            model = onnx.load(os.fspath(out))
        return self._to_tensorrt_rules(model, default_opset(source))

    def _to_tensorrt_rules(self, model: Any, opset: int) -> Any:
        """ModelOpt (0.47) lifts int8 models to opset 19 and shares one Q/DQ pair between consumers:
        convert back to the export's opset (ONNX's version converter; the Q/DQ it adds have the same
        int8 semantics in 13-19) and give each consumer its own pair (edgexfer's TensorRT fix-up)."""
        from onnx import version_converter

        from edgexfer.quant.fixups import dedicate_qdq_pairs
        from edgexfer.quant.graph import default_opset

        self.converted_from = default_opset(model)
        if self.converted_from > opset:
            model = version_converter.convert_version(model, opset)
        self.dedicated_pairs = dedicate_qdq_pairs(model)
        return model
