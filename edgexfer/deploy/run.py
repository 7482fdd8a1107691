"""``run_deploy``: every device of a deploy, in parallel; bad input is refused before any device is
contacted."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Optional

from edgexfer.deploy.collect import verdict_status
from edgexfer.deploy.config import DeployConfig
from edgexfer.deploy.remote import BundleCache, DeviceResult, deploy_device
from edgexfer.errors import EdgexferError, InconclusiveError, ParityError


def run_deploy(config: DeployConfig, say: Callable[[str], None] = lambda line: None) -> List[DeviceResult]:
    """Deploy to each device (one thread per device: the work is on the devices and the wire).

    A device that fails keeps its error in its result and the others go on; the caller turns the
    results into the exit code. Raises before contacting anyone for a run that cannot be deployed.
    """
    from edgexfer.manifest import Manifest

    manifest = Manifest.open(config.run_dir)
    manifest.require("onnx")  # a missing or stale export is the user's to fix, not a device problem
    bundles = BundleCache(config)
    targets = config.parsed_targets()
    if len(targets) == 1:
        return [deploy_device(config, targets[0], bundles, say)]
    quiet = DeployConfig(**{**config.__dict__, "progress": False})  # interleaved progress bars help no one
    with ThreadPoolExecutor(max_workers=len(targets)) as pool:
        return list(pool.map(lambda target: deploy_device(quiet, target, bundles, say), targets))


def deploy_outcome(results: List[DeviceResult]) -> Optional[EdgexferError]:
    """The error a deploy ends with: the first device that could not be used (its own error and exit
    code), else a parity gate that failed on a device (exit 3), else an INCONCLUSIVE verdict on a device
    (exit 5: its float reference is at chance on the device's data), else None."""
    for result in results:
        if result.error is not None:
            return result.error
    failed = [r for r in results if r.verify is not None and verdict_status(r.verify) == "failed"]
    if failed:
        reasons = "; ".join(f"{r.target.host}: {f['artifact']}: {f['reason']}" for r in failed
                            for f in r.verify["gate"]["failures"][:1])
        return ParityError(f"parity gate failed on {len(failed)} device(s): {reasons}")
    unsure = [r for r in results if r.verify is not None and verdict_status(r.verify) == "inconclusive"]
    if unsure:
        reasons = "; ".join(f"{r.target.host}: {r.verify['verdict'].get('reason')}" for r in unsure)
        return InconclusiveError(f"verdict INCONCLUSIVE on {len(unsure)} device(s): {reasons}")
    return None


def run_deploy_checked(config: DeployConfig) -> List[DeviceResult]:
    """:func:`run_deploy`, then raise :func:`deploy_outcome` (the pipeline's ``deploy:`` step)."""
    results = run_deploy(config)
    error = deploy_outcome(results)
    if error is not None:
        raise error
    return results
