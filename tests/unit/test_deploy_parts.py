"""The pure parts of ``edgexfer deploy``: ``--to`` parsing, remote quoting (through a real ``sh``, the
shell sshd hands the command to), ssh's failures as one line, the device-side hash check, the matrix.
The whole round trip against a real sshd is tests/integration/test_deploy.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgexfer.deploy import device
from edgexfer.deploy.target import parse_target
from edgexfer.deploy.transport import Ssh, remote_command, ssh_failure
from edgexfer.errors import ConfigError

HOSTILE = ["a b", "it's", 'say "hi"', "x; touch PWNED", "$(touch PWNED)", "`touch PWNED`", "$HOME", "*", "~",
           "back\\slash", "new\nline", "", "-n"]


@pytest.mark.parametrize("text, destination, host, remote_dir", [
    ("orin", "orin", "orin", "edgexfer-deploy"),
    ("me@orin.local:work/x", "me@orin.local", "orin.local", "work/x"),
    ("me@10.0.0.7:/data/edge x/", "me@10.0.0.7", "10.0.0.7", "/data/edge x"),
    ("[fe80::1]:~/deploy", "[fe80::1]", "[fe80::1]", "deploy"),
    ("jetson_nano-2:", "jetson_nano-2", "jetson_nano-2", "edgexfer-deploy"),
])
def test_parse_target(text, destination, host, remote_dir):
    target = parse_target(text)
    assert (target.destination, target.host, target.remote_dir) == (destination, host, remote_dir)


@pytest.mark.parametrize("text", ["-oProxyCommand=sh", "me@-x", "my host", "a;b", "$(x)", "host:/", "host:~", "",
                                  "host:dir\x1b[2J"])
def test_parse_target_refuses(text):
    with pytest.raises(ConfigError):
        parse_target(text)


def test_remote_command_reaches_the_program_word_for_word(tmp_path):
    """What sshd does with the command string: ``sh -c STRING``. Every hostile argument must arrive
    as the same single word, and nothing in it may run."""
    script = "import json, sys; print(json.dumps(sys.argv[1:]))"
    line = remote_command([sys.executable, "-c", script, *HOSTILE])
    done = subprocess.run(["sh", "-c", line], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert json.loads(done.stdout) == HOSTILE
    assert list(tmp_path.iterdir()) == []  # no PWNED


def test_ssh_argv_keeps_host_key_checking_and_ends_options():
    ssh = Ssh(parse_target("me@orin:dir"), ssh_config="/tmp/cfg")
    argv = ssh.ssh_argv(["echo", "a b"])
    assert argv[:3] == ["ssh", "-F", "/tmp/cfg"]
    assert argv[-3:] == ["--", "me@orin", "echo 'a b'"]
    assert not any("StrictHostKeyChecking" in arg or "UserKnownHostsFile=/dev/null" in arg for arg in argv)
    rsync = ssh.rsync_argv("local/", "me@orin:dir/")
    assert "--protect-args" in rsync and rsync[-3] == "--"
    assert not any("StrictHostKeyChecking" in arg for arg in rsync)


@pytest.mark.parametrize("stderr, words", [
    ("ssh: connect to host 127.0.0.1 port 2: Connection refused", "unreachable (connection refused)"),
    ("root@127.0.0.1: Permission denied (publickey).", "refused the key"),
    ("Host key verification failed.", "host key not known or changed"),
    ("ssh: Could not resolve hostname nowhere: Name or service not known", "unknown host"),
    ("kex_exchange_identification: Connection closed by remote host", "unreachable"),
])
def test_ssh_failures_are_named(stderr, words):
    assert words in str(ssh_failure("orin", stderr))


def _bundle(root: Path) -> Path:
    bundle = root / device.BUNDLE
    (bundle / "export").mkdir(parents=True)
    (bundle / "export" / "model.onnx").write_bytes(b"model")
    (bundle / "data" / "it's; $(x)").mkdir(parents=True)
    (bundle / "data" / "it's; $(x)" / "0.png").write_bytes(b"png")
    files = {rel: device._sha256(bundle / rel) for rel in ("export/model.onnx", "data/it's; $(x)/0.png")}
    (bundle / device.INDEX).write_text(json.dumps({"files": files}))
    return bundle


def test_device_check_makes_the_run_only_from_a_matching_bundle(tmp_path):
    bundle = _bundle(tmp_path)
    result = device.check(tmp_path)
    assert (tmp_path / "run" / "export" / "model.onnx").read_bytes() == b"model"
    assert result["files"] == 2
    (bundle / "export" / "model.onnx").write_bytes(b"mode!")  # same size, other content
    (tmp_path / "run" / "marker").write_text("previous run")
    with pytest.raises(device.BundleProblem, match="export/model.onnx differs"):
        device.check(tmp_path)
    assert (tmp_path / "run" / "marker").exists()  # the previous run is left as it was
    assert not (tmp_path / ".run.partial").exists()


def test_device_check_refuses_paths_outside_the_bundle(tmp_path):
    bundle = _bundle(tmp_path)
    (bundle / device.INDEX).write_text(json.dumps({"files": {"../../etc/passwd": "0" * 64}}))
    with pytest.raises(device.BundleProblem, match="outside its folder"):
        device.check(tmp_path)


def test_device_main_answers_one_line(tmp_path, capsys):
    assert device.main(["check", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgexfer: error: ") and "\n" not in err and "BUNDLE.json is missing" in err
    _bundle(tmp_path)
    assert device.main(["clean", str(tmp_path), "--all"]) == 0
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def _result(host, status="passed", agreement=100.0, error=None):
    from edgexfer.deploy.remote import DeviceResult

    entry = {"name": "onnxruntime_int8", "status": status, "agreement": {"agreement_pct": agreement},
             "accuracy": {"top1_drop": 1.5, "top1_drop_ci": [0.5, 2.5]}, "latency": {"p50_ms": 4.2, "p99_ms": 9.9}}
    passed = status in ("passed", "inconclusive")
    verify = None if error else {"artifacts": [entry], "verdict": {"status": status, "reason": "at chance"}, "gate": {
        "passed": passed,
        "failures": [] if passed else [{"artifact": "onnxruntime_int8", "reason": "agreement 90%"}]}}
    return DeviceResult(SimpleNamespace(host=host), verify=verify, error=error)


def test_matrix_and_outcome():
    from edgexfer.deploy.matrix import matrix_lines
    from edgexfer.deploy.run import deploy_outcome
    from edgexfer.errors import DeviceError, InconclusiveError, ParityError

    lines = matrix_lines([_result("orin"), _result("nano", "failed", 90.0)])
    assert lines[0].split()[:2] == ["device", "artifact"]
    assert "orin" in lines[1] and "+1.50 [+0.50, +2.50]" in lines[1] and "4.20" in lines[1] and "9.90" in lines[1]
    assert lines[2].rstrip().endswith("FAILED") and "90.0%" in lines[2]
    assert deploy_outcome([_result("orin")]) is None
    gate = deploy_outcome([_result("orin"), _result("nano", "failed", 90.0)])
    assert isinstance(gate, ParityError) and gate.exit_code == 3 and "nano: onnxruntime_int8" in str(gate)
    down = DeviceError("xavier: unreachable")
    assert deploy_outcome([_result("nano", "failed", 90.0), _result("xavier", error=down)]) is down
    unsure = deploy_outcome([_result("orin"), _result("nano", "inconclusive")])
    assert isinstance(unsure, InconclusiveError) and unsure.exit_code == 5 and "nano: at chance" in str(unsure)
    assert isinstance(deploy_outcome([_result("orin", "inconclusive"), _result("nano", "failed")]), ParityError)


def test_default_remote_folder_is_per_run(tmp_path):
    from edgexfer.deploy.config import DeployConfig

    config = DeployConfig(run_dir=tmp_path / "runs" / "r18 v2", targets=("orin", "me@nano:/data/x"))
    assert [t.remote_dir for t in config.parsed_targets()] == ["edgexfer-deploy/r18_v2", "/data/x"]
