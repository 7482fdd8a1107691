"""A real OpenSSH server for the deploy tests: ``/usr/sbin/sshd`` on 127.0.0.1, a free port, a host key
and a user key made for the test, everything in one temporary folder.

The client side is an ssh config file (``ssh -F``, given to edgexfer as ``--ssh-config`` or
``$EDGEXFER_SSH_CONFIG``) whose ``UserKnownHostsFile`` holds exactly the test server's host key:
host-key checking stays on, as it must (no ``StrictHostKeyChecking=no`` anywhere). As root (CI) the
test server allows root login by key only; password and keyboard-interactive logins are off.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

SSHD = "/usr/sbin/sshd"


def available() -> Optional[str]:
    """None when sshd, ssh, ssh-keygen and rsync are here, else why not (a skip reason)."""
    missing = [tool for tool in ("ssh", "ssh-keygen", "rsync") if shutil.which(tool) is None]
    if not Path(SSHD).is_file():
        missing.append(SSHD)
    if missing:
        return f"needs {', '.join(missing)} (apt-get install openssh-server openssh-client rsync)"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


@dataclass
class SshServer:
    """A running test sshd and the client-side files that reach it as ``Host <alias>``."""

    root: Path
    port: int
    process: subprocess.Popen
    user: str
    user_key: Path
    host_pub: str

    def client_config(self, name: str, alias: str = "device", port: Optional[int] = None,
                      key: Optional[Path] = None, known_hosts: Optional[Path] = None) -> Path:
        """An ssh config file (ssh -F) with one Host entry for this server; ``port``, ``key`` and
        ``known_hosts`` can be changed to make the failures the tests want."""
        if known_hosts is None:
            known_hosts = self.root / "known_hosts"
            known_hosts.write_text(f"[127.0.0.1]:{self.port} {self.host_pub}\n", encoding="utf-8")
        path = self.root / name
        path.write_text(
            f"Host {alias}\n"
            f"  HostName 127.0.0.1\n"
            f"  Port {port or self.port}\n"
            f"  User {self.user}\n"
            f"  IdentityFile {key or self.user_key}\n"
            f"  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {known_hosts}\n"
            f"  GlobalKnownHostsFile /dev/null\n",
            encoding="utf-8",
        )
        return path

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start(root: Path) -> SshServer:
    """Start sshd in the foreground (-D) on a free port; wait until it accepts connections."""
    root.mkdir(parents=True, exist_ok=True)
    host_key = keygen(root / "host_ed25519")
    user_key = keygen(root / "user_ed25519")
    (root / "authorized_keys").write_text((root / "user_ed25519.pub").read_text(), encoding="utf-8")
    os.chmod(root / "authorized_keys", 0o600)
    port = free_port()
    user = getpass.getuser()
    config = root / "sshd_config"
    config.write_text(
        f"Port {port}\n"
        "ListenAddress 127.0.0.1\n"
        f"HostKey {host_key}\n"
        f"PidFile {root / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\n"
        f"AllowUsers {user}\n"
        "PermitRootLogin prohibit-password\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        "StrictModes no\n"
        "MaxStartups 50\n"
        "MaxSessions 50\n",
        encoding="utf-8",
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation folder
    log = open(root / "sshd.log", "w")
    process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
    host_pub = " ".join((root / "host_ed25519.pub").read_text().split()[:2])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited: {(root / 'sshd.log').read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.1)
    return SshServer(root, port, process, user, user_key, host_pub)
