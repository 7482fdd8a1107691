"""Hand-made quantizer candidates for the selection tests, registered in place of the real ones with
``monkeypatch.setattr(candidates, "QUANTIZERS", ...)``. Each follows the :class:`Quantizer` contract as
the real ones do (edgexfer/quant/candidates.py): a QDQ ONNX model for the target, written under the
request's work folder, that follows the target's rules."""

from __future__ import annotations

import copy
import os
from typing import Tuple

from edgexfer.quant.candidates import CandidateModel, QuantizeRequest, Quantizer
from edgexfer.quant.recipe_quantizer import RecipeQuantizer


def _negate_output(model):
    """The model with its logits negated (a Neg after the output): every top-1 class changes."""
    import onnx

    model = copy.deepcopy(model)
    output = model.graph.output[0].name
    for node in model.graph.node:
        for i, name in enumerate(node.output):
            if name == output:
                node.output[i] = output + "_before_neg"
    model.graph.node.append(onnx.helper.make_node("Neg", [output + "_before_neg"], [output], name="fake_neg"))
    return model


class _Wrapping(Quantizer):
    """edgexfer's recipe candidate, renamed and optionally changed (rules-conforming QDQ all the same)."""

    targets: Tuple[str, ...] = ("cpu", "openvino")
    negate = False

    def quantize(self, target: str, request: QuantizeRequest) -> CandidateModel:
        import onnx

        base = RecipeQuantizer().quantize(target, request)
        model = _negate_output(base.model) if self.negate else copy.deepcopy(base.model)
        path = request.work_dir / f"candidate_{target}_{self.name}.onnx"
        onnx.save(model, os.fspath(path))
        return CandidateModel(self.name, target, model, path, list(base.excluded), {"calib_method": "fake"})


class FlippedQuantizer(_Wrapping):
    """Quantizes like edgexfer, then negates the logits: the least accurate candidate there is."""

    name = "flipped"
    negate = True


class TwinQuantizer(_Wrapping):
    """Quantizes exactly like edgexfer: level on accuracy, so latency decides."""

    name = "twin"


class MissingQuantizer(Quantizer):
    """A quantizer whose package is not installed."""

    name = "missing"
    targets: Tuple[str, ...] = ("cpu", "openvino")
    extra = "missing-extra"

    def availability(self) -> Tuple[bool, str]:
        return False, "missingpkg is not installed"

    def quantize(self, target: str, request: QuantizeRequest) -> CandidateModel:
        raise AssertionError("an unavailable quantizer must not be asked to quantize")
