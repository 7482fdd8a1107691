"""The run directory's ``manifest.json``: the contract between stages.

Every artifact a stage writes is recorded with its path (relative to the run directory), kind,
sha256 (and those of the files it is made of besides: OpenVINO's weights, a sidecar), the stage and
config that made it, the hashes of the artifacts it was made from (``inputs``), the tool versions,
and metrics measured on it. A later stage calls :meth:`Manifest.require` to get an input: that
checks the file exists, that its hash still matches, and that every input it was made from is itself
unchanged -- so a changed checkpoint makes the ONNX model stale, a changed ONNX model its INT8
artifacts, and so on.

Writes are atomic and serialised by a lock file, so two stages (or two DDP ranks by mistake) never
interleave a half-written manifest.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from edgexfer import __version__
from edgexfer.errors import ArtifactError, StaleArtifactError
from edgexfer.fsutil import atomic_write_json, sha256_file
from edgexfer.provenance import now_iso, tool_versions

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"


@dataclass
class Artifact:
    """One file a stage wrote, as recorded in the manifest."""

    name: str
    path: str
    kind: str
    sha256: str
    size_bytes: int
    stage: str
    created: str
    inputs: Dict[str, str] = field(default_factory=dict)
    config: Dict[str, Any] = field(default_factory=dict)
    metrics: Dict[str, Any] = field(default_factory=dict)
    extra: Dict[str, Any] = field(default_factory=dict)
    # Files that belong to the artifact besides ``path`` (OpenVINO's .bin, a sidecar): path -> sha256.
    companions: Dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any]) -> "Artifact":
        """Build from the manifest's JSON record (unknown keys are kept in ``extra``)."""
        known = {k: data[k] for k in ("path", "kind", "sha256", "size_bytes", "stage", "created") if k in data}
        missing = {"path", "kind", "sha256"} - set(known)
        if missing:
            raise ArtifactError(f"manifest record for artifact '{name}' lacks {sorted(missing)}")
        known.setdefault("size_bytes", 0)
        known.setdefault("stage", "unknown")
        known.setdefault("created", "")
        return cls(
            name=name,
            inputs=dict(data.get("inputs", {})),
            config=dict(data.get("config", {})),
            metrics=dict(data.get("metrics", {})),
            extra=dict(data.get("extra", {})),
            companions=dict(data.get("companions", {})),
            **known,
        )

    def to_dict(self) -> Dict[str, Any]:
        """The JSON record (without the name, which is the key; no ``companions`` key when it has none)."""
        record = asdict(self)
        record.pop("name")
        if not record["companions"]:
            record.pop("companions")
        return record


