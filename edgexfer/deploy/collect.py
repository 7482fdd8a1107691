"""The device's outputs back into ``RUN/devices/<host>/`` and the run's manifest, with hashes.

Brought back: ``verify.json`` and ``report.md`` of the device's verify, the bench results
(``<host>.json`` / ``.md``), the sidecar of every build made there (the engine itself stays: it is
tied to that device), the device run's manifest (``device-manifest.json``) and its ``doctor.json``.
They land in a staging folder that replaces ``RUN/devices/<host>/`` in one rename, so a reader sees
the previous deploy's files or this one's, never a mix.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List

from edgexfer.errors import DeviceError
from edgexfer.fsutil import atomic_write_json

DEVICES_DIR = "devices"
INCLUDES = ("manifest.json", "verify/", "verify/verify.json", "verify/report.md", "bench/", "bench/*.json",
            "bench/*.md", "build/", "build/*.json")


def device_dir(run_dir: Path, slug: str) -> Path:
    """Where one device's outputs live in the run."""
    return run_dir / DEVICES_DIR / slug


def collect(config: Any, device: Any, result: Any, doctor: Dict[str, Any], bundle: Any) -> None:
    """Fetch, swap into place, record in the manifest; fills ``result.verify`` / ``result.bench``."""
    run_dir, slug = config.run_dir, device.target.slug
    final = device_dir(run_dir, slug)
    staging = final.parent / f".{slug}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    device.ssh.download(device.run_path, staging, INCLUDES)
    remote_manifest = staging / "manifest.json"
    if not (staging / "verify" / "verify.json").is_file() or not remote_manifest.is_file():
        raise DeviceError(f"{device.target.host}: verify wrote no verify.json on the device; see the device's "
                          f"{device.run_path}")
    os.replace(remote_manifest, staging / "device-manifest.json")
    atomic_write_json(staging / "doctor.json", doctor)
    for name, rec in device_builds(staging).items():
        relative = build_file(staging, rec)
        if not (staging / relative).is_file():  # no sidecar (an ONNX Runtime build): its record stands for it
            atomic_write_json(staging / relative, {"artifact": name, "device_manifest_record": rec})
    old = final.parent / f".{slug}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)
    result.verify = json.loads((final / "verify" / "verify.json").read_text(encoding="utf-8"))
    bench_files = sorted((final / "bench").glob("*.json")) if (final / "bench").is_dir() else []
    result.bench = json.loads(bench_files[0].read_text(encoding="utf-8")) if bench_files else None
    result.collected = record(config, device, result, final, bundle)


def device_builds(folder: Path) -> Dict[str, Dict[str, Any]]:
    """The build records of the device run's manifest (collected as device-manifest.json)."""
    data = json.loads((folder / "device-manifest.json").read_text(encoding="utf-8"))
    return {name: rec for name, rec in data.get("artifacts", {}).items() if rec.get("stage") == "build"}


def build_file(folder: Path, rec: Dict[str, Any]) -> str:
    """The collected file that stands for a device build (the engine itself stays on the device): its
    sidecar ``build/x.json``, or for a build without one (ONNX Runtime) ``build/x.record.json``, the
    device manifest's record of it, written by :func:`collect`."""
    sidecar = Path(rec["path"]).with_suffix(".json").as_posix()
    return sidecar if (folder / sidecar).is_file() else Path(rec["path"]).with_suffix(".record.json").as_posix()


def record(config: Any, device: Any, result: Any, folder: Path, bundle: Any) -> Dict[str, str]:
    """Record every collected file as a ``deploy`` artifact (inputs: the models that were sent)."""
    from edgexfer.manifest import Manifest

    slug, target = device.target.slug, device.target
    builds = device_builds(folder)
    inputs = [name for name in bundle.artifacts if name.startswith("onnx")]
    where = {"host": target.host, "destination": target.destination, "remote_dir": target.remote_dir,
             "backend": result.backend}
    named: Dict[str, str] = {}
    with Manifest.update(config.run_dir) as manifest:
        for name in [n for n in manifest.data["artifacts"] if n.startswith(f"deploy_{slug}_")]:
            manifest.remove_artifact(name)  # an earlier deploy's records of files this one replaced
        entries: List[tuple] = [("verify", "verify/verify.json", "verify-json"),
                                ("verify_report", "verify/report.md", "report"),
                                ("doctor", "doctor.json", "doctor-json"),
                                ("device_manifest", "device-manifest.json", "manifest")]
        for path in sorted(folder.glob("bench/*")):
            entries.append(("bench" if path.suffix == ".json" else "bench_table", path.relative_to(folder).as_posix(),
                            "bench-json" if path.suffix == ".json" else "report"))
        for build_name, rec in sorted(builds.items()):
            extra = {**where, "device_artifact": rec.get("path"), "device_sha256": rec.get("sha256"),
                     "device_size_bytes": rec.get("size_bytes"), **rec.get("extra", {})}
            entries.append((build_name, build_file(folder, rec), "device-build", extra))
        for entry in entries:
            key, relative, kind = entry[:3]
            extra = entry[3] if len(entry) > 3 else where
            name = f"deploy_{slug}_{key}"
            manifest.add_artifact(name, folder / relative, kind=kind, stage="deploy", inputs=inputs, extra=extra)
            named[name] = relative
        summary = (result.verify or {}).get("summary", {})
        manifest.record_stage(f"deploy:{slug}", {"to": target.destination, "remote_dir": target.remote_dir,
                                                 "backend": result.backend, "precisions": list(config.precisions)},
                              metrics={"verify": summary, "bytes_sent": result.transfer.bytes_sent,
                                       "files_sent": result.transfer.files_sent, "copy": result.transfer.tool},
                              status=_stage_status(result.verify or {}))
    return named


def _stage_status(verify: Dict[str, Any]) -> str:
    """The deploy stage's status as a local verify records its own: done, inconclusive or failed."""
    return {"passed": "done", "inconclusive": "inconclusive"}.get(verdict_status(verify), "failed")


def verdict_status(verify: Dict[str, Any]) -> str:
    """A device's verify.json verdict (``passed``, ``failed``, ``inconclusive`` ...); files from an
    edgexfer without verdicts have only ``gate.passed``."""
    status = verify.get("verdict", {}).get("status")
    if status:
        return status
    return "passed" if verify.get("gate", {}).get("passed") else "failed"
