"""Every TensorRT-version-dependent build decision, as pure functions of plain values.

TensorRT 8.5/8.6 (JetPack 5, 6.0), 10.x (JetPack 6.1+, desktops) and 11.x differ in how a network is
created, how precision is chosen, what the ONNX parser accepts and what compatibility modes exist.
Keeping the decisions here, as functions of a version tuple and plain values, lets them be unit-tested
on machines without TensorRT; :mod:`edgexfer.backends.trt_build` and the runner only apply them.
Whether an engine built on one machine runs on another is :mod:`edgexfer.backends.trt_portability`.

Sources are cited per decision (NVIDIA/TensorRT tags, onnx/onnx-tensorrt release branches,
docs.nvidia.com pages).
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from edgexfer.errors import ConfigError

Version = Tuple[int, int, int]
MIN_VERSION: Version = (8, 5, 0)
DEVICE_MEMORY_PROVIDERS = ("polygraphy", "cuda-python", "torch")
BATCH_OPTIONS = ("min_batch", "opt_batch", "max_batch")
# What to install for CUDA buffers. cuda-python 13 links CUDA runtime 13 and needs driver >= 580
# (cuda.core install notes); JetPack 5 is CUDA 11.4 on Python 3.8 (11.8.x is the line that has
# cuda.bindings.runtime there: cuda-python 11.8.4 release notes); JetPack 6 and desktops take 12.x.
CUDA_PYTHON_ADVICE = (
    "cuda-python 12.x ('cuda-python>=12.6.1,<13') on CUDA 12 drivers and JetPack 6, "
    "11.8.x ('cuda-python>=11.8.4,<12') on JetPack 5; 13.x only with driver 580+"
)


def parse_version(text: str) -> Version:
    """'10.3.0.26' -> (10, 3, 0); missing parts are 0."""
    numbers = [int(n) for n in re.findall(r"\d+", str(text))[:3]]
    if not numbers:
        raise ConfigError(f"cannot read a TensorRT version from {text!r}")
    while len(numbers) < 3:
        numbers.append(0)
    return (numbers[0], numbers[1], numbers[2])


def _v(version: Version) -> str:
    return ".".join(map(str, version))


def check_supported(version: Version) -> None:
    """Refuse TensorRT older than 8.5 (no name-based execution API, no build_serialized_network flow)."""
    if version < MIN_VERSION:
        raise ConfigError(
            f"TensorRT {_v(version)} is too old; edgexfer needs TensorRT 8.5 or newer (JetPack 5.1+)"
        )


def typing_mode(version: Version, precision: str, strongly_typed: Optional[bool] = None) -> str:
    """'strong' or 'weak' network typing for a build.

    11.x is always strong. 8.x is always weak here. On 10.x the user may ask for either; the default
    stays weak even for int8 on 10.12+, where ``BuilderFlag.INT8``/``FP16`` are deprecated
    (pyCoreDoc.h @v10.13.0) but still work: a strongly typed Q/DQ network runs every layer outside
    the Q/DQ pairs in fp32 unless the ONNX itself is converted to fp16, so switching the default
    would silently change both speed and the accuracy guard's fp16 fallback. 11.x removes the flags.
    """
    if version[0] >= 11:
        if strongly_typed is False:
            raise ConfigError("TensorRT 11 builds only strongly typed networks; drop --weakly-typed")
        return "strong"
    if version[0] < 10:
        if strongly_typed:
            raise ConfigError(
                f"strongly typed networks need TensorRT 10 or newer (this is {_v(version)}); "
                "drop --strongly-typed"
            )
        return "weak"
    return "strong" if strongly_typed else "weak"


def network_flags(trt: Any, version: Version, typing: str) -> int:
    """The ``create_network`` flags, looked up by name on ``trt.NetworkDefinitionCreationFlag``.

    8.x needs EXPLICIT_BATCH; 10.x ignores it and offers STRONGLY_TYPED; 11.x has no EXPLICIT_BATCH
    and STRONGLY_TYPED is always on (pyCore.cpp @v10.3.0 L1502-1505, @v11.1 L1771-1779).
    """
    flags_enum = trt.NetworkDefinitionCreationFlag
    flags = 0
    if version[0] < 10:
        flags |= 1 << int(flags_enum.EXPLICIT_BATCH)
    if typing == "strong" and version[0] == 10:
        flags |= 1 << int(flags_enum.STRONGLY_TYPED)
    return flags


def precision_flags(
    version: Version, precision: str, typing: str, int8_fp16_fallback: bool = True
) -> List[str]:
    """Names of ``trt.BuilderFlag`` members to set.

    Weak typing: fp16 -> FP16; int8 -> INT8 (8.x needs it for Q/DQ), plus FP16 for the layers left
    unquantized (``int8_fp16_fallback=False`` keeps them fp32). Strong typing sets none: the
    precision is in the ONNX tensors' types and Q/DQ nodes.
    """
    if typing == "strong":
        return []
    if precision == "fp16":
        return ["FP16"]
    if precision == "int8":
        return ["INT8", "FP16"] if int8_fp16_fallback else ["INT8"]
    return []


def flags_to_clear(tf32: bool) -> List[str]:
    """``BuilderFlag`` members to clear: TF32, unless asked for.

    TF32 is "Enabled by default" (BuilderFlag.TF32, pyCoreDoc.h @v10.13.0), so an "fp32" engine on
    Ampere/Orin and newer computes its convolutions and matmuls in TF32. Polygraphy clears it unless
    ``tf32`` is requested (backend/trt/config.py @v10.3.0 L321-325); so does edgexfer.
    """
    return [] if tf32 else ["TF32"]


def needs_fp16_onnx(version: Version, precision: str, typing: str) -> bool:
    """Whether the float ONNX must be converted to fp16 tensors before parsing (strong-typed fp16)."""
    return precision == "fp16" and typing == "strong"


# The newest ONNX opset the TensorRT 8.5/8.6 parsers read (onnx-tensorrt docs/operators.md, 8.5-GA and
# 8.6-GA: "TensorRT 8.5/8.6 supports operators up to Opset 17"). The one copy of this fact: the export
# stage and the TensorRT Q/DQ rules read it from here.
TRT8_MAX_OPSET = 17
# Ops the TensorRT 8.5 ONNX parser cannot import (operators.md @release/8.5-GA: "LayerNormalization | N";
# supported from 8.6-GA). torch writes layer_norm as LayerNormalization only from opset 17.
TRT85_UNSUPPORTED_OPS = {"LayerNormalization": "re-export with 'edgexfer export --opset 16' (torch then writes "
                         "layer norm as primitive ops)"}
# uint8 network inputs: the parser's Cast lists UINT8 from 8.6-GA (operators.md @release/8.6-GA L33; the
# 8.5-GA table lists FP32, FP16, INT32, INT8, BOOL). The 8.5-GA importer source does accept a Cast
# from UINT8 to FLOAT/HALF (builtin_op_importers.cpp @release/8.5-GA L311-315), so this gate follows
# the documented support and can be lowered to 8.5 once a JetPack 5 device confirms it.
UINT8_INPUT_MIN: Version = (8, 6, 0)


def check_parsable(version: Version, opset: int, op_types: Sequence[str], uint8_inputs: bool) -> None:
    """Refuse, with one line each, ONNX models this TensorRT's parser documents it cannot read."""
    if version[0] < 10 and opset > TRT8_MAX_OPSET:
        raise ConfigError(
            f"TensorRT {version[0]}.{version[1]} reads ONNX opset <= {TRT8_MAX_OPSET}, the model has opset "
            f"{opset}; re-export with 'edgexfer export --opset {TRT8_MAX_OPSET}'"
        )
    if version < (8, 6, 0):
        for op, advice in TRT85_UNSUPPORTED_OPS.items():
            if op in op_types:
                raise ConfigError(f"TensorRT {_v(version)}'s ONNX parser cannot read {op}; {advice}")
    if uint8_inputs and version < UINT8_INPUT_MIN:
        raise ConfigError(
            f"TensorRT {_v(version)} cannot take a uint8 input (its ONNX parser casts from UINT8 from 8.6 "
            "on); build from the float model with '--source onnx', or use TensorRT 8.6 or newer"
        )


