"""edgexfer's own recipe as a quantizer candidate: ONNX Runtime's quantizer with the target's
:class:`~edgexfer.quant.recipes.QuantRecipe`, every calibration method scored, the accuracy guard
(:func:`edgexfer.quant.guard.quantize_target`)."""

from __future__ import annotations

import os
from typing import Any, Tuple

from edgexfer.quant.candidates import CandidateModel, QuantizeRequest, Quantizer
from edgexfer.quant.recipes import RECIPES, recipe_for


class RecipeQuantizer(Quantizer):
    """edgexfer's per-target recipes (always installed)."""

    name = "edgexfer"
    targets: Tuple[str, ...] = tuple(RECIPES)

    def quantize(self, target: str, request: QuantizeRequest) -> CandidateModel:
        """The guard's model for ``target``'s recipe; targets whose recipes quantize alike (cpu, openvino)
        share one run of it."""
        import onnx

        from edgexfer.quant.guard import quantize_target

        recipe = recipe_for(target)
        key = ("edgexfer", recipe.quantization_key())
        if key not in request.memo:
            request.memo[key] = quantize_target(request.job, recipe, _own_judge(recipe, request))
        outcome = request.memo[key]
        details = dict(outcome.metrics, target=target, recipe=recipe.to_dict())
        if outcome.target != target:
            details["same_model_as"] = outcome.target
        excluded = list(details["excluded_nodes"])
        request.float_layers[target] = excluded
        path = request.work_dir / f"candidate_{target}_{self.name}.onnx"
        onnx.save(outcome.model, os.fspath(path))
        return CandidateModel(self.name, target, outcome.model, path, excluded, details)


def _own_judge(recipe: Any, request: QuantizeRequest) -> Any:
    """The request's judge for targets scored on ONNX Runtime (it may be a TensorRT engine, or ONNX Runtime
    standing in for one); None (ONNX Runtime) for targets scored on their own runtime by the competition."""
    return request.judge if recipe.runtime == "onnxruntime" else None
