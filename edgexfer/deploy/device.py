"""The steps of a deploy that run on the device, before and after the ordinary ``edgexfer`` commands:
``python -m edgexfer.deploy.device probe|hashes|receive|check|clean DIR [BYTES|--all]``.

Everything stays inside ``DIR`` (the folder named in ``--to HOST:DIR``):

- ``DIR/bundle/``  what the workstation sent (rsync mirrors it; it stays as the base of the next delta);
- ``DIR/run/``     the run directory the commands work in, made from the bundle by :func:`check` only
  after every file's sha256 matched ``bundle/BUNDLE.json``, staged under a temporary name and renamed.

Each command prints one JSON document on stdout; a problem is one ``edgexfer: error:`` line, exit 2.
Only the standard library is imported, so this answers even where numpy or a backend is broken.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any, Dict, List

BUNDLE = "bundle"
RUN = "run"
INDEX = "BUNDLE.json"
UPLOAD = ".upload.tar"


class BundleProblem(Exception):
    """The bundle on the device is incomplete or differs from what was sent."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _inside(root: Path, relative: str) -> Path:
    """``root/relative``, refusing absolute paths and '..' (nothing is read or written outside root)."""
    parts = PurePosixPath(relative).parts
    if not parts or PurePosixPath(relative).is_absolute() or ".." in parts:
        raise BundleProblem(f"bundle names a path outside its folder: {relative!r}")
    return root.joinpath(*parts)


def probe(root: Path) -> Dict[str, Any]:
    """Make ``root/bundle`` and say how much room there is and which edgexfer/Python answer."""
    from edgexfer import __version__

    (root / BUNDLE).mkdir(parents=True, exist_ok=True)
    return {"dir": str(root.resolve()), "free_bytes": shutil.disk_usage(root).free, "edgexfer": __version__,
            "python": sys.version.split()[0], "executable": sys.executable}


def hashes(root: Path) -> Dict[str, Any]:
    """sha256 of every file already in ``root/bundle`` (without rsync, only what differs is sent)."""
    bundle = root / BUNDLE
    found = {}
    for path in sorted(bundle.rglob("*")) if bundle.is_dir() else []:
        if path.is_file() and not path.name.startswith("."):
            found[path.relative_to(bundle).as_posix()] = _sha256(path)
    return {"files": found}


def check(root: Path) -> Dict[str, Any]:
    """Check every file of the bundle against ``BUNDLE.json``, then (re)make ``root/run`` from it.

    The run is staged as ``root/.run.partial`` (hard links, or copies where links fail) and renamed into
    place, so the commands never see a half-made run; a previous run is removed only after that.
    """
    bundle = root / BUNDLE
    index_path = bundle / INDEX
    if not index_path.is_file():
        raise BundleProblem(f"{index_path} is missing: the transfer did not finish; run the deploy again")
    index = json.loads(index_path.read_text(encoding="utf-8"))
    files: Dict[str, str] = index["files"]
    problems: List[str] = []
    for relative, expected in sorted(files.items()):
        path = _inside(bundle, relative)
        if not path.is_file():
            problems.append(f"{relative} missing")
        elif _sha256(path) != expected:
            problems.append(f"{relative} differs (sha256)")
    if problems:
        raise BundleProblem(f"bundle in {bundle} does not match what was sent: {'; '.join(problems[:3])}")
    staging, old = root / ".run.partial", root / ".run.old"
    for leftover in (staging, old):
        shutil.rmtree(leftover, ignore_errors=True)
    for relative in files:
        source, dest = _inside(bundle, relative), _inside(staging, relative)
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, dest)  # the commands replace files atomically, so the bundle copy stays intact
        except OSError:
            shutil.copy2(source, dest)
    final = root / RUN
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)
    return {"run": str(final.resolve()), "files": len(files), "bytes": sum(_inside(bundle, r).stat().st_size
                                                                          for r in files)}


def receive(root: Path, expected_bytes: int) -> Dict[str, Any]:
    """Read a tar from standard input (a deploy without rsync streams it over ssh) into
    ``root/.upload.tar`` (under a temporary name until all ``expected_bytes`` arrived), then
    :func:`unpack` it. An interrupted stream or a full disk leaves nothing: the partial file is removed."""
    partial = root / (UPLOAD + ".partial")
    try:
        with open(partial, "wb") as out:
            shutil.copyfileobj(sys.stdin.buffer, out)
        size = partial.stat().st_size
        if size != expected_bytes:
            raise BundleProblem(f"the transfer was interrupted ({size} of {expected_bytes} bytes arrived); run the "
                                "deploy again")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, root / UPLOAD)
    return unpack(root)


def unpack(root: Path) -> Dict[str, Any]:
    """Move the files of ``root/.upload.tar`` into the bundle, each under a temporary name first; then
    drop bundle files the index no longer names."""
    archive = root / UPLOAD
    bundle = root / BUNDLE
    names = []
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if not member.isfile():
                raise BundleProblem(f"upload holds a non-file entry {member.name!r}")
            dest = _inside(bundle, member.name)
            dest.parent.mkdir(parents=True, exist_ok=True)
            partial = dest.with_name(f".{dest.name}.partial")
            with tar.extractfile(member) as source, open(partial, "wb") as out:  # type: ignore[union-attr]
                shutil.copyfileobj(source, out)
            os.replace(partial, dest)
            names.append(member.name)
    archive.unlink()
    wanted = set(json.loads((bundle / INDEX).read_text(encoding="utf-8"))["files"]) | {INDEX}
    for path in sorted(bundle.rglob("*"), reverse=True):
        relative = path.relative_to(bundle).as_posix()
        if path.is_file() and relative not in wanted:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    return {"unpacked": len(names)}


def clean(root: Path, everything: bool) -> Dict[str, Any]:
    """Remove the work run (and with ``everything`` the bundle and the folder, if then empty)."""
    removed = []
    # everything: the bundle, and the venv and wheels of ``deploy --setup`` (edgexfer.deploy.bootstrap)
    names = [RUN, ".run.partial", ".run.old"] + ([BUNDLE, UPLOAD, UPLOAD + ".partial", "setup", "venv"]
                                                 if everything else [])
    for name in names:
        path = root / name
        if path.is_dir():
            shutil.rmtree(path)
            removed.append(name)
        elif path.exists():
            path.unlink()
            removed.append(name)
    if everything and root.is_dir() and not any(root.iterdir()):
        root.rmdir()
    return {"removed": removed}


def main(argv: List[str]) -> int:
    """``probe|hashes|receive|check|clean DIR [--all]`` -> one JSON line, or one error line and exit 2."""
    if len(argv) < 2 or argv[0] not in ("probe", "hashes", "receive", "check", "clean"):
        print("usage: python -m edgexfer.deploy.device probe|hashes|receive|check|clean DIR [--all]", file=sys.stderr)
        return 2
    command, root = argv[0], Path(argv[1])
    try:
        if command == "probe":
            result = probe(root)
        elif command == "hashes":
            result = hashes(root)
        elif command == "check":
            result = check(root)
        elif command == "receive":
            result = receive(root, int(argv[2]))
        else:
            result = clean(root, "--all" in argv[2:])
    except (BundleProblem, OSError, ValueError, KeyError, IndexError, tarfile.TarError) as exc:
        print(f"edgexfer: error: {type(exc).__name__ if not isinstance(exc, BundleProblem) else ''}"
              f"{': ' if not isinstance(exc, BundleProblem) else ''}{exc}".replace("\n", " "), file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
