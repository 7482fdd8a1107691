"""The torch-free venv the tests use as a device: ``pip install edgexfer`` of this checkout, no extras.

The venv and its dependencies (resolved by pip from pyproject.toml, no extra) are made once per Python
version and dependency list and kept under $EDGEXFER_TEST_CACHE or ~/.cache/edgexfer/test; this
checkout's edgexfer is reinstalled into it (``--no-deps``) every time. Used by tests/integration/
test_torch_free.py and test_deploy.py (whose device must need no torch), and :func:`wheelhouse` holds
the wheels of its dependencies for an offline ``deploy --setup --wheelhouse``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pip(python: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, timeout=timeout)


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def _core_dependencies() -> str:
    """The ``[project] dependencies`` block of pyproject.toml, as written."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M)
    assert match, "pyproject.toml has no [project] dependencies list"
    return match.group(1)


def _venv_home() -> Path:
    """Where the torch-free venv is kept between test runs: one per Python version and dependency list
    (a changed list makes a new venv, so pip resolves it again), under $EDGEXFER_TEST_CACHE or
    ~/.cache/edgexfer/test."""
    key = hashlib.sha256(f"{sys.version_info[:2]}|{_core_dependencies()}".encode()).hexdigest()[:12]
    base = Path(os.environ.get("EDGEXFER_TEST_CACHE", Path.home() / ".cache" / "edgexfer" / "test"))
    return base / f"torch-free-venv-{key}"


def _project_copy(root: Path) -> Path:
    """What a wheel is built from, copied, so the build writes nothing into the checkout."""
    source = root / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "edgexfer", source / "edgexfer", ignore=shutil.ignore_patterns("__pycache__"))
    return source


def torch_free_python(root: Path) -> Path:
    """The python of the torch-free venv holding this checkout's edgexfer (``root``: a scratch folder).
    Skips the test when pip cannot reach a package index to make the venv the first time."""
    venv = _venv_home()
    python = venv / "bin" / "python"
    complete = venv / ".edgexfer-deps-installed"
    if not complete.is_file():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
        probe = pip(python, "download", "--no-deps", "--dest", str(root / "probe"), "click>=8.0", timeout=300)
        if probe.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            pytest.skip(f"pip cannot reach a package index here: {last_line(probe.stderr)}")
        installed = pip(python, "install", "--quiet", str(_project_copy(root)))
        assert installed.returncode == 0, installed.stderr[-3000:]
        complete.write_text(_core_dependencies(), encoding="utf-8")
    else:
        installed = pip(python, "install", "--quiet", "--no-deps", "--force-reinstall", str(_project_copy(root)))
        assert installed.returncode == 0, installed.stderr[-3000:]
    return python


def base_python(python: Path) -> str:
    """The interpreter a venv was made from (its pyvenv.cfg), for a device venv made by deploy --setup."""
    config = (python.parents[1] / "pyvenv.cfg").read_text(encoding="utf-8")
    match = re.search(r"^executable\s*=\s*(.+)$", config, re.M) or re.search(r"^home\s*=\s*(.+)$", config, re.M)
    assert match, config
    found = Path(match.group(1).strip())
    return str(found if found.is_file() else found / "python3")


def wheelhouse(python: Path, wheel: Path) -> Path:
    """Wheels of ``wheel``'s dependencies for ``python``'s platform (``pip download``, from pip's cache
    or the index), kept next to the venv per dependency list."""
    folder = _venv_home().with_name(_venv_home().name.replace("torch-free-venv", "wheelhouse"))
    if (folder / ".complete").is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    got = pip(python, "download", "--quiet", "--only-binary=:all:", "--dest", str(folder), str(wheel), timeout=900)
    if got.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"pip cannot fetch the wheels of the dependencies here: {last_line(got.stderr)}")
    for stray in folder.glob("edgexfer-*.whl"):  # deploy --setup sends its own edgexfer wheel
        stray.unlink()
    (folder / ".complete").write_text("", encoding="utf-8")
    return folder
