"""The options of ``edgexfer deploy`` as one checked, frozen config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from edgexfer.errors import ConfigError

COPY_MODES = ("auto", "rsync", "ssh")
# The backend a device gets when --backend is not given: the best it has (doctor says which are usable).
BACKEND_PREFERENCE = ("tensorrt", "openvino", "onnxruntime")


@dataclass(frozen=True)
class DeployConfig:
    """One deploy of ``run_dir`` to every device in ``targets`` (``[user@]host[:dir]`` each)."""

    run_dir: Path
    targets: Tuple[str, ...]
    backend: Optional[str] = None
    precisions: Tuple[str, ...] = ("fp32", "int8")
    remote_python: str = "python3"
    setup: bool = False
    wheelhouse: Optional[Path] = None
    ssh_config: Optional[str] = None
    data: Optional[Path] = None
    device_data: Optional[str] = None
    limit: int = 200
    max_drop: Optional[float] = None
    min_agreement: Optional[float] = None
    bench: bool = True
    bench_min_time: float = 0.5
    keep: bool = False
    purge: bool = False
    copy: str = "auto"
    timeout_s: float = 3600.0
    progress: bool = True

    def __post_init__(self) -> None:
        from edgexfer.backends.base import BACKENDS, PRECISIONS, REFERENCE_BACKEND
        from edgexfer.deploy.target import parse_target

        object.__setattr__(self, "run_dir", Path(self.run_dir))
        if self.data is not None:
            object.__setattr__(self, "data", Path(self.data))
        if self.wheelhouse is not None:
            object.__setattr__(self, "wheelhouse", Path(self.wheelhouse))
            if not self.setup:
                raise ConfigError("--wheelhouse is what --setup installs from; add --setup (or drop --wheelhouse)")
            if not self.wheelhouse.is_dir() or not any(self.wheelhouse.glob("*.whl")):
                raise ConfigError(f"--wheelhouse '{self.wheelhouse}' is not a folder of .whl files; fill one with "
                                  "'pip download --only-binary=:all: --platform ... -d DIR edgexfer'")
        if not self.targets:
            raise ConfigError("deploy needs at least one --to [user@]host[:dir]")
        parsed = [parse_target(t) for t in self.targets]
        slugs = [p.slug for p in parsed]
        if len(set(slugs)) != len(slugs):
            raise ConfigError(f"--to names the same device twice ({', '.join(self.targets)}); give each once")
        if self.backend is not None and (self.backend not in BACKENDS or self.backend == REFERENCE_BACKEND):
            choices = ", ".join(b for b in BACKENDS if b != REFERENCE_BACKEND)
            raise ConfigError(f"unknown backend '{self.backend}' for --backend; choose from {choices}")
        for precision in self.precisions:
            if precision not in PRECISIONS:
                choices = ", ".join(PRECISIONS)
                raise ConfigError(f"unknown precision '{precision}' in --precision; choose from {choices}")
        if not self.precisions:
            raise ConfigError("--precision needs at least one of fp32, fp16, int8")
        if self.copy not in COPY_MODES:
            raise ConfigError(f"unknown --copy '{self.copy}'; choose from {', '.join(COPY_MODES)}")
        if self.limit < 1:
            raise ConfigError(f"deploy --limit must be >= 1 image, got {self.limit}")
        if self.data is not None and self.device_data is not None:
            raise ConfigError("give --data (sent from here) or --device-data (already on the device), not both")
        if self.max_drop is not None and not 0.0 <= self.max_drop <= 100.0:
            raise ConfigError(f"--max-drop is in top-1 percentage points (0-100), got {self.max_drop}")
        if self.min_agreement is not None and not 0.0 <= self.min_agreement <= 100.0:
            raise ConfigError(f"--min-agreement is a percentage (0-100), got {self.min_agreement}")
        if self.bench_min_time <= 0:
            raise ConfigError(f"--bench-min-time must be > 0 seconds, got {self.bench_min_time}")
        if not str(self.remote_python).strip():
            raise ConfigError("--remote-python needs a path or command, e.g. python3 or ~/venv/bin/python")
        if self.ssh_config is not None and not Path(self.ssh_config).is_file():
            raise ConfigError(f"--ssh-config '{self.ssh_config}' is not a file; give an ssh config (as for ssh -F)")
        if self.keep and self.purge:
            raise ConfigError("--keep and --purge contradict each other; choose one")

    def parsed_targets(self):
        """The devices as :class:`~edgexfer.deploy.target.DeviceTarget`, in the order given. Without a
        ``:DIR`` each run gets its own folder, ``~/edgexfer-deploy/<run name>``, so two runs deployed
        to one device do not overwrite each other's bundle."""
        import dataclasses
        import re

        from edgexfer.deploy.target import DEFAULT_REMOTE_DIR, parse_target

        run_name = re.sub(r"[^A-Za-z0-9._-]+", "_", self.run_dir.resolve().name).strip("._") or "run"
        targets = []
        for text in self.targets:
            target = parse_target(text)
            if target.remote_dir == DEFAULT_REMOTE_DIR:
                target = dataclasses.replace(target, remote_dir=f"{DEFAULT_REMOTE_DIR}/{run_name}")
            targets.append(target)
        return targets
