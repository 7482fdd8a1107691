"""Whether a TensorRT engine built on one machine may be loaded on another, from the two sidecar records.

A TensorRT engine is tied to the TensorRT version, the GPU architecture and the platform it was built
on, unless it was built version-compatible or hardware-compatible. Deserialising a foreign engine fails
with a generic error, so edgexfer compares the build record with this machine first and names every
mismatch in one line.
"""

from __future__ import annotations

from typing import Any, List, Mapping, Tuple

from edgexfer.backends.trt_compat import Version, cc_value, parse_version
from edgexfer.errors import StaleArtifactError

# Version-compatible engines across majors: "engines built with TensorRT 8 work with TensorRT 9 and
# TensorRT 10 runtimes" (Version Compatibility, docs 10.16.1), "engines built with TensorRT 10 work with
# TensorRT 11" (Engine Compatibility, 11.1.0); Support Matrix 11.4.1: "TensorRT 10 version-compatible
# engines can run with a TensorRT 11 runtime, and TensorRT 8 version-compatible engines can run with a
# TensorRT 10 runtime. No other combination across major versions is supported."
VC_CROSS_MAJOR = {(8, 9), (8, 10), (10, 11)}
# "Version compatibility is supported from version 8.6; the plan must be built with a version at least
# 8.6 or higher" (Version Compatibility, 10.16.1).
VC_MIN_BUILD: Version = (8, 6, 0)


def version_compatible_runs(built: Version, here: Version) -> bool:
    """Whether a version-compatible engine built with ``built`` runs on the TensorRT ``here``."""
    if here < built or built < VC_MIN_BUILD:
        return False
    return here[0] == built[0] or (built[0], here[0]) in VC_CROSS_MAJOR


def engine_compatibility(built: Mapping[str, Any], here: Mapping[str, Any]) -> Tuple[List[str], List[str]]:
    """(problems, warnings) of running an engine built on ``built`` on the machine ``here``.

    Both are sidecar-style records with ``tensorrt``, ``compute_capability``, ``gpu``, ``l4t``, ``os``,
    ``arch``, ``dla_cores``, and for ``built`` the flags ``version_compatible`` / ``hardware_compatible``
    and ``dla_core``. Problems make loading fail; a fact missing on either side is not compared.
    """
    problems: List[str] = []
    warnings: List[str] = []
    built_trt, here_trt = built.get("tensorrt"), here.get("tensorrt")
    if built_trt and here_trt and built_trt != here_trt:
        b, h = parse_version(built_trt), parse_version(here_trt)
        if not (built.get("version_compatible") and version_compatible_runs(b, h)):
            problems.append(f"it was built with TensorRT {built_trt}, this machine has {here_trt}")
    # "Serialized engines are not portable across platforms" (Support Matrix 11.4.1, Engine Portability).
    built_platform = "/".join(str(built.get(k)) for k in ("os", "arch") if built.get(k))
    here_platform = "/".join(str(here.get(k)) for k in ("os", "arch") if here.get(k))
    if built.get("os") and built.get("arch") and here.get("os") and here.get("arch"):
        if built_platform != here_platform:
            problems.append(f"it was built on {built_platform}, this machine is {here_platform}")
    built_cc, here_cc = str(built.get("compute_capability") or ""), str(here.get("compute_capability") or "")
    if built_cc and here_cc and built_cc != here_cc:
        portable = built.get("hardware_compatible") and cc_value(here_cc) >= 8.0
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
    dla_core = built.get("dla_core")
    if dla_core is not None:
        cores = int(here.get("dla_cores") or 0)
        if cores <= 0:
            problems.append(f"it runs on DLA core {dla_core}, this device has no DLA")
        elif int(dla_core) >= cores:
            problems.append(f"it runs on DLA core {dla_core}, this device has DLA cores 0..{cores - 1}")
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