def check_int8_source(metadata: Mapping[str, str], op_types: Sequence[str]) -> None:
    """TensorRT int8 needs the symmetric S8 Q/DQ artifact, not a float model or the CPU (U8) recipe."""
    if "QuantizeLinear" not in op_types or "DequantizeLinear" not in op_types:
        raise ConfigError(
            "TensorRT int8 needs a Q/DQ model (explicit quantization); this ONNX has no "
            "QuantizeLinear/DequantizeLinear nodes; run 'edgexfer export RUN --int8 --target tensorrt'"
        )
    target = metadata.get("edgexfer.target")
    if target and target != "tensorrt":
        raise ConfigError(
            f"this Q/DQ model was made for target '{target}' (U8 activations); TensorRT needs "
            "the symmetric S8 artifact 'onnx_int8_tensorrt' from 'edgexfer export --target tensorrt'"
        )


def compatibility_settings(
    version: Version, version_compatible: bool, hardware_compatible: bool, build_cc: str = ""
) -> Dict[str, Any]:
    """Builder flags / hardware level for portable engines (both exist from TensorRT 8.6).

    AMPERE_PLUS "is only supported for engines built on NVIDIA Ampere and later GPUs"
    (HardwareCompatibilityLevelDoc, @v8.6.1 and main), so a pre-Ampere build GPU is refused here
    instead of failing inside TensorRT.
    """
    settings: Dict[str, Any] = {"flags": [], "hardware_compatibility_level": None}
    if (version_compatible or hardware_compatible) and version < (8, 6, 0):
        raise ConfigError(
            f"version- and hardware-compatible engines need TensorRT 8.6+ (this is {_v(version)}); "
            "build without --version-compatible/--hardware-compatible"
        )
    if hardware_compatible and build_cc and cc_value(build_cc) < 8.0:
        raise ConfigError(
            f"--hardware-compatible (AMPERE_PLUS) engines can only be built on an Ampere or newer GPU "
            f"(compute capability >= 8.0); this GPU is {build_cc}; build without --hardware-compatible"
        )
    if version_compatible:
        settings["flags"].append("VERSION_COMPATIBLE")
    if hardware_compatible:
        settings["hardware_compatibility_level"] = "AMPERE_PLUS"
    return settings


