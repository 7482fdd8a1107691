"""The one error hierarchy. The CLI turns each into a single line and a non-zero exit code.

Exit codes (documented in the README):
    0  success
    1  internal error (a bug: rerun with --debug and report the traceback)
    2  bad input: a path, option, image, config or artifact that is not what it must be
    3  a parity/accuracy gate failed (verify --max-drop, export --max-drop)
    4  a backend or runtime is not available on this machine
    5  a verdict that cannot be given: verify's float reference is not better than chance on the data
    130 interrupted (Ctrl-C); the last good artifacts are intact
"""

from __future__ import annotations


class EdgexferError(Exception):
    """Base class: a problem the user can fix. ``str(err)`` is the one line the CLI prints.

    Say what was wrong and what would be right, e.g.
    ``"data folder 'x' has no class sub-folders; expected x/<class>/<image>.png"``.
    """

    exit_code = 2


class ConfigError(EdgexferError):
    """An option, config key or value that is not valid (unknown name, wrong type, out of range)."""


class DataError(EdgexferError):
    """A dataset, image or calibration folder that cannot be used."""


class ModelError(EdgexferError):
    """An unknown architecture, or weights/checkpoint that do not fit the model."""


class ArtifactError(EdgexferError):
    """A run directory or artifact that is missing or unreadable."""


class StaleArtifactError(ArtifactError):
    """An artifact whose hash no longer matches the manifest, or that was built for other hardware."""


class DeviceError(EdgexferError):
    """A remote device that cannot be used for a deploy: unreachable, key refused, host key unknown,
    no Python or no edgexfer there, a full disk, or a command there that failed."""


class BackendUnavailableError(EdgexferError):
    """A backend (TensorRT, OpenVINO, an execution provider) that this machine cannot run."""

    exit_code = 4


class ParityError(EdgexferError):
    """An accuracy or parity gate failed; CI can gate on the distinct exit code."""

    exit_code = 3


class InconclusiveError(EdgexferError):
    """Nothing failed, but nothing was shown either: the float reference a parity check compares with is
    not better than chance on the evaluation data, so agreement with it proves nothing (verify's
    INCONCLUSIVE verdict). Its own exit code, so CI never reads it as a pass or as a gate failure."""

    exit_code = 5
