"""Hardware facts (parsed from real-format text) and `edgexfer doctor`."""

from __future__ import annotations

import json

import pytest

from edgexfer import hardware

CPUINFO_2x2 = """processor\t: 0
model name\t: Intel(R) Xeon(R) Gold 6338
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse avx2 fma avx512f avx512bw avx512vl avx512_vnni

processor\t: 1
model name\t: Intel(R) Xeon(R) Gold 6338
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse avx2 fma avx512f avx512bw avx512vl avx512_vnni

processor\t: 2
physical id\t: 0
core id\t\t: 1

processor\t: 3
physical id\t: 0
core id\t\t: 1
"""

CPUINFO_ARM = """processor\t: 0
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp

processor\t: 1
Features\t: fp asimd asimddp

Hardware\t: NVIDIA Orin
"""


def test_parse_cpuinfo_counts_physical_cores_not_hyperthreads():
    parsed = hardware.parse_cpuinfo(CPUINFO_2x2)
    assert parsed["physical_cores"] == 2 and parsed["logical_cpus"] == 4
    assert "avx512_vnni" in parsed["flags"] and parsed["model"] == "Intel(R) Xeon(R) Gold 6338"
    arm = hardware.parse_cpuinfo(CPUINFO_ARM)
    assert arm["physical_cores"] == 2 and "asimddp" in arm["flags"] and arm["model"] == "NVIDIA Orin"


def test_cpu_info_here_is_consistent():
    info = hardware.cpu_info()
    assert 1 <= info["physical_cores"] <= info["logical_cpus"]
    assert info["physical_cores"] <= info["usable_cpus"]
    assert set(info["features"]) <= set(hardware.CPU_FEATURES)
    assert hardware.physical_cores() == info["physical_cores"]


def test_int8_summary():
    assert "VNNI" in hardware.int8_cpu_summary(["avx2", "avx512_vnni"])
    assert "AMX" in hardware.int8_cpu_summary(["amx_int8", "avx512_vnni"])
    assert "no VNNI" in hardware.int8_cpu_summary(["avx2"])
    assert "dot-product" in hardware.int8_cpu_summary(["asimddp"])


def test_parse_nvidia_smi():
    text = "NVIDIA GeForce RTX 4090, 550.54.14, 8.9, 24564 MiB\nTesla T4, 535.104.05, 7.5, 15360 MiB\n"
    gpus = hardware.parse_nvidia_smi(text)
    assert gpus[0] == {
        "name": "NVIDIA GeForce RTX 4090",
        "driver": "550.54.14",
        "compute_capability": "8.9",
        "memory": "24564 MiB",
    }
    assert gpus[1]["compute_capability"] == "7.5" and hardware.parse_nvidia_smi("") == []


@pytest.mark.parametrize(
    "text, l4t, jetpack",
    [
        (
            "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1",
            "35.4.1",
            "5.1.2",
        ),
        ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64", "36.4.3", "6.2"),
        ("# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref", "32.7.1", "4.6.1"),
        ("# R35 (release), REVISION: 9.9, GCID: 1", "35.9.9", "5.x (L4T 35.9.9 not in edgexfer's table)"),
    ],
)
def test_l4t_and_jetpack(text, l4t, jetpack):
    assert hardware.parse_l4t_release(text) == l4t
    assert hardware.jetpack_for_l4t(l4t) == jetpack


def test_nvpmodel_and_jetson_clocks():
    assert hardware.parse_nvpmodel("NV Power Mode: MAXN\n0\n") == "MAXN (0)"
    assert hardware.parse_nvpmodel("NV Fan Mode:quiet\nNV Power Mode: 15W\n2\n") == "15W (2)"
    assert hardware.parse_nvpmodel("nothing") is None
    pinned = "cpu0: Online=1 Governor=schedutil MinFreq=2201600 MaxFreq=2201600 CurrentFreq=2201600"
    scaling = "cpu0: Online=1 Governor=schedutil MinFreq=115200 MaxFreq=2201600 CurrentFreq=729600"
    assert hardware._clocks_state(pinned) == "on" and hardware._clocks_state(scaling) == "off"
    assert hardware._clocks_state(None) is None


def test_doctor_json_names_every_backend_with_a_reason(cli_runner):
    code, out, err = cli_runner("doctor", "--json")
    assert code == 0, err
    report = json.loads(out)
    backends = {b["name"]: b for b in report["backends"]}
    assert set(backends) == {"torch", "onnxruntime", "openvino", "tensorrt"}
    assert backends["onnxruntime"]["usable"] and "onnxruntime " in backends["onnxruntime"]["detail"]
    for backend in backends.values():
        assert backend["detail"]  # usable ones say what they are, the others why not
    assert report["libraries"]["onnxruntime"] and report["cpu"]["physical_cores"] >= 1
    from edgexfer.provenance import LIBRARIES

    assert list(report["libraries"]) == list(LIBRARIES)  # the same list the manifest records
    assert report["libraries"]["torch"] == __import__("torch").__version__.split("+")[0]


def test_doctor_text_and_require(cli_runner):
    code, out, _ = cli_runner("doctor")
    assert code == 0
    assert "Backends:" in out and "[yes] onnxruntime" in out and "CPU:" in out and "next:" in out
    code, _, err = cli_runner("doctor", "--require", "onnxruntime")
    assert code == 0
    code, _, err = cli_runner("doctor", "--require", "nonsense")
    assert code == 2 and "unknown backend 'nonsense'" in err
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        code, _, err = cli_runner("doctor", "--require", "tensorrt")
        assert code == 4 and "required backend not usable here: tensorrt" in err


def test_hints_for_a_jetson_that_is_not_set_up_for_benchmarks():
    from edgexfer.doctor import format_report, hints

    report = {
        "backends": [
            {"name": "tensorrt", "usable": False, "detail": "tensorrt does not import"},
            {"name": "openvino", "usable": False, "detail": "not installed"},
        ],
        "libraries": {"onnxruntime": "1.18.0", "onnxruntime-gpu": ""},
        "cpu": {"arch": "aarch64", "features": ["asimddp"]},
        "gpu": {"present": True, "summary": "Jetson AGX Orin integrated GPU", "cuda_driver": "12.2"},
        "jetson": {
            "module": "NVIDIA Jetson AGX Orin",
            "l4t": "36.4.3",
            "jetpack": "6.2",
            "power_mode": "30W (2)",
            "jetson_clocks": "off",
        },
    }
    advice = hints(report)
    assert any("--system-site-packages" in a for a in advice)
    assert any("nvpmodel -m 0" in a for a in advice) and any("jetson_clocks" in a for a in advice)
    assert not any("openvino" in a for a in advice)  # OpenVINO is an x86 suggestion only
    report.update({"edgexfer": "0", "python": "3.10", "executable": "python", "os": "Linux", "hints": advice})
    report["cpu"].update(
        {"model": "ARMv8", "physical_cores": 12, "usable_cpus": 12, "int8": "Arm dot-product"}
    )
    text = format_report(report)
    assert "L4T 36.4.3, JetPack 6.2" in text and "power mode: 30W (2)" in text
