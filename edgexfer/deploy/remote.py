"""One device, end to end: probe, doctor, send the bundle, check it, then the ordinary ``edgexfer build``,
``verify`` and ``bench`` there, and bring the outputs back (:mod:`edgexfer.deploy.collect`)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from edgexfer.deploy.config import BACKEND_PREFERENCE, DeployConfig
from edgexfer.deploy.target import DeviceTarget
from edgexfer.deploy.transport import Ssh, Transfer, default_ssh_config
from edgexfer.errors import BackendUnavailableError, DeviceError, EdgexferError

VERIFY_GATE_EXIT = 3
VERIFY_INCONCLUSIVE_EXIT = 5  # the reference is at chance on the device's data: verify.json says why


@dataclass
class DeviceResult:
    """What one device did: its backend, the transfer, verify.json's data, bench's data, the error."""

    target: DeviceTarget
    backend: Optional[str] = None
    transfer: Optional[Transfer] = None
    verify: Optional[Dict[str, Any]] = None
    bench: Optional[Dict[str, Any]] = None
    collected: Dict[str, str] = field(default_factory=dict)
    error: Optional[EdgexferError] = None
    seconds: float = 0.0


class BundleCache:
    """Bundles shared by the devices of one deploy: made once per backend, under a lock."""

    def __init__(self, config: DeployConfig):
        self.config = config
        self._lock = threading.Lock()
        self._made: Dict[str, Any] = {}

    def get(self, backend: str) -> Any:
        """The staged bundle for ``backend`` (float ONNX, and its INT8 export when int8 is asked)."""
        from edgexfer.backends.base import get_backend
        from edgexfer.deploy.bundle import make_bundle

        with self._lock:
            if backend not in self._made:
                int8 = get_backend(backend).int8_source if "int8" in self.config.precisions else None
                self._made[backend] = make_bundle(self.config.run_dir, backend, int8, self.config.data,
                                                  self.config.limit, send_data=self.config.device_data is None)
            return self._made[backend]


def remote_python(value: str) -> str:
    """``~/venv/bin/python`` as a path relative to the remote home (the quoted word is not expanded)."""
    return value[2:] if value.startswith("~/") else value


class Device:
    """The remote half of a deploy to one device (``say`` prints a progress line)."""

    def __init__(self, config: DeployConfig, target: DeviceTarget, say: Callable[[str], None]):
        self.config, self.target, self.say = config, target, say
        self.ssh = Ssh(target, default_ssh_config(config.ssh_config))
        self.base_python = remote_python(config.remote_python)  # --setup makes its venv from this one
        self.python = self.base_python
        self.run_path = f"{target.remote_dir}/run"

    # ---- edgexfer there ----------------------------------------------------------------------
    def edgexfer(self, args: List[str], what: str, ok: tuple = (0,)) -> Any:
        """Run ``PY -m edgexfer -q ARGS`` there; a failure is its one error line, named by device."""
        done = self.ssh.run([self.python, "-m", "edgexfer", "-q", *args], timeout=self.config.timeout_s)
        if done.code not in ok:
            raise self.failure(done, what)
        return done

    def helper(self, command: str, *extra: str, stdin_file: Any = None) -> Dict[str, Any]:
        """``PY -m edgexfer.deploy.device COMMAND DIR``: its JSON answer."""
        done = self.ssh.run([self.python, "-m", "edgexfer.deploy.device", command, self.target.remote_dir, *extra],
                            timeout=self.config.timeout_s, stdin_file=stdin_file)
        if done.code != 0:
            raise self.failure(done, command)
        return json.loads(done.stdout.strip().splitlines()[-1])

    def failure(self, done: Any, what: str) -> EdgexferError:
        """A failed remote command as one line, named by device (what to do about it included)."""
        host, text = self.target.host, done.stderr
        lowered = text.lower()
        if done.code == 127 or (done.code == 126 and "python" in lowered):
            return DeviceError(f"{host}: no Python at '{self.python}' on the device; install python3 there or "
                               "pass --remote-python /path/to/venv/bin/python")
        if "no module named edgexfer." in lowered or "no module named 'edgexfer." in lowered:
            return DeviceError(f"{host}: the edgexfer of '{self.python}' on the device is older than this one (it "
                               f"has no deploy support); upgrade it: ssh {host} '{self.python} -m pip install -U "
                               "edgexfer'")
        if "no module named edgexfer" in lowered or "no module named 'edgexfer" in lowered:
            return DeviceError(f"{host}: edgexfer is not installed for '{self.python}' on the device; pass --setup "
                               "(edgexfer sets up a venv in the remote folder), or install it with: ssh "
                               f"{host} '{self.python} -m pip install edgexfer' (in a venv; on a Jetson made with "
                               "--system-site-packages for TensorRT), or pass --remote-python")
        if done.code == 2 and "edgexfer: error: " in text and what.startswith("setup"):
            return DeviceError(f"{host}: {what}: {text.strip().splitlines()[-1].replace('edgexfer: error: ', '')}")
        if "no space left" in lowered or "errno 28" in lowered:
            return DeviceError(f"{host}: the device's disk is full ({what}); free some space or use --to HOST:DIR "
                               "on a bigger disk")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("edgexfer: ")]
        reason = (errors or lines or ["(no message)"])[-1].replace("edgexfer: error: ", "")
        if done.code == BackendUnavailableError.exit_code:
            return BackendUnavailableError(f"{host}: {what}: {reason}")
        return DeviceError(f"{host}: {what} failed on the device (exit {done.code}): {reason}")

    # ---- the steps ---------------------------------------------------------------------------
    def probe(self) -> Dict[str, Any]:
        """Python, edgexfer and free space there (making the remote folder), then its doctor record."""
        probed = self.helper("probe")
        doctor = json.loads(self.edgexfer(["doctor", "--json"], "doctor").stdout)
        doctor["deploy_probe"] = probed
        return doctor

    def choose_backend(self, doctor: Dict[str, Any]) -> str:
        """``--backend``, or the best one the device can run; exit 4 when it cannot run the one asked."""
        usable = {b["name"]: b for b in doctor.get("backends", [])}
        if self.config.backend is not None:
            entry = usable.get(self.config.backend)
            if entry is None or not entry.get("usable"):
                detail = entry.get("detail") if entry else "not reported by its edgexfer doctor"
                raise BackendUnavailableError(f"{self.target.host}: backend {self.config.backend} is not usable "
                                              f"on the device: {detail}")
            return self.config.backend
        for name in BACKEND_PREFERENCE:
            if usable.get(name, {}).get("usable"):
                return name
        raise BackendUnavailableError(f"{self.target.host}: no backend usable on the device (edgexfer doctor "
                                      "there says why); install onnxruntime in its Python")

    def send(self, bundle: Any, free_bytes: int) -> Transfer:
        """The bundle into ``DIR/bundle`` (rsync, or a tar of what differs over ssh), checked there by hash."""
        if free_bytes < 2 * bundle.total_bytes:
            raise DeviceError(f"{self.target.host}: the device's disk is full for this deploy: "
                              f"{free_bytes / 1e6:.0f} MB free in {self.target.remote_dir}, the bundle and its "
                              f"builds need about {2 * bundle.total_bytes / 1e6:.0f} MB; free some space")
        use_rsync = self.config.copy == "rsync" or (self.config.copy == "auto" and self.ssh.has_rsync())
        if use_rsync:
            transfer = self.ssh.upload(bundle.root, f"{self.target.remote_dir}/bundle", self.config.progress)
        else:
            transfer = self._stream(bundle)
        try:
            self.helper("check")
        except DeviceError as exc:
            if not use_rsync or "does not match" not in str(exc):
                raise
            # A file changed there behind rsync's back (same size and time): send by content, check again.
            self.say(f"{self.target.host}: bundle differs on the device; re-sending by checksum")
            again = self.ssh.upload(bundle.root, f"{self.target.remote_dir}/bundle", False, checksum=True)
            transfer.bytes_sent += again.bytes_sent
            transfer.files_sent += again.files_sent
            self.helper("check")
        return transfer

    def _stream(self, bundle: Any) -> Transfer:
        """Where rsync is missing: a tar of the files whose hash differs there, streamed into ssh's
        standard input and unpacked there by name (scp's legacy protocol would pass the remote path
        through the remote shell, and SFTP needs a subsystem many devices lack; this needs neither)."""
        import tarfile
        import tempfile
        from pathlib import Path

        from edgexfer.deploy.bundle import INDEX

        started = time.perf_counter()
        there = self.helper("hashes")["files"]
        changed = [rel for rel, sha in sorted(bundle.files.items()) if there.get(rel) != sha] + [INDEX]
        with tempfile.TemporaryDirectory(prefix="edgexfer-deploy-") as tmp:
            archive = Path(tmp) / ".upload.tar"
            with tarfile.open(archive, "w") as tar:
                for relative in changed:
                    tar.add(bundle.root / relative, arcname=relative)
            size = archive.stat().st_size
            self.helper("receive", str(size), stdin_file=archive)
        return Transfer("ssh", size, len(changed), time.perf_counter() - started)

    def build_verify_bench(self, backend: str, bundle: Any) -> None:
        """The ordinary commands, in the run made from the checked bundle."""
        data = self.config.device_data or f"{self.run_path}/data"
        for precision in self.config.precisions:
            self.say(f"{self.target.host}: build {backend} {precision}")
            self.edgexfer(["build", self.run_path, "--backend", backend, "--precision", precision,
                           "--smoke-data", data], f"build {backend} {precision}")
        self.say(f"{self.target.host}: verify")
        gate = []
        if self.config.max_drop is not None:
            gate += ["--max-drop", str(self.config.max_drop)]
        if self.config.min_agreement is not None:
            gate += ["--min-agreement", str(self.config.min_agreement)]
        self.edgexfer(["verify", self.run_path, "--data", data, "--backends", backend, "--no-plots",
                       "--limit", str(self.config.limit), *gate], "verify",
                      ok=(0, VERIFY_GATE_EXIT, VERIFY_INCONCLUSIVE_EXIT))
        if self.config.bench:
            self.say(f"{self.target.host}: bench")
            self.edgexfer(["bench", "--run", self.run_path, "--backend", backend, "--batch", "1", "--no-e2e",
                           "--min-time", str(self.config.bench_min_time), "--out", f"{self.run_path}/bench",
                           "--work-dir", f"{self.run_path}/bench-work", "--machine-name", self.target.slug],
                          "bench")

    def cleanup(self) -> None:
        """Remove the work run there (``--purge``: everything edgexfer put in the folder)."""
        if self.config.keep:
            return
        self.helper("clean", *(["--all"] if self.config.purge else []))


def deploy_device(config: DeployConfig, target: DeviceTarget, bundles: BundleCache,
                  say: Callable[[str], None]) -> DeviceResult:
    """Deploy to one device; an EdgexferError is kept in the result (other devices go on)."""
    from edgexfer.deploy.collect import collect

    started = time.perf_counter()
    result = DeviceResult(target)
    device = Device(config, target, say)
    try:
        if config.setup:
            from edgexfer.deploy.setup import set_up

            device.python = set_up(device)
        say(f"{target.host}: probing (python, edgexfer, doctor)")
        doctor = device.probe()
        result.backend = device.choose_backend(doctor)
        bundle = bundles.get(result.backend)
        say(f"{target.host}: sending {len(bundle.files)} files ({bundle.total_bytes / 1e6:.1f} MB) for "
            f"{result.backend}")
        result.transfer = device.send(bundle, int(doctor["deploy_probe"]["free_bytes"]))
        say(f"{target.host}: sent {result.transfer.bytes_sent} bytes ({result.transfer.tool}, "
            f"{result.transfer.files_sent} files changed); bundle checked by sha256 there")
        device.build_verify_bench(result.backend, bundle)
        collect(config, device, result, doctor, bundle)
        device.cleanup()
    except EdgexferError as exc:
        result.error = exc
    result.seconds = time.perf_counter() - started
    return result
