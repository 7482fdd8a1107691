"""NNCF as a quantizer candidate for the OpenVINO target (optional extra ``edgexfer[nncf]``).

``nncf.quantize`` runs on the float ONNX model through NNCF's ONNX backend with edgexfer's calibration set
(the images already through the model's own preprocessing), and returns a QDQ ONNX model. On the OpenVINO
CPU plugin that model compiles to the same execution graph as NNCF on the OpenVINO IR (ResNet-18: the
same 20 u8 convolutions and u8 fully connected layer, benchmarks/quantizers.py), while staying a QDQ
ONNX file that ``quant/rules.py`` can judge, ONNX Runtime can run and ``edgexfer build --backend openvino``
converts like any other export. Settings: NNCF's ``performance`` preset (symmetric, its default for
CNNs), fast bias correction, target device CPU, and as ignored scope the layers edgexfer's accuracy guard
kept in float for the same target.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Dict, List, Tuple

import numpy as np

from edgexfer.quant.candidates import (
    CandidateModel,
    QuantizeRequest,
    Quantizer,
    installed_version,
    package_availability,
)

log = logging.getLogger(__name__)

MIN_NNCF = (2, 14)  # the first release with ONNX-backend fast bias correction and IgnoredScope(validate=)
SUBSET_SIZE = 300  # NNCF's own default number of calibration samples


def nncf_version() -> str:
    """The installed nncf's version ('' when it is not installed)."""
    return installed_version("nncf")


class NncfQuantizer(Quantizer):
    """``nncf.quantize`` (ONNX backend) with edgexfer's calibration set, for OpenVINO."""

    name = "nncf"
    targets: Tuple[str, ...] = ("openvino",)
    extra = "nncf"

    def __init__(self, preset: str = "performance", fast_bias_correction: bool = True,
                 subset_size: int = SUBSET_SIZE, target_device: str = "CPU"):
        self.preset = preset
        self.fast_bias_correction = fast_bias_correction
        self.subset_size = subset_size
        self.target_device = target_device

    def availability(self) -> Tuple[bool, str]:
        """Usable when nncf >= 2.14 is installed (checked without importing it: the import is slow)."""
        return package_availability("nncf", "nncf", MIN_NNCF)

    def settings(self) -> Dict[str, Any]:
        """The options passed to ``nncf.quantize`` (for the manifest)."""
        return {
            "preset": self.preset,
            "fast_bias_correction": self.fast_bias_correction,
            "subset_size": self.subset_size,
            "target_device": self.target_device,
        }

    def quantize(self, target: str, request: QuantizeRequest) -> CandidateModel:
        """``nncf.quantize`` of the pre-processed float model; the guard's float layers are ignored."""
        import onnx

        from edgexfer.quant.graph import default_opset
        from edgexfer.quant.rules import qdq_summary

        ignored = self._ignored(request, target)
        key = ("nncf", tuple(sorted(self.settings().items())), tuple(ignored))
        started = time.perf_counter()
        if key not in request.memo:
            request.memo[key] = self._run(onnx.load(os.fspath(request.prepared)), request.calib.arrays, ignored)
        model = request.memo[key]
        path = request.work_dir / f"candidate_{target}_{self.name}.onnx"
        onnx.save(model, os.fspath(path))
        details = {
            "target": target,
            "calib_method": "nncf",
            "nncf": nncf_version(),
            "settings": self.settings(),
            "calib_images_used": min(self.subset_size, len(request.calib)),
            "ignored_scope": ignored,
            "excluded_nodes": ignored,
            "qdq": qdq_summary(model),
            "quantize_seconds": round(time.perf_counter() - started, 3),
            "opset": default_opset(model),
        }
        return CandidateModel(self.name, target, model, path, list(ignored), details)

    def _ignored(self, request: QuantizeRequest, target: str) -> List[str]:
        """The layers edgexfer's guard kept in float for ``target`` (any target when it did not run for this
        one), limited to node names of the model NNCF gets."""
        import onnx

        wanted = request.float_layers.get(target) or next(iter(request.float_layers.values()), [])
        if not wanted:
            return []
        names = {node.name for node in onnx.load(os.fspath(request.prepared), load_external_data=False).graph.node}
        return [name for name in wanted if name in names]

    def _run(self, model: Any, arrays: np.ndarray, ignored: List[str]) -> Any:
        import nncf

        input_name = model.graph.input[0].name
        count = min(self.subset_size, len(arrays))
        # one image per item, as NNCF's fast bias correction and its statistics expect
        dataset = nncf.Dataset([arrays[i : i + 1] for i in range(count)], lambda item: {input_name: np.array(item)})
        log.info("nncf %s: quantizing with %d calibration images (%s)", nncf_version(), count, self.settings())
        return nncf.quantize(
            model,
            dataset,
            preset=getattr(nncf.QuantizationPreset, self.preset.upper()),
            target_device=getattr(nncf.TargetDevice, self.target_device),
            subset_size=count,
            fast_bias_correction=self.fast_bias_correction,
            ignored_scope=nncf.IgnoredScope(names=ignored) if ignored else None,
        )
