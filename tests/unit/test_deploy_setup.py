"""``deploy --setup``'s pieces without a device: the bootstrap the device's bare Python runs (standard
library only, so it is run here as ``python -I -S -c SOURCE``, where edgexfer cannot be imported), the
wheel's source hash, the extras per backend, and the interrupted-stream handling of both receivers.
The setup against a real sshd is tests/integration/test_deploy.py::test_setup_installs_then_reuses."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from edgexfer.deploy import bootstrap, device
from edgexfer.deploy.setup import bootstrap_source, extras_for, source_hash
from edgexfer.deploy.transport import copy_failure


def _bare(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    """The bootstrap as the device runs it: a Python that cannot import edgexfer (-I: no PYTHONPATH, -S: no
    site-packages)."""
    return subprocess.run([sys.executable, "-I", "-S", "-c", bootstrap_source(), *args], input=stdin,
                          capture_output=True, timeout=60, check=False)


def _tar(files: dict) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_bootstrap_probe_runs_without_edgexfer(tmp_path):
    assert subprocess.run([sys.executable, "-I", "-S", "-c", "import edgexfer"], cwd=tmp_path,
                          capture_output=True, check=False).returncode != 0
    root = tmp_path / "dir with 'quote'; $(x)"
    done = _bare("probe", str(root))
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["venv_module"] is True and answer["installed"] is None and answer["free_bytes"] > 0
    assert answer["jetson"] == Path(bootstrap.JETSON_RELEASE).exists()
    assert root.is_dir()


def test_bootstrap_receive_uses_only_a_complete_stream(tmp_path):
    archive = _tar({"edgexfer-0.1.0-py3-none-any.whl": b"wheel" * 1000, "wheelhouse/a.whl": b"a"})
    cut = _bare("receive", str(tmp_path), str(len(archive)), stdin=archive[: len(archive) // 2])
    assert cut.returncode == 2
    (line,) = cut.stderr.decode().strip().splitlines()
    assert "transfer was interrupted" in line and f"of {len(archive)} bytes" in line
    assert [p.name for p in (tmp_path / "setup").rglob("*")] == []  # nothing kept, nothing half-written
    whole = _bare("receive", str(tmp_path), str(len(archive)), stdin=archive)
    assert whole.returncode == 0, whole.stderr
    assert (tmp_path / "setup" / "wheelhouse" / "a.whl").read_bytes() == b"a"
    assert sorted(p.name for p in (tmp_path / "setup").iterdir()) == ["edgexfer-0.1.0-py3-none-any.whl", "wheelhouse"]


def test_bootstrap_install_checks_hashes_and_reuses_a_finished_setup(tmp_path):
    (tmp_path / "setup").mkdir()
    (tmp_path / "setup" / "x.whl").write_bytes(b"changed on the way")
    spec = {"key": "k1", "wheel": "x.whl", "files": {"x.whl": hashlib.sha256(b"sent").hexdigest()},
            "extras": [], "wheelhouse": True, "system_site_packages": False}
    refused = _bare("install", str(tmp_path), json.dumps(spec))
    assert refused.returncode == 2 and "x.whl is missing or differs" in refused.stderr.decode()
    assert not (tmp_path / "venv").exists()  # nothing made from a file that is not what was sent
    # a finished setup (its marker written last) with the same key and extras: reused, pip never runs
    python = bootstrap.venv_python(tmp_path)
    python.parent.mkdir(parents=True)
    python.write_text("not a python: running it would fail")
    (tmp_path / "venv" / bootstrap.MARKER).write_text(json.dumps({"key": "k1", "extras": []}))
    reused = _bare("install", str(tmp_path), json.dumps(spec))
    assert reused.returncode == 0, reused.stderr
    assert json.loads(reused.stdout)["reused"] is True
    other = _bare("install", str(tmp_path), json.dumps({**spec, "extras": ["openvino"]}))
    assert other.returncode == 2  # another extra: a new install (here refused by the hash check first)


def test_bootstrap_names_a_missing_venv_module(tmp_path):
    fake = tmp_path / "fake"
    (fake / "ensurepip").mkdir(parents=True)
    (fake / "ensurepip" / "__init__.py").write_text("raise ImportError('Debian: install python3-venv')")
    done = subprocess.run([sys.executable, "-S", "-c", bootstrap_source(), "probe", str(tmp_path / "d")],
                          capture_output=True, env={"PYTHONPATH": str(fake)}, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["venv_module"] is False


def test_device_receive_keeps_nothing_from_an_interrupted_stream(tmp_path, monkeypatch, capsys):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "BUNDLE.json").write_text(json.dumps({"files": {}}))
    archive = _tar({"export/model.onnx": b"m" * 5000, "BUNDLE.json": b'{"files": {}}'})
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(archive[:3000])))
    assert device.main(["receive", str(tmp_path), str(len(archive))]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "transfer was interrupted (3000 of" in line
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["BUNDLE.json", "bundle"]  # no partial, no upload


def test_source_hash_follows_the_sources(tmp_path):
    for name, text in (("pyproject.toml", "x"), ("README.md", "r"), ("edgexfer/a.py", "a = 1")):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    first = source_hash(tmp_path)
    (tmp_path / "edgexfer" / "__pycache__").mkdir()
    (tmp_path / "edgexfer" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    assert source_hash(tmp_path) == first  # caches do not count
    (tmp_path / "edgexfer" / "a.py").write_text("a = 2")
    assert source_hash(tmp_path) != first


@pytest.mark.parametrize("backend, jetson, extras", [
    ("onnxruntime", False, []), ("openvino", False, ["openvino"]), ("tensorrt", False, ["tensorrt"]),
    ("tensorrt", True, []), (None, True, []),
])
def test_extras_never_torch(backend, jetson, extras):
    assert extras_for(backend, jetson) == extras


def test_killed_copy_is_named_interrupted():
    for code in (20, 137, -9):
        line = str(copy_failure("orin", "", code, "rsync"))
        assert "transfer was interrupted" in line and "run the deploy again" in line
    assert "disk is full" in str(copy_failure("orin", "rsync: write failed: No space left on device (28)", 11,
                                              "rsync"))


@pytest.mark.parametrize("stderr, expected", [
    ("ERROR: Could not find a version that satisfies the requirement numpy>=1.21 (from edgexfer)\n"
     "ERROR: No matching distribution found for numpy>=1.21\n", "ERROR: No matching distribution found for numpy"),
    ("ERROR: Exception:\nTraceback (most recent call last):\n  File \"x\", line 1\nValueError: boom\n",
     "ValueError: boom"),
])
def test_bootstrap_step_failure_is_pips_last_error_line(tmp_path, stderr, expected):
    script = f"import sys; sys.stderr.write({stderr!r}); sys.exit(1)"
    with pytest.raises(bootstrap.SetupProblem) as caught:
        bootstrap._run([sys.executable, "-c", script], "pip install", tmp_path / "pip.log")
    line = str(caught.value)
    assert line.startswith(f"pip install failed (exit 1): {expected}") and "\n" not in line
    assert str(tmp_path / "pip.log") in line  # the whole output is kept there
    assert stderr.strip().splitlines()[-1] in (tmp_path / "pip.log").read_text()


def test_purge_removes_the_setup_too(tmp_path):
    for name in ("bundle/BUNDLE.json", "run/manifest.json", "setup/edgexfer-0.1.0-py3-none-any.whl",
                 "venv/bin/python", f"venv/{bootstrap.MARKER}"):
        (tmp_path / "dir" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "dir" / name).write_text("x")
    assert sorted(device.clean(tmp_path / "dir", everything=False)["removed"]) == ["run"]
    assert sorted(device.clean(tmp_path / "dir", everything=True)["removed"]) == ["bundle", "setup", "venv"]
    assert not (tmp_path / "dir").exists()
