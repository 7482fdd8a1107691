"""``deploy --setup``: edgexfer installs itself on the device, in a venv in the remote folder.

The wheel is this edgexfer, built here (``pip wheel --no-deps``) once per source hash and cached under
``~/.cache/edgexfer/wheels/<hash>/``. It is sent with rsync (or a tar over ssh) to ``DIR/setup/`` and
installed by :mod:`edgexfer.deploy.bootstrap`, which runs on the device's own Python (``python3 -c``)
because edgexfer is not there yet. Its dependencies come from the device's package index, or with
``--wheelhouse`` only from the wheels sent along (an offline device). The runtime extras follow
``--backend`` (never torch); on a Jetson the venv sees the system site-packages, where JetPack's
TensorRT lives. A re-deploy whose wheel hash and extras are already installed reuses the venv.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from edgexfer.errors import ConfigError, DeviceError

WHEEL_CACHE_ENV = "EDGEXFER_WHEEL_CACHE"
# Extras a backend needs on a device (the core install already brings ONNX Runtime). TensorRT on a
# Jetson comes from JetPack (system site-packages), not from PyPI.
BACKEND_EXTRAS = {"openvino": ["openvino"], "tensorrt": ["tensorrt"], "onnxruntime": []}


def bootstrap_source() -> str:
    """The program text ``python3 -c`` runs on the device (standard library only)."""
    from edgexfer.deploy import bootstrap

    return Path(bootstrap.__file__).read_text(encoding="utf-8")


def project_root() -> Path:
    """The source tree this edgexfer runs from (pyproject.toml next to the package)."""
    import edgexfer

    root = Path(edgexfer.__file__).resolve().parents[1]
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or 'name = "edgexfer"' not in pyproject.read_text(encoding="utf-8"):
        raise ConfigError(f"--setup builds a wheel of this edgexfer from its source, but {root} holds no edgexfer "
                          "pyproject.toml (installed from a wheel?); install edgexfer on the device yourself and "
                          "pass --remote-python")
    return root


def _source_files(root: Path) -> List[Path]:
    files = [root / "pyproject.toml", root / "README.md"]
    for path in sorted((root / "edgexfer").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            files.append(path)
    return [path for path in files if path.is_file()]


def source_hash(root: Path) -> str:
    """sha256 over the names and contents of what the wheel is built from."""
    digest = hashlib.sha256()
    for path in _source_files(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def wheel_cache() -> Path:
    """``$EDGEXFER_WHEEL_CACHE``, else ``$XDG_CACHE_HOME/edgexfer/wheels`` (``~/.cache``)."""
    if os.environ.get(WHEEL_CACHE_ENV):
        return Path(os.environ[WHEEL_CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgexfer" / "wheels"


def local_wheel(say: Callable[[str], None] = lambda line: None) -> Tuple[Path, str]:
    """(the wheel of this edgexfer, its source hash): from the cache, or built once into it. The build
    runs on a copy of the source, so nothing is written into the checkout."""
    root = project_root()
    key = source_hash(root)
    folder = wheel_cache() / key[:24]
    found = sorted(folder.glob("edgexfer-*.whl")) if folder.is_dir() else []
    if found:
        return found[0], key
    say(f"building the edgexfer wheel ({key[:12]})")
    with tempfile.TemporaryDirectory(prefix="edgexfer-wheel-") as tmp:
        source = Path(tmp) / "src"
        source.mkdir()
        for path in _source_files(root):
            dest = source / path.relative_to(root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
        argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "--quiet",
                "--wheel-dir", str(Path(tmp) / "out"), str(source)]
        try:
            import setuptools  # noqa: F401  (present: build offline with it instead of fetching one)

            argv.insert(4, "--no-build-isolation")
        except ImportError:
            pass
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        built = sorted((Path(tmp) / "out").glob("edgexfer-*.whl"))
        if proc.returncode != 0 or not built:
            lines = [line for line in proc.stderr.splitlines() if line.strip()] or ["(no message)"]
            raise DeviceError(f"building the edgexfer wheel for --setup failed: {lines[-1].strip()}")
        folder.mkdir(parents=True, exist_ok=True)
        temporary = folder / f".{built[0].name}.partial"
        shutil.copy2(built[0], temporary)
        os.replace(temporary, folder / built[0].name)
    return folder / built[0].name, key


def wheelhouse_files(wheelhouse: Optional[Path]) -> List[Path]:
    """The wheels of ``--wheelhouse`` (checked by the config: a folder with at least one)."""
    return sorted(wheelhouse.glob("*.whl")) if wheelhouse is not None else []


def extras_for(backend: Optional[str], jetson: bool) -> List[str]:
    """The runtime extras for ``--backend`` on this device (TensorRT on a Jetson: JetPack's own)."""
    if backend is None or (backend == "tensorrt" and jetson):
        return []
    return list(BACKEND_EXTRAS.get(backend, []))


def stage_files(folder: Path, wheel: Path, wheelhouse: Optional[Path]) -> Dict[str, str]:
    """``folder`` holds the wheel and ``wheelhouse/*.whl`` (hard links where possible); name -> sha256."""
    from edgexfer.fsutil import sha256_file

    shutil.rmtree(folder, ignore_errors=True)
    (folder / "wheelhouse").mkdir(parents=True)
    files = {}
    for source, relative in [(wheel, wheel.name)] + [(w, f"wheelhouse/{w.name}") for w in wheelhouse_files(wheelhouse)]:
        try:
            os.link(source, folder / relative)
        except OSError:
            shutil.copy2(source, folder / relative)
        files[relative] = sha256_file(folder / relative)
    return files


def set_up(device: Any) -> str:
    """Make (or reuse) the venv on ``device`` (a :class:`~edgexfer.deploy.remote.Device`); returns its
    Python, relative to the remote home when the remote folder is."""
    config, host, remote_dir = device.config, device.target.host, device.target.remote_dir
    started = time.perf_counter()
    probed = bootstrap(device, "probe")
    wheel, key = local_wheel(device.say)
    extras = extras_for(config.backend, bool(probed["jetson"]))
    venv_python = f"{remote_dir}/venv/bin/python"
    mark = probed.get("installed") or {}
    if mark.get("key") == key and mark.get("extras") == sorted(extras):
        device.say(f"{host}: edgexfer {key[:12]} already set up in {remote_dir}/venv (reused)")
        return venv_python
    if not probed["venv_module"]:
        version = ".".join(probed["python"].split(".")[:2])
        raise DeviceError(f"{host}: '{config.remote_python}' on the device cannot make a venv (no ensurepip); install "
                          f"python3-venv there (sudo apt-get install python3-venv, or python{version}-venv)")
    with tempfile.TemporaryDirectory(prefix="edgexfer-setup-") as tmp:
        files = stage_files(Path(tmp) / "setup", wheel, config.wheelhouse)
        size = sum((Path(tmp) / "setup" / name).stat().st_size for name in files)
        device.say(f"{host}: setting up edgexfer in {remote_dir}/venv"
                   f"{' (Jetson: with the system site-packages)' if probed['jetson'] else ''}: sending {len(files)} "
                   f"wheel(s), {size / 1e6:.1f} MB")
        _send(device, Path(tmp) / "setup")
    spec = {"key": key, "wheel": wheel.name, "files": files, "extras": extras,
            "wheelhouse": config.wheelhouse is not None, "system_site_packages": bool(probed["jetson"])}
    device.say(f"{host}: pip install edgexfer{'[' + ','.join(extras) + ']' if extras else ''} "
               f"({'from the wheelhouse, no index' if config.wheelhouse else 'dependencies from the index'})")
    bootstrap(device, "install", json.dumps(spec, sort_keys=True))
    device.say(f"{host}: edgexfer set up in {remote_dir}/venv ({time.perf_counter() - started:.0f} s)")
    return venv_python


def _send(device: Any, folder: Path) -> None:
    """The staged setup files into ``DIR/setup`` (rsync, or a tar over ssh)."""
    config, remote_dir = device.config, device.target.remote_dir
    if config.copy == "rsync" or (config.copy == "auto" and device.ssh.has_rsync()):
        device.ssh.upload(folder, f"{remote_dir}/setup", False)
        return
    import tarfile

    with tempfile.TemporaryDirectory(prefix="edgexfer-setup-tar-") as tmp:
        archive = Path(tmp) / "setup.tar"
        with tarfile.open(archive, "w") as tar:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    tar.add(path, arcname=path.relative_to(folder).as_posix())
        bootstrap(device, "receive", str(archive.stat().st_size), stdin_file=archive)


def bootstrap(device: Any, command: str, *extra: str, stdin_file: Optional[Path] = None) -> Dict[str, Any]:
    """``PY -c <bootstrap> COMMAND DIR ...`` on the device (its base Python): the JSON answer."""
    done = device.ssh.run([device.base_python, "-c", bootstrap_source(), command, device.target.remote_dir, *extra],
                          timeout=device.config.timeout_s, stdin_file=stdin_file)
    if done.code != 0:
        raise device.failure(done, f"setup ({command})")
    return json.loads(done.stdout.strip().splitlines()[-1])
