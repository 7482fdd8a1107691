"""The user's OpenSSH client (and rsync where both sides have it) as the only way to reach a device.

Everything runs as argv lists (never a local shell). ssh hands its command to the remote user's shell
as one string, so every remote argument is passed through :func:`shlex.quote`: a run directory, host
alias or class name with spaces, quotes, ``;`` or ``$(...)`` stays one literal word. rsync is run
with ``--protect-args`` (``-s``), which sends paths inside its protocol instead of through the remote
shell. Host-key checking stays exactly as the user's ssh configuration says; ``BatchMode=yes`` only
stops ssh from prompting (a missing key or unknown host becomes an error instead of a hung deploy).
Nothing here logs a key, a password or the environment.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

from edgexfer.deploy.target import DeviceTarget
from edgexfer.errors import DeviceError

SSH_CONFIG_ENV = "EDGEXFER_SSH_CONFIG"
PARTIAL_DIR = ".rsync-partial"  # rsync keeps an interrupted file here; the next deploy resumes it
# rsync(1) EXIT VALUES: 20 killed by a signal (SIGINT/SIGTERM/SIGHUP), 30 timeout, 35 daemon timeout; and a
# shell's 128+N for a process killed by signal N (137 SIGKILL, 143 SIGTERM)
INTERRUPTED_CODES = (20, 30, 35, 129, 130, 137, 143)


@dataclass
class Completed:
    """A finished remote command: exit code, stdout and stderr as text."""

    code: int
    stdout: str
    stderr: str


@dataclass
class Transfer:
    """What one upload did: the tool (rsync, or ssh for a tar streamed over ssh), bytes sent, files changed."""

    tool: str
    bytes_sent: int
    files_sent: int
    seconds: float = 0.0


@dataclass
class Ssh:
    """ssh / rsync to one device, with the user's configuration (``ssh_config`` is ``ssh -F``)."""

    target: DeviceTarget
    ssh_config: Optional[str] = None
    connect_timeout: int = 15
    extra: List[str] = field(default_factory=list)

    def ssh_options(self) -> List[str]:
        """Options every ssh (and the ssh rsync starts) gets: the config file, no prompts, a timeout."""
        options = ["-F", self.ssh_config] if self.ssh_config else []
        return options + ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}", *self.extra]

    def ssh_argv(self, remote_args: Sequence[str]) -> List[str]:
        """The local argv that runs ``remote_args`` on the device, each one quoted for its shell."""
        # ssh takes an IPv6 address bare; rsync wants it in brackets before ':path'
        destination = self.target.destination.replace("[", "").replace("]", "")
        return ["ssh", *self.ssh_options(), "--", destination, remote_command(remote_args)]

    def run(self, remote_args: Sequence[str], timeout: Optional[float] = None,
            stdin_file: Optional[Path] = None) -> Completed:
        """Run a command on the device (``stdin_file``: streamed to its standard input). ssh's own
        failures (exit 255) raise :class:`DeviceError`; the command's exit code is returned."""
        try:
            with open(stdin_file, "rb") if stdin_file else open(os.devnull, "rb") as stdin:
                proc = subprocess.run(self.ssh_argv(remote_args), stdin=stdin, capture_output=True, timeout=timeout,
                                      check=False)
        except FileNotFoundError as exc:
            raise DeviceError("no 'ssh' client on this machine; install OpenSSH (apt-get install "
                              "openssh-client)") from exc
        except subprocess.TimeoutExpired as exc:
            raise DeviceError(f"{self.target.host}: no answer within {timeout:.0f} s to {remote_args[:3]}") from exc
        stderr = proc.stderr.decode("utf-8", "replace")
        if proc.returncode == 255:
            raise ssh_failure(self.target.host, stderr)
        return Completed(proc.returncode, proc.stdout.decode("utf-8", "replace"), stderr)

    # ---- files --------------------------------------------------------------------------------
    def has_rsync(self) -> bool:
        """rsync here and on the device (``command -v`` there, one quick call)."""
        if shutil.which("rsync") is None:
            return False
        return self.run(["sh", "-c", "command -v rsync >/dev/null"], timeout=60).code == 0

    def rsync_argv(self, source: str, dest: str, extra: Sequence[str] = ()) -> List[str]:
        """rsync over ssh with our ssh options; paths go through rsync's protocol, not a remote shell."""
        shell = " ".join(shlex.quote(part) for part in ["ssh", *self.ssh_options()])
        return ["rsync", "-rt", "--protect-args", "-e", shell, *extra, "--", source, dest]

    def upload(self, local_dir: Path, remote_dir: str, progress: bool, checksum: bool = False) -> Transfer:
        """Mirror ``local_dir`` into ``remote_dir`` (which must exist): only what changed is sent,
        each file lands under a temporary name and all are renamed together at the end
        (``--delay-updates``); an interrupted file waits in ``.rsync-partial`` for the next run."""
        import time

        extra = ["--delete", "--delay-updates", f"--partial-dir={PARTIAL_DIR}", "--stats"]
        extra += ["--checksum"] if checksum else []
        extra += ["--info=progress2"] if progress else []
        dest = f"{self.target.destination}:{remote_dir}/"
        started = time.perf_counter()
        out = self._rsync(self.rsync_argv(f"{local_dir}/", dest, extra), progress)
        return Transfer("rsync", _stat(out, "Total bytes sent"), _stat(out, "Number of regular files transferred"),
                        time.perf_counter() - started)

    def download(self, remote_dir: str, local_dir: Path, includes: Sequence[str]) -> None:
        """Copy the files matching rsync ``includes`` patterns from ``remote_dir`` into ``local_dir``
        (rsync writes each under a temporary name and renames it when complete)."""
        filters = [f"--include={pattern}" for pattern in includes] + ["--include=*/", "--exclude=*"]
        local_dir.mkdir(parents=True, exist_ok=True)
        self._rsync(self.rsync_argv(f"{self.target.destination}:{remote_dir}/", f"{local_dir}/",
                                    ["--prune-empty-dirs", *filters]), False)

    def _rsync(self, argv: List[str], progress: bool) -> str:
        """Run rsync; its progress (carriage-return lines) is echoed to stderr, its stats returned."""
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        except FileNotFoundError as exc:
            raise DeviceError("no 'rsync' on this machine; install it or use --copy ssh") from exc
        chunks = []
        assert proc.stdout is not None and proc.stderr is not None
        for chunk in iter(lambda: proc.stdout.read(256), ""):
            chunks.append(chunk)
            if progress:
                sys.stderr.write(chunk)
                sys.stderr.flush()
        stderr = proc.stderr.read()
        code = proc.wait()
        if code != 0:
            raise copy_failure(self.target.host, stderr, code, "rsync")
        return "".join(chunks)


