"""``deploy --setup`` on the device, before edgexfer is there: a venv in ``DIR/venv`` with the wheel of
the workstation's edgexfer installed into it.

This file is sent as the program text of ``python3 -c`` (its source, read by
:func:`edgexfer.deploy.setup.bootstrap_source`), so it imports only the standard library and runs on
Python 3.8 (JetPack 5). Commands: ``probe DIR``, ``receive DIR BYTES`` (a tar on standard input into
``DIR/setup``) and ``install DIR SPEC`` (SPEC: JSON, see :func:`install`). Each prints one JSON line;
a problem is one ``edgexfer: error:`` line, exit 2.

Nothing half-made is used: files arrive under temporary names and are renamed when complete, the
install checks every file's sha256 first, and the venv counts as set up only once ``MARKER`` is
written, last, after pip succeeded (a venv without it is made again).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path, PurePosixPath

SETUP = "setup"
VENV = "venv"
MARKER = ".edgexfer-setup.json"
JETSON_RELEASE = "/etc/nv_tegra_release"  # present on every L4T / JetPack image


class SetupProblem(Exception):
    """A device that cannot be set up: the one line to print."""


def venv_python(root: Path) -> Path:
    """The venv's interpreter (where deploy runs ``-m edgexfer``)."""
    return root / VENV / "bin" / "python"


