"""INT8 recipes as data: what ONNX Runtime's quantizer is asked for, what is fixed up after, what is checked.

A :class:`QuantRecipe` is a frozen preset with a named constructor per hardware family (the optimum
``AutoQuantizationConfig.avx512_vnni()`` / ``.tensorrt()`` idea). It carries everything that differs
between targets, so the code that drives quantization never asks which target it is:

- the quantizer options (activation/weight types, symmetry, op types, how weights and biases are stored);
- ``post_fixups``: edits of ONNX Runtime's output, each ``fixup(model, ranges)`` (TensorRT: one Q/DQ pair
  per consumer and Q/DQ on residual identity branches, :mod:`edgexfer.quant.fixups`);
- ``rules``: the :class:`~edgexfer.quant.rules.QdqRules` the result must follow.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from edgexfer.errors import ConfigError
from edgexfer.quant import fixups
from edgexfer.quant.graph import WEIGHTED_OPS
from edgexfer.quant.rules import QdqRules, enforce_rules

Fixup = Callable[[Any, Dict[str, Tuple[float, float]]], Any]


@dataclass(frozen=True)
class QuantRecipe:
    """One target family's INT8 post-training quantization recipe (ONNX Runtime QDQ format)."""

    target: str
    activation_type: str  # onnxruntime.quantization.QuantType member name
    weight_type: str
    activation_symmetric: bool
    weight_symmetric: bool
    rules: QdqRules
    op_types: Optional[Tuple[str, ...]] = None  # None: every op ONNX Runtime can quantize
    quantize_bias: bool = True  # int32 bias + DequantizeLinear
    qdq_pair_on_weights: bool = False  # keep float weights behind a Q/DQ pair instead of int8 initializers
    dedicated_qdq_pairs: bool = False
    unquantized_outputs: Tuple[str, ...] = ()  # op types whose outputs get no Q/DQ
    post_fixups: Tuple[Fixup, ...] = field(default=())
    # the runtime (an edgexfer backend) whose scores choose among this target's quantizer candidates
    runtime: str = "onnxruntime"

    @classmethod
    def cpu_x86(cls) -> "QuantRecipe":
        """ONNX Runtime's x86 default for VNNI machines: U8 activations, S8 per-channel weights, every
        QDQ-capable op (also what OpenVINO runs fast)."""
        return cls(
            target="cpu",
            activation_type="QUInt8",
            weight_type="QInt8",
            activation_symmetric=False,
            weight_symmetric=True,
            rules=QdqRules.cpu(),
        )

    @classmethod
    def openvino(cls) -> "QuantRecipe":
        """The x86 recipe, judged by OpenVINO's rules and scored on OpenVINO (where NNCF competes with it)."""
        return dataclasses.replace(cls.cpu_x86(), target="openvino", rules=QdqRules.openvino(), runtime="openvino")

    @classmethod
    def tensorrt(cls) -> "QuantRecipe":
        """TensorRT's QDQ rules with ONNX Runtime's quantizer (deploy-notes.md; the options NVIDIA's
        ModelOpt passes to ORT): symmetric S8, weights kept float behind Q/DQ, no quantized bias."""
        return cls(
            target="tensorrt",
            activation_type="QInt8",
            weight_type="QInt8",
            activation_symmetric=True,
            weight_symmetric=True,
            rules=QdqRules.tensorrt(),
            op_types=WEIGHTED_OPS,
            quantize_bias=False,
            qdq_pair_on_weights=True,
            dedicated_qdq_pairs=True,
            # QDQ on inputs only: TensorRT fuses a conv with the residual add
            # and the next activation when the conv output stays unquantized
            unquantized_outputs=WEIGHTED_OPS,
            post_fixups=(fixups.add_residual_qdq,),
        )

    def quantizer_options(self) -> Dict[str, Any]:
        """Keyword arguments for ``onnxruntime.quantization.quantize_static`` (besides paths and ranges)."""
        from onnxruntime.quantization import QuantFormat, QuantType

        extra: Dict[str, Any] = {
            "ActivationSymmetric": self.activation_symmetric,
            "WeightSymmetric": self.weight_symmetric,
            "QuantizeBias": self.quantize_bias,
            "DedicatedQDQPair": self.dedicated_qdq_pairs,
            "AddQDQPairToWeight": self.qdq_pair_on_weights,
        }
        if self.unquantized_outputs:
            extra["OpTypesToExcludeOutputQuantization"] = list(self.unquantized_outputs)
        return {
            "quant_format": QuantFormat.QDQ,
            "per_channel": True,
            "reduce_range": False,
            "activation_type": getattr(QuantType, self.activation_type),
            "weight_type": getattr(QuantType, self.weight_type),
            "op_types_to_quantize": list(self.op_types) if self.op_types else None,
            "extra_options": extra,
        }

    def fix_up(self, model: Any, ranges: Dict[str, Tuple[float, float]]) -> Any:
        """Apply the recipe's post-fix-ups to ONNX Runtime's output (in place); return the model."""
        for fixup in self.post_fixups:
            fixup(model, ranges)
        return model

    def enforce(self, model: Any, excluded: Sequence[str] = (), source: str = "model") -> None:
        """:func:`~edgexfer.quant.rules.enforce_rules` with this recipe's rules."""
        enforce_rules(model, self.rules, excluded, source)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-safe description for the manifest (fix-ups by name)."""
        return {
            "target": self.target,
            "activation_type": self.activation_type,
            "weight_type": self.weight_type,
            "activation_symmetric": self.activation_symmetric,
            "weight_symmetric": self.weight_symmetric,
            "op_types": list(self.op_types) if self.op_types else None,
            "quantize_bias": self.quantize_bias,
            "qdq_pair_on_weights": self.qdq_pair_on_weights,
            "dedicated_qdq_pairs": self.dedicated_qdq_pairs,
            "unquantized_outputs": list(self.unquantized_outputs),
            "post_fixups": [f.__name__ for f in self.post_fixups],
            "rules": self.rules.name,
            "runtime": self.runtime,
        }

    def quantization_key(self) -> Tuple[Any, ...]:
        """What decides the quantized model (not the target's name, rules or scoring runtime): two recipes
        with the same key make the same model from the same ranges."""
        described = self.to_dict()
        return tuple((k, repr(v)) for k, v in sorted(described.items()) if k not in ("target", "rules", "runtime"))


RECIPES: Dict[str, QuantRecipe] = {
    r.target: r for r in (QuantRecipe.cpu_x86(), QuantRecipe.tensorrt(), QuantRecipe.openvino())
}


def recipe_for(target: str) -> QuantRecipe:
    """The recipe of a target family; ConfigError naming the known ones otherwise."""
    if target not in RECIPES:
        raise ConfigError(f"unknown INT8 target '{target}'; choose one of {', '.join(RECIPES)}")
    return RECIPES[target]