def remote_command(args: Sequence[str]) -> str:
    """One shell command line in which every argument is a single literal word."""
    return " ".join(shlex.quote(str(arg)) for arg in args)


def _stat(text: str, label: str) -> int:
    match = re.search(rf"{label}:\s*([\d,.]+)", text)
    return int(match.group(1).replace(",", "").replace(".", "")) if match else 0


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no message)"


def ssh_failure(host: str, stderr: str) -> DeviceError:
    """ssh's exit 255 as one line that says what to do (never the key or the environment)."""
    text = stderr.lower()
    if "host key verification failed" in text or "remote host identification has changed" in text:
        return DeviceError(f"{host}: host key not known or changed; connect once with 'ssh {host}' (or add it "
                           "with ssh-keyscan to known_hosts) and retry. edgexfer never turns host-key checking off")
    if "permission denied" in text:
        return DeviceError(f"{host}: the device refused the key (permission denied); add your public key to "
                           f"its ~/.ssh/authorized_keys (ssh-copy-id {host}) or name one in your ssh config")
    if "could not resolve hostname" in text or "name or service not known" in text:
        return DeviceError(f"{host}: unknown host (could not resolve it); check the name or add a Host entry "
                           "to your ssh config")
    for marker in ("connection refused", "timed out", "no route to host", "network is unreachable",
                   "connection closed", "connection reset"):
        if marker in text:
            return DeviceError(f"{host}: unreachable ({marker}); check that it is on and sshd listens "
                               "(ssh -v HOST shows more)")
    return DeviceError(f"{host}: ssh failed: {_last_line(stderr)}")


def copy_failure(host: str, stderr: str, code: int, tool: str) -> DeviceError:
    """An rsync failure as one line (a full disk named as such)."""
    if "no space left" in stderr.lower() or "disk quota" in stderr.lower():
        return DeviceError(f"{host}: the device's disk is full (no space left while copying); free some space "
                           "or choose another folder with --to HOST:DIR")
    if code in INTERRUPTED_CODES or code < 0:
        return DeviceError(f"{host}: the transfer was interrupted ({tool} exit {code}); run the deploy again: it "
                           "resumes, and nothing half-sent is used (files are renamed into place when complete)")
    if code == 255 or "connection" in stderr.lower() or "permission denied" in stderr.lower():
        return ssh_failure(host, stderr)
    if tool == "rsync" and code in (12, 127) and "command not found" in stderr.lower():
        return DeviceError(f"{host}: rsync is not installed on the device; install it there or use --copy ssh")
    return DeviceError(f"{host}: {tool} failed (exit {code}): {_last_line(stderr)}")


def default_ssh_config(option: Optional[str]) -> Optional[str]:
    """``--ssh-config`` or ``$EDGEXFER_SSH_CONFIG`` (None: ssh's own ~/.ssh/config)."""
    return option or os.environ.get(SSH_CONFIG_ENV) or None