class Manifest:
    """In-memory view of a run directory's manifest. Use :meth:`open` / :meth:`update`."""

    def __init__(self, run_dir: Path, data: Dict[str, Any]):
        self.run_dir = Path(run_dir)
        self.data = data
        # sha256 by path, keyed on (inode, size, mtime, ctime): require() walks each artifact's whole input chain,
        # so without this a verify or audit would hash the same checkpoint once per artifact.
        self._hashes: Dict[Path, Tuple[Tuple[int, ...], str]] = {}

    def _sha256(self, path: Path) -> str:
        stat = path.stat()
        key = (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
        cached = self._hashes.get(path)
        if cached is None or cached[0] != key:
            cached = (key, sha256_file(path))
            self._hashes[path] = cached
        return cached[1]

    # ---- loading -------------------------------------------------------------------------------
    @classmethod
    def open(cls, run_dir: "os.PathLike[str] | str", create: bool = False) -> "Manifest":
        """Load ``run_dir/manifest.json``; with ``create`` start an empty one if there is none."""
        run_dir = Path(run_dir)
        path = run_dir / MANIFEST_NAME
        if not path.exists():
            if not create:
                if not run_dir.exists():
                    raise ArtifactError(f"run directory '{run_dir}' does not exist; "
                                        "create one with 'edgexfer finetune --out DIR'")
                raise ArtifactError(f"'{run_dir}' is not an edgexfer run directory (no {MANIFEST_NAME}); "
                                    "create one with 'edgexfer finetune --out DIR'")
            return cls(run_dir, cls._empty())
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"cannot read {path}: {exc}") from exc
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ArtifactError(f"{path} has schema_version {version!r}; this edgexfer reads "
                                f"{SCHEMA_VERSION}; re-run the stages with this version")
        data.setdefault("artifacts", {})
        data.setdefault("stages", {})
        return cls(run_dir, data)

    @staticmethod
    def _empty() -> Dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "created": now_iso(), "edgexfer_version": __version__,
                "artifacts": {}, "stages": {}}

    @classmethod
    @contextlib.contextmanager
    def update(cls, run_dir: "os.PathLike[str] | str", create: bool = False) -> Iterator["Manifest"]:
        """Lock, load the newest manifest, let the caller change it, save atomically, unlock.

        Nothing is saved when the body raises, so the manifest on disk stays the last consistent one.
        """
        run_dir = Path(run_dir)
        if create:
            run_dir.mkdir(parents=True, exist_ok=True)
        with _locked(run_dir / (MANIFEST_NAME + ".lock")):
            manifest = cls.open(run_dir, create=create)
            yield manifest
            manifest.save()

    def save(self) -> None:
        """Write atomically (callers outside :meth:`update` should hold no other writer)."""
        self.data["updated"] = now_iso()
        atomic_write_json(self.run_dir / MANIFEST_NAME, self.data)

    # ---- artifacts -----------------------------------------------------------------------------
    @property
    def artifacts(self) -> Dict[str, Artifact]:
        """All recorded artifacts by name."""
        return {name: Artifact.from_dict(name, rec) for name, rec in self.data["artifacts"].items()}

    def has(self, name: str) -> bool:
        """Whether an artifact of this name is recorded (it may still be missing or stale)."""
        return name in self.data["artifacts"]

    def get(self, name: str) -> Artifact:
        """The record of artifact ``name`` without checking the file."""
        if name not in self.data["artifacts"]:
            have = ", ".join(sorted(self.data["artifacts"])) or "none"
            raise ArtifactError(f"run directory '{self.run_dir}' has no artifact '{name}' "
                                f"(it has: {have})")
        return Artifact.from_dict(name, self.data["artifacts"][name])

    def path_of(self, name: str) -> Path:
        """Absolute path of a recorded artifact."""
        return self.run_dir / self.get(name).path

    def add_artifact(self, name: str, path: "os.PathLike[str] | str", kind: str, stage: str,
                     inputs: Optional[List[str]] = None, config: Optional[Mapping[str, Any]] = None,
                     metrics: Optional[Mapping[str, Any]] = None,
                     extra: Optional[Mapping[str, Any]] = None,
                     companions: Sequence["os.PathLike[str] | str"] = ()) -> Artifact:
        """Record (or replace) an artifact already written in the run directory.

        ``inputs`` names artifacts it was made from; their current hashes are stored so that a later
        change to any of them makes this one stale. ``companions`` are further files the artifact is
        made of (OpenVINO's weights, a sidecar): hashed too, so a change to any of them is noticed.
        """
        absolute = self._checked_file(name, path)
        files = {}
        for companion in companions:
            located = self._checked_file(name, companion)
            files[self._relative(located)] = self._sha256(located)
        artifact = Artifact(
            name=name, path=self._relative(absolute), kind=kind, sha256=self._sha256(absolute),
            size_bytes=absolute.stat().st_size, stage=stage, created=now_iso(),
            inputs={dep: self.get(dep).sha256 for dep in (inputs or [])},
            config=dict(config or {}), metrics=dict(metrics or {}), extra=dict(extra or {}),
            companions=files,
        )
        self.data["artifacts"][name] = artifact.to_dict()
        return artifact

    def _checked_file(self, name: str, path: "os.PathLike[str] | str") -> Path:
        absolute = self._locate(Path(path))
        if not absolute.is_file():
            raise ArtifactError(f"cannot record artifact '{name}': {absolute} is not a file")
        return absolute

    def _relative(self, absolute: Path) -> str:
        """The path as recorded: relative to the run directory when inside it."""
        try:
            return absolute.resolve().relative_to(self.run_dir.resolve()).as_posix()
        except ValueError:
            return absolute.resolve().as_posix()

    def _locate(self, path: Path) -> Path:
        """An artifact path given absolute, relative to the working directory (``runs/x/model.onnx``),
        or relative to the run directory (``export/model.onnx``)."""
        if path.is_absolute():
            return path
        run_root = self.run_dir.resolve()
        if path.is_file() and (run_root == path.resolve() or run_root in path.resolve().parents):
            return path
        return self.run_dir / path

    def remove_artifact(self, name: str) -> None:
        """Forget an artifact record (the file is left alone): a rebuild drops the old record before
        it moves new files under the recorded names, so no record ever describes a file that changed."""
        self.data["artifacts"].pop(name, None)

    def add_metrics(self, name: str, metrics: Mapping[str, Any]) -> None:
        """Merge measured metrics into an artifact's record."""
        self.get(name)
        self.data["artifacts"][name].setdefault("metrics", {}).update(metrics)

    def require(self, name: str, check_inputs: bool = True) -> Artifact:
        """Return an artifact only if its file exists, its hash matches and its inputs are unchanged.

        Raises :class:`ArtifactError` when missing and :class:`StaleArtifactError` when stale, each with
        the command that would fix it.
        """
        artifact = self.get(name)
        path = self.run_dir / artifact.path
        if not path.is_file():
            raise ArtifactError(f"artifact '{name}' is recorded in {self.run_dir / MANIFEST_NAME} but "
                                f"{path} is missing; re-run the '{artifact.stage}' stage")
        self._check_file(artifact, path, artifact.sha256)
        for companion, recorded in artifact.companions.items():
            companion_path = self.run_dir / companion
            if not companion_path.is_file():
                raise ArtifactError(f"artifact '{name}' is recorded with {companion_path}, which is missing; "
                                    f"re-run the '{artifact.stage}' stage")
            self._check_file(artifact, companion_path, recorded)
        if check_inputs:
            for dep, recorded in artifact.inputs.items():
                if not self.has(dep):
                    raise StaleArtifactError(f"artifact '{name}' was made from '{dep}', which is no longer "
                                             f"in the manifest; re-run the '{artifact.stage}' stage")
                current = self.get(dep).sha256
                if current != recorded:
                    raise StaleArtifactError(f"artifact '{name}' was made from an older '{dep}' "
                                             f"({recorded[:12]}, now {current[:12]}); re-run the "
                                             f"'{artifact.stage}' stage")
                self.require(dep, check_inputs=True)
        return artifact

    def _check_file(self, artifact: Artifact, path: Path, recorded: str) -> None:
        actual = self._sha256(path)
        if actual != recorded:
            raise StaleArtifactError(f"artifact '{artifact.name}' ({path}) changed since the '{artifact.stage}' "
                                     f"stage recorded it (sha256 {actual[:12]} != {recorded[:12]}); "
                                     f"re-run the '{artifact.stage}' stage")

    def is_fresh(self, name: str) -> bool:
        """True when :meth:`require` would succeed."""
        try:
            self.require(name)
        except ArtifactError:
            return False
        return True

    def audit(self) -> List[str]:
        """Problems that make this run directory inconsistent (empty when every record holds):
        for every recorded artifact, the file must exist, its hash match and its inputs be unchanged."""
        problems = []
        for name in sorted(self.data["artifacts"]):
            try:
                self.require(name)
            except ArtifactError as exc:
                problems.append(str(exc))
        return problems

    # ---- stages --------------------------------------------------------------------------------
    def record_stage(self, stage: str, config: Mapping[str, Any], metrics: Optional[Mapping[str, Any]] = None,
                     status: str = "done", started: Optional[str] = None, **extra: Any) -> None:
        """Record a stage's config, status, tool versions, metrics and timing."""
        record = {"config": dict(config), "status": status, "versions": tool_versions(),
                  "metrics": dict(metrics or {}), "started": started, "finished": now_iso()}
        record.update(extra)
        self.data["stages"][stage] = record

    def stage(self, stage: str) -> Dict[str, Any]:
        """The record of a stage, or an empty dict when it never ran."""
        return dict(self.data["stages"].get(stage, {}))


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """An exclusive advisory lock (fcntl on POSIX; a no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