def installed(root: Path) -> object:
    """The marker of a finished setup (its key and extras), or None when there is none."""
    try:
        return json.loads((root / VENV / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def probe(root: Path) -> dict:
    """Python, whether it can make a venv (Debian splits ``ensurepip`` into python3-venv), whether this
    is a Jetson (JetPack's TensorRT lives in the system site-packages), free space, the finished setup."""
    try:
        import ensurepip  # noqa: F401
        import venv  # noqa: F401
        can_venv = True
    except ImportError:
        can_venv = False
    root.mkdir(parents=True, exist_ok=True)
    return {"python": sys.version.split()[0], "executable": sys.executable, "venv_module": can_venv,
            "jetson": os.path.exists(JETSON_RELEASE), "free_bytes": shutil.disk_usage(str(root)).free,
            "installed": installed(root), "dir": str(root.resolve())}


def _inside(root: Path, relative: str) -> Path:
    parts = PurePosixPath(relative).parts
    if not parts or PurePosixPath(relative).is_absolute() or ".." in parts:
        raise SetupProblem(f"setup files name a path outside their folder: {relative!r}")
    return root.joinpath(*parts)


def receive(root: Path, expected_bytes: int) -> dict:
    """A tar from standard input into ``root/setup``: kept as ``.upload.partial`` until all
    ``expected_bytes`` arrived (an interrupted stream is never unpacked), then each file under a
    temporary name, renamed when complete."""
    folder = root / SETUP
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / ".upload.partial"
    with open(partial, "wb") as out:
        shutil.copyfileobj(sys.stdin.buffer, out)
    size = partial.stat().st_size
    if size != expected_bytes:
        partial.unlink()
        raise SetupProblem(f"the transfer was interrupted ({size} of {expected_bytes} bytes arrived); run the "
                           "deploy again")
    names = []
    with tarfile.open(str(partial)) as tar:
        for member in tar.getmembers():
            if not member.isfile():
                raise SetupProblem(f"upload holds a non-file entry {member.name!r}")
            dest = _inside(folder, member.name)
            dest.parent.mkdir(parents=True, exist_ok=True)
            temporary = dest.with_name(f".{dest.name}.partial")
            with tar.extractfile(member) as source, open(temporary, "wb") as out:  # type: ignore[union-attr]
                shutil.copyfileobj(source, out)
            os.replace(temporary, dest)
            names.append(member.name)
    partial.unlink()
    return {"received": len(names)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run(argv: list, what: str, log: Path) -> None:
    """Run a step, its output kept in ``log``; its failure is one line: pip's last ``ERROR: ...`` line, or
    the last line of a traceback (pip's ``ERROR: Exception:`` is followed by one)."""
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    log.write_text(f"$ {' '.join(argv)}\n{proc.stdout}\n{proc.stderr}", encoding="utf-8")
    if proc.returncode == 0:
        return
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()] or \
        [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:") and line != "ERROR: Exception:"]
    text = (lines[-1:] if "Traceback" in proc.stderr else errors or lines[-1:] or ["(no message)"])[-1]
    text = f"{text} (full output: {log})"
    if "ensurepip" in text or "python3-venv" in text:
        version = "%d.%d" % sys.version_info[:2]
        raise SetupProblem(f"{what}: this Python cannot make a venv (no ensurepip); install the python3-venv "
                           f"package there (sudo apt-get install python3-venv, or python{version}-venv)")
    if "no space left" in text.lower():
        raise SetupProblem(f"{what}: the device's disk is full (No space left on device); free some space")
    raise SetupProblem(f"{what} failed (exit {proc.returncode}): {text}")


def install(root: Path, spec: dict) -> dict:
    """Set up ``root/venv`` as ``spec`` says: ``key`` (the wheel's source hash), ``wheel`` (its file name
    in ``root/setup``), ``files`` (name -> sha256 of everything sent), ``extras``, ``wheelhouse``
    (install from ``root/setup/wheelhouse`` only, no index) and ``system_site_packages`` (a Jetson).
    A venv whose marker already holds the same key and extras is reused as it is."""
    started = time.perf_counter()
    wanted = {"key": spec["key"], "extras": sorted(spec["extras"])}
    python = venv_python(root)
    marker = installed(root)
    if marker and {"key": marker.get("key"), "extras": marker.get("extras")} == wanted and python.is_file():
        return {"python": str(python), "reused": True, "seconds": 0.0}
    folder = root / SETUP
    for relative, expected in sorted(spec["files"].items()):
        path = _inside(folder, relative)
        if not path.is_file() or _sha256(path) != expected:
            raise SetupProblem(f"setup file {relative} is missing or differs from what was sent; run the deploy "
                               "again")
    venv = root / VENV
    if (venv / MARKER).exists():
        (venv / MARKER).unlink()  # from here until the end this venv is not a finished setup
    if not python.is_file():
        shutil.rmtree(str(venv), ignore_errors=True)
        flags = ["--system-site-packages"] if spec.get("system_site_packages") else []
        _run([sys.executable, "-m", "venv", *flags, str(venv)], "making the venv", folder / "venv.log")
        fresh = True
    else:
        fresh = False
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
    if spec.get("wheelhouse"):
        pip += ["--no-index", "--find-links", str((folder / "wheelhouse").resolve())]
    wheel = _inside(folder, spec["wheel"]).resolve()
    extras = f"[{','.join(wanted['extras'])}]" if wanted["extras"] else ""
    # a file URL, never the bare path: pip reads '; ...' in a requirement as an environment marker
    _run(pip + [f"edgexfer{extras} @ {wheel.as_uri()}"], "pip install", folder / "pip.log")
    if not fresh:  # the same version number may hold other code: put this wheel's files in place
        _run(pip + ["--force-reinstall", "--no-deps", f"edgexfer @ {wheel.as_uri()}"], "pip install",
             folder / "pip.log")
    temporary = venv / (MARKER + ".partial")
    temporary.write_text(json.dumps({**wanted, "wheel": spec["wheel"]}), encoding="utf-8")
    os.replace(temporary, venv / MARKER)
    return {"python": str(python), "reused": False, "seconds": round(time.perf_counter() - started, 1)}


def main(argv: list) -> int:
    """``probe DIR`` | ``receive DIR BYTES`` | ``install DIR SPEC``: one JSON line, or one error line, exit 2."""
    if len(argv) < 2 or argv[0] not in ("probe", "receive", "install"):
        print("usage: python3 -c SOURCE probe|receive|install DIR [BYTES|SPEC]", file=sys.stderr)
        return 2
    command, root = argv[0], Path(argv[1])
    try:
        if command == "probe":
            result = probe(root)
        elif command == "receive":
            result = receive(root, int(argv[2]))
        else:
            result = install(root, json.loads(argv[2]))
    except SetupProblem as exc:
        print(f"edgexfer: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError, KeyError, IndexError, tarfile.TarError) as exc:
        print(f"edgexfer: error: {type(exc).__name__}: {exc}".replace("\n", " "), file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
