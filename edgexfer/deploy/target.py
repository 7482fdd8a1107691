"""``--to [user@]host[:dir]``: one device, checked before anything is sent."""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgexfer.errors import ConfigError

DEFAULT_REMOTE_DIR = "edgexfer-deploy"
# What ssh takes as a destination: a host alias, a name, an IPv4 address or a bracketed IPv6 one,
# optionally with a user. Nothing that starts with '-' (it would be read as an ssh option).
_USER = r"[A-Za-z0-9._][A-Za-z0-9._-]*"
_HOST = r"(?:[A-Za-z0-9_][A-Za-z0-9._-]*|\[[0-9A-Fa-f:.]+\])"
_DESTINATION = re.compile(rf"^(?:(?P<user>{_USER})@)?(?P<host>{_HOST})$")


@dataclass(frozen=True)
class DeviceTarget:
    """One device: the ssh destination (``user@host`` or an alias of the user's ssh config) and the
    folder on it that edgexfer owns (relative paths are relative to the remote home)."""

    destination: str
    host: str
    remote_dir: str

    @property
    def slug(self) -> str:
        """The device's folder name under ``RUN/devices/`` (the host, made safe for a file name)."""
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.host).strip("._") or "device"


def parse_target(text: str) -> DeviceTarget:
    """``[user@]host[:dir]`` -> :class:`DeviceTarget`; a ConfigError names what is wrong with it."""
    value = str(text).strip()
    if value.startswith("[") and "]" in value:  # [v6]:dir
        end = value.index("]") + 1
        destination, _, remote_dir = value[:end], value[end:end + 1], value[end + 1:]
    else:
        destination, _, remote_dir = value.partition(":")
    match = _DESTINATION.match(destination)
    if not match:
        raise ConfigError(
            f"--to {text!r} is not [user@]host[:dir]; the host is an ssh alias, name or address "
            "(letters, digits, '.', '-', '_', not starting with '-')"
        )
    if any(ord(char) < 32 for char in remote_dir):
        raise ConfigError(f"--to {text!r}: the remote folder contains control characters")
    remote_dir = remote_dir.strip() or DEFAULT_REMOTE_DIR
    if remote_dir.startswith("~/"):  # not expanded by anyone: relative paths are relative to the home
        remote_dir = remote_dir[2:] or DEFAULT_REMOTE_DIR
    if remote_dir.rstrip("/") in ("", "~", "/"):
        raise ConfigError(f"--to {text!r}: name a folder edgexfer may own on the device, not '{remote_dir}'")
    return DeviceTarget(destination=destination, host=match.group("host"), remote_dir=remote_dir.rstrip("/"))