def dla_settings(
    version: Version, precision: str, dla_core: Optional[int], dla_cores_here: int
) -> Dict[str, Any]:
    """Device type, core and GPU fallback for DLA (Jetson Xavier/Orin); empty dict without DLA.

    DLA runs fp16 and int8 only. An explicitly quantized (Q/DQ) INT8 network is refused on DLA before
    TensorRT 10: NVIDIA's Orin DLA operator table for TensorRT 8.5 has no QuantizeLinear /
    DequantizeLinear (NVIDIA/Deep-Learning-Accelerator-SW operators/README.md), and NVIDIA's route for
    Q/DQ models to DLA is to strip the Q/DQ nodes into a calibration cache (same repository,
    tools/qdq-translator/README.md), so with GPU_FALLBACK the Q/DQ graph would quietly run on the GPU.
    """
    if dla_core is None:
        return {}
    if precision == "fp32":
        raise ConfigError(
            "DLA runs fp16 or int8 only; build with --precision fp16 or int8, or drop --dla-core"
        )
    if precision == "int8" and version[0] < 10:
        raise ConfigError(
            f"TensorRT {_v(version)} cannot run a Q/DQ (explicitly quantized) INT8 model on DLA; it would "
            f"fall back to the GPU; build --precision fp16 --dla-core {dla_core} for DLA, or int8 without --dla-core"
        )
    if dla_cores_here <= 0:
        raise ConfigError(
            f"--dla-core {dla_core} asked for, but this device has no DLA cores (DLA exists on "
            "Jetson AGX Xavier/Orin and Orin NX; TensorRT 11.0-11.3 has none); drop --dla-core"
        )
    if not 0 <= dla_core < dla_cores_here:
        raise ConfigError(
            f"--dla-core {dla_core} does not exist; this device has DLA cores 0..{dla_cores_here - 1}"
        )
    return {"default_device_type": "DLA", "DLA_core": int(dla_core), "flags": ["GPU_FALLBACK"]}


