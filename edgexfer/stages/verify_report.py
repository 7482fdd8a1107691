"""The documents verify writes: ``verify.json`` (schema in ``docs/verify-schema.md``), the Markdown
report and the plots rendered from it by :mod:`edgexfer.report`, recorded in the run's manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import numpy as np

VERIFY_SCHEMA_VERSION = 1
STATUSES = ("passed", "failed", "inconclusive", "error", "skipped")
# Statuses of an artifact that ran and was measured (its numbers are in verify.json and the manifest).
MEASURED = ("passed", "failed", "inconclusive")


def verify_document(
    config: Any,
    started: str,
    checkpoint: Any,
    meta: Any,
    source: str,
    total: int,
    inputs: Any,
    reference: Dict[str, Any],
    entries: List[Dict[str, Any]],
) -> Dict[str, Any]:
    """The verify.json document: data set, machine, versions, reference, one entry per artifact, the
    gates and their failures and errors, the verdict (:func:`verdict`) and the count of each status."""
    from edgexfer import __version__
    from edgexfer.config import to_dict
    from edgexfer.hardware import machine_record
    from edgexfer.manifest import tool_versions

    failures = [
        {"artifact": e["name"], "reason": r}
        for e in entries
        if e["status"] == "failed"
        for r in e["gate"]["reasons"]
    ]
    errors = [{"artifact": e["name"], "reason": e["error"]} for e in entries if e["status"] == "error"]
    counts = {s: sum(e["status"] == s for e in entries) for s in STATUSES}
    status, reason = verdict(failures, errors, counts, len(entries), reference)
    return {
        "schema_version": VERIFY_SCHEMA_VERSION,
        "kind": "edgexfer-verify",
        "created": started,
        "edgexfer_version": __version__,
        "run_dir": str(config.run_dir),
        "checkpoint": {"path": checkpoint.path, "sha256": checkpoint.sha256, "arch": meta.arch},
        "dataset": {
            "source": source,
            "num_images": int(len(inputs)),
            "total_images": int(total),
            "class_names": list(meta.class_names),
            "class_counts": np.bincount(inputs.labels, minlength=len(meta.class_names)).tolist(),
            "preprocess": meta.preprocess.to_dict(),
        },
        "config": to_dict(config),
        "machine": machine_record(),
        "versions": tool_versions(),
        "reference": reference,
        "artifacts": entries,
        "gate": {
            **config.gates().to_dict(),
            "passed": status == "passed",
            "failures": failures,
            "errors": errors,
        },
        "verdict": {"status": status, "reason": reason},
        "summary": counts,
    }


def verdict(failures: List[Dict[str, Any]], errors: List[Dict[str, Any]], counts: Dict[str, int], total: int,
            reference: Dict[str, Any]) -> "tuple[str, Any]":
    """The run's status and its reason, the first that applies: ``error`` (an artifact could not be
    verified, exit 2), ``failed`` (a gate, exit 3), ``skipped`` (nothing could run here, exit 4),
    ``inconclusive`` (the reference is not better than chance, exit 5), ``passed``."""
    if errors:
        return "error", f"artifact '{errors[0]['artifact']}' could not be verified: {errors[0]['reason']}"
    if failures:
        return "failed", f"'{failures[0]['artifact']}': {failures[0]['reason']}"
    if counts["skipped"] == total:
        return "skipped", "no artifact could run on this machine"
    chance = reference.get("chance") or {}
    if chance.get("above_chance") is False:
        return "inconclusive", chance["reason"]
    return "passed", None


def write_outputs(config: Any, data: Dict[str, Any], verified: List[str]) -> Dict[str, Any]:
    """Write verify.json, report.md and the plots atomically into ``config.output_dir``; record them in
    the run's manifest when that folder is inside the run. Returns their paths (json, report, plots)."""
    from edgexfer import report
    from edgexfer.fsutil import atomic_write_json, atomic_write_text
    from edgexfer.manifest import Manifest

    out = config.output_dir
    out.mkdir(parents=True, exist_ok=True)
    plots = report.verify_plots(data, out) if config.plots else []
    data["plots"] = [p.name for p in plots]
    json_path, report_path = out / "verify.json", out / "report.md"
    atomic_write_json(json_path, data)
    atomic_write_text(report_path, report.verify_markdown(data))
    if _is_inside(out, config.run_dir):
        with Manifest.update(config.run_dir) as manifest:
            # The float model compared with: the checkpoint, or the float ONNX model where torch is missing.
            inputs = [data["reference"].get("artifact", "checkpoint")] + verified
            manifest.add_artifact(
                "verify_json",
                json_path,
                kind="report",
                stage="verify",
                inputs=inputs,
                extra={"schema_version": VERIFY_SCHEMA_VERSION},
            )
            manifest.add_artifact("verify_report", report_path, kind="report", stage="verify", inputs=inputs)
            for plot in plots:
                manifest.add_artifact(f"verify_{plot.stem}", plot, kind="plot", stage="verify", inputs=inputs)
    return {"json_path": json_path, "report_path": report_path, "plots": plots}


def artifact_metrics(entry: Dict[str, Any]) -> Dict[str, Any]:
    """The few numbers of a verified artifact worth keeping in the manifest next to it."""
    metrics = {
        "verify_top1": entry["accuracy"]["top1"],
        "verify_top1_drop": entry["accuracy"]["top1_drop"],
        "verify_agreement_pct": entry["agreement"]["agreement_pct"],
        "verify_status": entry["status"],
    }
    if entry.get("latency"):
        metrics["verify_latency_p50_ms"] = entry["latency"]["p50_ms"]
    return metrics


def _is_inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True
