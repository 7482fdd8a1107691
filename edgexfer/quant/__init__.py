"""INT8 post-training quantization, below the stages (stages import quant; quant imports no stage).

calibration (image set, data reader) -> ranges (every method in one pass) -> cache (ranges on disk) ->
recipes (per-target presets: quantizer options, fix-ups, rules) -> ort_quantize (ONNX Runtime's
quantizer fed the ranges) -> guard (score candidates, keep sensitive layers in float; sensitivity);
graph, rules and fixups are the QDQ structure: read, check, edit.
"""
