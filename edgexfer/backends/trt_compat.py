"""Every TensorRT-version-dependent decision, as pure functions of a version (and a ``trt``-like module).

TensorRT 8.5/8.6 (JetPack 5, 6.0), 10.x (JetPack 6.1+, desktops) and 11.x differ in how a network is
created, how precision is chosen and what compatibility modes exist. Keeping the decisions here, as
functions of plain values, lets them be unit-tested with fake versions and fake modules on machines
without TensorRT; :mod:`edgexfer.backends.tensorrt` only applies them.

Facts (TensorRT release notes and migration guides):
- 8.x needs ``1 << EXPLICIT_BATCH`` for ONNX; 10.x ignores it and adds ``STRONGLY_TYPED``; 11.x has no
  EXPLICIT_BATCH and every network is strongly typed.
- Weak typing (``BuilderFlag.FP16``/``INT8``) exists through 10.x and is removed in 11.x, where fp16
  means an fp16-typed ONNX and int8 means Q/DQ nodes (explicit quantization).
- Version-compatible and hardware-compatible (Ampere+) engines exist from 8.6.
- TensorRT 8.5/8.6's ONNX parser reads opset <= 17.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from edgexfer.errors import ConfigError, StaleArtifactError

Version = Tuple[int, int, int]
MIN_VERSION: Version = (8, 5, 0)
DEVICE_MEMORY_PROVIDERS = ("polygraphy", "cuda-python", "torch")


def parse_version(text: str) -> Version:
    """'10.3.0.26' -> (10, 3, 0); missing parts are 0."""
    numbers = [int(n) for n in re.findall(r"\d+", str(text))[:3]]
    if not numbers:
        raise ConfigError(f"cannot read a TensorRT version from {text!r}")
    while len(numbers) < 3:
        numbers.append(0)
    return (numbers[0], numbers[1], numbers[2])


def check_supported(version: Version) -> None:
    """Refuse TensorRT older than 8.5 (no name-based execution API, no build_serialized_network flow)."""
    if version < MIN_VERSION:
        raise ConfigError(
            f"TensorRT {'.'.join(map(str, version))} is too old; edgexfer needs TensorRT 8.5 or "
            "newer (JetPack 5.1+)"
        )


def typing_mode(version: Version, precision: str, strongly_typed: Optional[bool] = None) -> str:
    """'strong' or 'weak' network typing for a build.

    11.x is always strong. 8.x is always weak (no strongly typed networks). On 10.x the user may ask
    for either; by default fp32 and int8-QDQ use weak typing with precision flags, the path 8.x also
    takes, so the same artifact builds alike on both.
    """
    if version[0] >= 11:
        if strongly_typed is False:
            raise ConfigError("TensorRT 11 builds only strongly typed networks; drop --weakly-typed")
        return "strong"
    if version[0] < 10:
        if strongly_typed:
            raise ConfigError(
                f"strongly typed networks need TensorRT 10 or newer (this is "
                f"{'.'.join(map(str, version))}); drop --strongly-typed"
            )
        return "weak"
    return "strong" if strongly_typed else "weak"


def network_flags(trt: Any, version: Version, typing: str) -> int:
    """The ``create_network`` flags, looked up by name on ``trt.NetworkDefinitionCreationFlag``."""
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

    Weak typing: fp16 -> FP16; int8 -> INT8, plus FP16 for the layers left unquantized (the usual
    deployment choice; ``int8_fp16_fallback=False`` keeps them fp32). Strong typing sets none: the
    precision is in the ONNX tensors' types and Q/DQ nodes.
    """
    if typing == "strong":
        return []
    if precision == "fp16":
        return ["FP16"]
    if precision == "int8":
        return ["INT8", "FP16"] if int8_fp16_fallback else ["INT8"]
    return []


def needs_fp16_onnx(version: Version, precision: str, typing: str) -> bool:
    """Whether the float ONNX must be converted to fp16 tensors before parsing (strong-typed fp16)."""
    return precision == "fp16" and typing == "strong"


# The newest ONNX opset the TensorRT 8.5/8.6 parsers read (onnx-tensorrt docs/operators.md, 8.5-GA and
# 8.6-GA: "TensorRT 8.5/8.6 supports operators up to Opset 17"). The one copy of this fact: the export
# stage and the TensorRT Q/DQ rules read it from here.
TRT8_MAX_OPSET = 17


