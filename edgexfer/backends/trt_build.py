"""Building a TensorRT engine from ONNX, applying the decisions of :mod:`edgexfer.backends.trt_compat`.

Takes the ``trt`` module as an argument so the whole flow (parse, config, profile, timing cache,
serialise, sidecar) can be exercised against a fake module in unit tests.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping

from edgexfer.backends import trt_compat as compat
from edgexfer.backends.base import BuildResult
from edgexfer.errors import ArtifactError, ConfigError

log = logging.getLogger(__name__)

BUILD_OPTIONS = (
    "min_batch",
    "opt_batch",
    "max_batch",
    "workspace_mb",
    "strongly_typed",
    "version_compatible",
    "hardware_compatible",
    "dla_core",
    "int8_fp16_fallback",
    "timing_cache",
)


def build_engine(
    trt: Any,
    onnx_path: Path,
    precision: str,
    out_dir: Path,
    options: Dict[str, Any],
    machine: Mapping[str, Any],
) -> BuildResult:
    """Parse ``onnx_path``, configure the builder for ``precision`` and write engine, sidecar, cache."""
    import onnx

    from edgexfer.backends.sidecar import onnx_metadata_props, write_sidecar
    from edgexfer.fsutil import atomic_path, atomic_write_bytes

    unknown = sorted(set(options) - set(BUILD_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown TensorRT build option(s) {unknown}; valid: {', '.join(BUILD_OPTIONS)}")
    version = compat.parse_version(trt.__version__)
    compat.check_supported(version)
    if not onnx_path.is_file():
        raise ArtifactError(f"ONNX model '{onnx_path}' does not exist")
    model = onnx.load(str(onnx_path), load_external_data=False)
    metadata = onnx_metadata_props(onnx_path)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    compat.check_opset(version, opset)
    if precision == "int8":
        compat.check_int8_source(metadata, [n.op_type for n in model.graph.node])
    typing = compat.typing_mode(version, precision, options.get("strongly_typed"))
    compat_settings = compat.compatibility_settings(
        version, bool(options.get("version_compatible")), bool(options.get("hardware_compatible"))
    )
    final = out_dir / f"tensorrt_{precision}.engine"
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(final) as tmp:
        parse_path = onnx_path
        if compat.needs_fp16_onnx(version, precision, typing):
            parse_path = _fp16_onnx(onnx_path, tmp.with_suffix(".fp16.onnx"))
        try:
            logger = trt.Logger(trt.Logger.WARNING)
            builder = trt.Builder(logger)
            network = builder.create_network(compat.network_flags(trt, version, typing))
            _parse(trt, network, logger, parse_path)
            config = builder.create_builder_config()
            flags = _configure(
                trt, builder, network, config, version, precision, typing, compat_settings, options
            )
            cache_path = out_dir / compat.timing_cache_name(
                version, str(machine.get("compute_capability", ""))
            )
            use_cache = options.get("timing_cache", True)
            if use_cache:
                _load_timing_cache(config, cache_path)
            serialized = builder.build_serialized_network(network, config)
            if serialized is None:
                raise ArtifactError(
                    f"TensorRT {trt.__version__} could not build an engine from '{onnx_path}' for "
                    f"{precision} (see the TensorRT errors above)"
                )
            tmp.write_bytes(bytes(serialized))
            if use_cache:
                atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
        finally:
            if parse_path != onnx_path and parse_path.exists():
                parse_path.unlink()
    facts = dict(machine)
    facts.update(
        {
            "tensorrt": trt.__version__,
            "typing": typing,
            "builder_flags": flags,
            "source": str(onnx_path),
            "opset": opset,
            "version_compatible": bool(options.get("version_compatible")),
            "hardware_compatible": bool(options.get("hardware_compatible")),
            "dla_core": options.get("dla_core"),
            "workspace_mb": _workspace_mb(options),
            "profile": _profile_record(options),
            "timing_cache": cache_path.name if use_cache else None,
        }
    )
    write_sidecar(final, "tensorrt", precision, metadata, facts)
    return BuildResult(
        path=final, kind="tensorrt-engine", precision=precision, backend="tensorrt", extra=facts
    )


def _parse(trt: Any, network: Any, logger: Any, path: Path) -> None:
    """Parse the ONNX file (from its path, so external weights beside it are found)."""
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
        first = errors[0] if errors else "unknown parser error"
        raise ArtifactError(
            f"TensorRT's ONNX parser rejected '{path.name}': {first}"
            + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else "")
        )


def _configure(
    trt: Any,
    builder: Any,
    network: Any,
    config: Any,
    version: compat.Version,
    precision: str,
    typing: str,
    compat_settings: Mapping[str, Any],
    options: Mapping[str, Any],
) -> List[str]:
    """Workspace, precision/compatibility/DLA flags and the batch profile; returns the flags set."""
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, _workspace_mb(options) << 20)
    flags = compat.precision_flags(version, precision, typing, bool(options.get("int8_fp16_fallback", True)))
    flags += list(compat_settings["flags"])
    level = compat_settings.get("hardware_compatibility_level")
    if level:
        config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel, level)
    dla = compat.dla_settings(
        version, precision, options.get("dla_core"), int(getattr(builder, "num_DLA_cores", 0))
    )
    if dla:
        config.default_device_type = getattr(trt.DeviceType, dla["default_device_type"])
        config.DLA_core = dla["DLA_core"]
        flags += dla["flags"]
    for name in flags:
        member = getattr(trt.BuilderFlag, name, None)
        if member is None:
            raise ConfigError(
                f"TensorRT {trt.__version__} has no builder flag {name}; this build setting "
                "needs another TensorRT version"
            )
        config.set_flag(member)
    tensor = network.get_input(0)
    shapes = compat.profile_shapes(
        [int(d) if int(d) > 0 else None for d in tensor.shape],
        int(options.get("min_batch", 1)),
        int(options.get("opt_batch", 1)),
        int(options.get("max_batch", 8)),
    )
    profile = builder.create_optimization_profile()
    profile.set_shape(tensor.name, *shapes)
    config.add_optimization_profile(profile)
    return flags


def _load_timing_cache(config: Any, path: Path) -> None:
    """Start from the cache a previous build left (same TensorRT and GPU by its name), else empty."""
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("timing cache %s did not match this device; starting a fresh one", path.name)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def _workspace_mb(options: Mapping[str, Any]) -> int:
    value = int(options.get("workspace_mb", 1024))
    if value < 16:
        raise ConfigError(f"workspace_mb must be >= 16, got {value}")
    return value


def _profile_record(options: Mapping[str, Any]) -> Dict[str, int]:
    return {
        "min": int(options.get("min_batch", 1)),
        "opt": int(options.get("opt_batch", 1)),
        "max": int(options.get("max_batch", 8)),
    }


def _fp16_onnx(source: Path, dest: Path) -> Path:
    """An fp16-typed copy of a float model with float32 I/O, for strongly typed fp16 builds."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(source)), keep_io_types=True), str(dest))
    return dest