def batch_profile(
    onnx_batch: Optional[int], given: Mapping[str, Any], defaults: Mapping[str, Any], dla: bool
) -> Tuple[int, int, int]:
    """(min, opt, max) batch of the optimization profile from what the user gave and the defaults.

    A fixed ONNX batch is the profile. DLA needs min = opt = max: "DLA does not support dynamic
    dimensions" (DLA Supported Layers and Restrictions; NvInfer.h @8.5.2 L6614-6615, addInput), so it
    takes the one batch given, or 1. Otherwise unset bounds follow the given ones (``--min-batch 4``
    alone gives 4/4/8).
    """
    values = {name: given.get(name) for name in BATCH_OPTIONS}
    chosen = [int(v) for v in values.values() if v is not None]
    flags = "/".join(f"--{n.replace('_', '-')} {v}" for n, v in values.items() if v is not None)
    if onnx_batch:
        if any(v != onnx_batch for v in chosen):
            raise ConfigError(
                f"the ONNX model has a fixed batch of {onnx_batch}, but {flags} was asked for; drop the "
                "batch options or re-export with a dynamic batch"
            )
        return (onnx_batch, onnx_batch, onnx_batch)
    if dla:
        if len(set(chosen)) > 1:
            raise ConfigError(
                f"DLA needs one static batch (min = opt = max), got {flags}; give --max-batch N alone "
                "or all three equal"
            )
        batch = chosen[0] if chosen else 1
        return (batch, batch, batch)
    low = int(values["min_batch"] if values["min_batch"] is not None else defaults["min_batch"])
    opt = values["opt_batch"]
    opt = int(opt) if opt is not None else max(int(defaults["opt_batch"]), low)
    high = values["max_batch"]
    high = int(high) if high is not None else max(int(defaults["max_batch"]), opt)
    if not 1 <= low <= opt <= high:
        raise ConfigError(f"batch profile must satisfy 1 <= min <= opt <= max, got {low}/{opt}/{high}")
    return (low, opt, high)


def profile_shapes(
    input_shape: Sequence[Any], batch: Tuple[int, int, int]
) -> Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]:
    """(min, opt, max) shapes of the optimization profile; the non-batch dimensions must be static."""
    rest = list(input_shape[1:])
    if any(not isinstance(d, int) or d <= 0 for d in rest):
        raise ConfigError(
            f"the ONNX input has dynamic non-batch dimensions {list(input_shape)}; export with a "
            "fixed image size"
        )
    return tuple([batch[0]] + rest), tuple([batch[1]] + rest), tuple([batch[2]] + rest)


def timing_cache_name(version: Version, compute_capability: str) -> str:
    """Timing caches are only valid for one TensorRT and GPU architecture, so the name carries both."""
    cc = compute_capability.replace(".", "") or "unknown"
    return f"timing_trt{version[0]}.{version[1]}_sm{cc}.cache"


def device_memory_order(preferred: Optional[str] = None) -> List[str]:
    """The device-memory libraries to try, in order (one when asked for by name)."""
    if preferred:
        if preferred not in DEVICE_MEMORY_PROVIDERS:
            raise ConfigError(
                f"unknown device memory provider '{preferred}'; choose one of "
                f"{', '.join(DEVICE_MEMORY_PROVIDERS)}"
            )
        return [preferred]
    return list(DEVICE_MEMORY_PROVIDERS)


def cc_value(cc: str) -> float:
    """'8.7' -> 8.7; unknown -> 0.0."""
    try:
        return float(cc)
    except ValueError:
        return 0.0