def check_opset(version: Version, opset: int) -> None:
    """TensorRT 8.5/8.6 parse ONNX opset <= 17; newer parsers take newer opsets."""
    if version[0] < 10 and opset > TRT8_MAX_OPSET:
        raise ConfigError(
            f"TensorRT {version[0]}.{version[1]} reads ONNX opset <= {TRT8_MAX_OPSET}, the model has opset "
            f"{opset}; re-export with 'edgexfer export --opset {TRT8_MAX_OPSET}'"
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
    version: Version, version_compatible: bool, hardware_compatible: bool
) -> Dict[str, Any]:
    """Builder flags / hardware level for portable engines (both exist from TensorRT 8.6)."""
    settings: Dict[str, Any] = {"flags": [], "hardware_compatibility_level": None}
    if (version_compatible or hardware_compatible) and version < (8, 6, 0):
        raise ConfigError(
            f"version- and hardware-compatible engines need TensorRT 8.6+ (this is "
            f"{'.'.join(map(str, version))}); build without --version-compatible/--hardware-compatible"
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

    DLA runs fp16 and int8 only; layers it cannot run fall back to the GPU.
    """
    if dla_core is None:
        return {}
    if precision == "fp32":
        raise ConfigError(
            "DLA runs fp16 or int8 only; build with --precision fp16 or int8, or drop --dla-core"
        )
    if dla_cores_here <= 0:
        raise ConfigError(
            f"--dla-core {dla_core} asked for, but this device has no DLA cores (DLA exists on "
            "Jetson AGX Xavier/Orin and Orin NX); drop --dla-core"
        )
    if not 0 <= dla_core < dla_cores_here:
        raise ConfigError(
            f"--dla-core {dla_core} does not exist; this device has DLA cores 0..{dla_cores_here - 1}"
        )
    return {"default_device_type": "DLA", "DLA_core": int(dla_core), "flags": ["GPU_FALLBACK"]}


def profile_shapes(
    input_shape: Sequence[Any], min_batch: int, opt_batch: int, max_batch: int
) -> Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]:
    """(min, opt, max) shapes of the optimization profile for a dynamic batch axis.

    The non-batch dimensions must be static in the ONNX model; a static batch must equal every bound.
    """
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ConfigError(
            f"batch profile must satisfy 1 <= min <= opt <= max, got {min_batch}/{opt_batch}/{max_batch}"
        )
    rest = list(input_shape[1:])
    if any(not isinstance(d, int) or d <= 0 for d in rest):
        raise ConfigError(
            f"the ONNX input has dynamic non-batch dimensions {list(input_shape)}; export with a "
            "fixed image size"
        )
    batch = input_shape[0]
    if isinstance(batch, int) and batch > 0 and (min_batch, opt_batch, max_batch) != (batch, batch, batch):
        raise ConfigError(
            f"the ONNX model has a fixed batch of {batch}; use --batch {batch} or re-export "
            "with a dynamic batch"
        )
    return (tuple([min_batch] + rest), tuple([opt_batch] + rest), tuple([max_batch] + rest))


def timing_cache_name(version: Version, compute_capability: str) -> str:
    """Timing caches are only valid for one TensorRT and GPU architecture, so the name carries both."""
    cc = compute_capability.replace(".", "") or "unknown"
    return f"timing_trt{version[0]}.{version[1]}_sm{cc}.cache"


def choose_device_memory(available: Mapping[str, bool], preferred: Optional[str] = None) -> str:
    """Which library allocates device buffers: polygraphy.cuda, cuda-python or torch (no pycuda)."""
    if preferred:
        if preferred not in DEVICE_MEMORY_PROVIDERS:
            raise ConfigError(
                f"unknown device memory provider '{preferred}'; choose one of "
                f"{', '.join(DEVICE_MEMORY_PROVIDERS)}"
            )
        if not available.get(preferred):
            raise ConfigError(f"device memory provider '{preferred}' is not installed here")
        return preferred
    for name in DEVICE_MEMORY_PROVIDERS:
        if available.get(name):
            return name
    raise ConfigError(
        "no library to allocate CUDA buffers: pip install polygraphy, or cuda-python>=12.6.1, "
        "or a CUDA build of torch"
    )


def engine_compatibility(built: Mapping[str, Any], here: Mapping[str, Any]) -> Tuple[List[str], List[str]]:
    """(problems, warnings) of running an engine built on ``built`` on the machine ``here``.

    Both are sidecar-style records with ``tensorrt``, ``compute_capability``, ``gpu``, ``l4t``, and for
    ``built`` the flags ``version_compatible`` / ``hardware_compatible``. Problems make loading fail.
    """
    problems: List[str] = []
    warnings: List[str] = []
    built_trt, here_trt = built.get("tensorrt"), here.get("tensorrt")
    if built_trt and here_trt and built_trt != here_trt:
        b, h = parse_version(built_trt), parse_version(here_trt)
        if not (built.get("version_compatible") and h[0] == b[0] and h >= b):
            problems.append(f"it was built with TensorRT {built_trt}, this machine has {here_trt}")
    built_cc, here_cc = str(built.get("compute_capability") or ""), str(here.get("compute_capability") or "")
    if built_cc and here_cc and built_cc != here_cc:
        portable = built.get("hardware_compatible") and _cc_value(here_cc) >= 8.0
        if not portable:
            problems.append(
                f"it was built for a GPU of compute capability {built_cc} ({built.get('gpu')}), "
                f"this one is {here_cc} ({here.get('gpu')})"
            )
    elif built.get("gpu") and here.get("gpu") and built.get("gpu") != here.get("gpu"):
        warnings.append(
            f"built on {built.get('gpu')}, running on {here.get('gpu')} (same architecture; "
            "timings may differ)"
        )
    if built.get("l4t") and here.get("l4t") and built.get("l4t") != here.get("l4t"):
        warnings.append(f"built on L4T {built.get('l4t')}, this Jetson runs L4T {here.get('l4t')}")
    if built.get("dla_core") is not None and not here.get("dla_cores"):
        problems.append(f"it runs on DLA core {built.get('dla_core')}, this device has no DLA")
    return problems, warnings


def require_compatible(engine_name: str, built: Mapping[str, Any], here: Mapping[str, Any]) -> List[str]:
    """Raise StaleArtifactError naming every mismatch; return the warnings otherwise."""
    problems, warnings = engine_compatibility(built, here)
    if problems:
        raise StaleArtifactError(
            f"engine '{engine_name}' cannot run here: {'; '.join(problems)}; rebuild it on this "
            "machine with 'edgexfer build RUN --backend tensorrt'"
        )
    return warnings


def _cc_value(cc: str) -> float:
    try:
        return float(cc)
    except ValueError:
        return 0.0
