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
        key = ("edgexfer", recipe.quantization_key(), len(request.eval_labels))
        if key not in request.memo:
            request.memo[key] = quantize_target(_job_for(request), recipe, _own_judge(recipe, request))
        outcome = request.memo[key]
        details = dict(outcome.metrics, target=target, recipe=recipe.to_dict())
        if outcome.target != target:
            details["same_model_as"] = outcome.target
        excluded = list(details["excluded_nodes"])
        request.float_layers[target] = excluded
        path = request.work_dir / f"candidate_{target}_{self.name}.onnx"
        onnx.save(outcome.model, os.fspath(path))
        return CandidateModel(self.name, target, outcome.model, path, excluded, details, logits=outcome.logits)


def _job_for(request: QuantizeRequest) -> Any:
    """The request's job, judged on the request's held-out images (a stand-in judge takes a stride of them)."""
    import dataclasses

    job = request.job
    if len(job.eval_labels) == len(request.eval_labels):
        return job
    return dataclasses.replace(job, eval_inputs=request.eval_inputs, eval_labels=request.eval_labels,
                               float_logits=request.float_logits)


def _own_judge(recipe: Any, request: QuantizeRequest) -> Any:
    """The request's judge for targets scored on ONNX Runtime (it may be a TensorRT engine, or ONNX Runtime
    standing in for one); None (ONNX Runtime) for targets scored on their own runtime by the competition."""
    return request.judge if recipe.runtime == "onnxruntime" else None


# the guard's scores describe the model before correction: not this candidate's
_SCORE_KEYS = ("int8_top1", "agreement", "snr_db", "drop", "eval_images", "scored_on", "stand_in", "scoring",
               "guard", "method_scores", "method_score_images", "quantize_seconds")
BIAS_CORRECTION_IMAGES = 128


class BiasCorrectedRecipeQuantizer(RecipeQuantizer):
    """edgexfer's recipe, then empirical bias correction (:mod:`edgexfer.quant.bias_correction`) on up to
    :data:`BIAS_CORRECTION_IMAGES` calibration images. The graph is the recipe's own (same latency), so the
    competition keeps it only when it is more accurate on the target than the uncorrected recipe."""

    name = "edgexfer-bc"

    def quantize(self, target: str, request: QuantizeRequest) -> CandidateModel:
        """The recipe's model for ``target`` with every quantized Conv/Gemm bias corrected."""
        import time

        import onnx

        from edgexfer.quant.bias_correction import correct_biases

        started = time.perf_counter()
        base = RecipeQuantizer.quantize(self, target, request)
        key = ("edgexfer-bc", recipe_for(target).quantization_key(), tuple(base.excluded))
        if key not in request.memo:
            model = onnx.ModelProto()
            model.CopyFrom(base.model)
            correction = correct_biases(onnx.load(os.fspath(request.prepared)), model,
                                        request.calib.arrays[:BIAS_CORRECTION_IMAGES])
            request.memo[key] = (model, correction)
        model, correction = request.memo[key]
        details = {k: v for k, v in base.details.items() if k not in _SCORE_KEYS}
        details.update(bias_correction=correction.to_dict(), same_graph_as=RecipeQuantizer.name,
                       quantize_seconds=round(time.perf_counter() - started, 3))
        path = request.work_dir / f"candidate_{target}_{self.name}.onnx"
        onnx.save(model, os.fspath(path))
        return CandidateModel(self.name, target, model, path, list(base.excluded), details)
