"""The short summary a pipeline ends with: transfer vs from scratch, float vs INT8, latency per backend.

Everything is read back from what the stages recorded (manifest, verify.json), never recomputed, so the
summary shows exactly the numbers the reports hold.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from edgexfer.manifest import Manifest
from edgexfer.reference import reference_label


def _fmt(value: Optional[float], spec: str = ".2f", suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def finetune_rows(runs: Mapping[str, Path]) -> List[Dict[str, Any]]:
    """Best validation top-1 of each run that fine-tuned, with its weights source and epochs."""
    rows = []
    for name, run_dir in runs.items():
        if not (run_dir / "manifest.json").exists():
            continue
        record = Manifest.open(run_dir).stage("finetune")
        metrics = record.get("metrics", {})
        if "best_val_top1" not in metrics:
            continue
        # finetune records top-1 as a fraction; the summary speaks in percent like verify does
        rows.append({"run": name, "model": metrics.get("model"), "weights": _weights_label(metrics.get("weights")),
                     "classes": len(metrics.get("class_names", [])), "epochs": metrics.get("epochs_run"),
                     "val_top1": 100.0 * float(metrics["best_val_top1"])})
    return rows


def _weights_label(weights: Optional[str]) -> str:
    """'edgexfer:/x/runs/source/finetune/best.pt#sha256=ab12' -> "run 'source' (ab12)"; others unchanged."""
    if not weights or not str(weights).startswith("edgexfer:"):
        return str(weights)
    path, _, digest = str(weights)[len("edgexfer:"):].partition("#sha256=")
    run_name = Path(path).parent.parent.name
    return f"run '{run_name}' ({digest[:8]})" if digest else f"run '{run_name}'"


def load_verify(run_dir: Path) -> Optional[Dict[str, Any]]:
    """The run's verify.json as recorded in its manifest, or None when verify did not run."""
    manifest = Manifest.open(run_dir)
    if not manifest.has("verify_json"):
        return None
    return json.loads(manifest.path_of("verify_json").read_text(encoding="utf-8"))


def verify_rows(report: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """One row per artifact of a verify report, the torch float reference first."""
    reference = report["reference"]
    ref_latency = (reference.get("latency") or {}).get("p50_ms")
    label = f"{reference_label(reference)} fp32 (reference)"
    rows = [{"artifact": label, "top1": reference["top1"], "drop": 0.0, "ci": None,
             "agreement": 100.0, "p50_ms": ref_latency, "speedup": 1.0 if ref_latency else None,
             "status": "reference"}]
    for art in report.get("artifacts", []):
        if art.get("status") in ("error", "skipped"):
            rows.append({"artifact": art["name"], "top1": None, "drop": None, "ci": None, "agreement": None,
                         "p50_ms": None, "speedup": None, "status": f"{art['status']}: {art.get('error')}"})
            continue
        latency = (art.get("latency") or {}).get("p50_ms")
        rows.append({"artifact": art["name"], "top1": art["accuracy"]["top1"],
                     "drop": art["accuracy"]["top1_drop"], "ci": art["accuracy"].get("top1_drop_ci"),
                     "agreement": art["agreement"]["agreement_pct"], "p50_ms": latency,
                     "speedup": (ref_latency / latency) if (latency and ref_latency) else None,
                     "status": art["status"]})
    return rows


def summary_markdown(runs: Mapping[str, Path], transfer: Optional[str] = None,
                     baseline: Optional[str] = None) -> str:
    """Markdown tables: fine-tuning results (transfer vs baseline) and each verified run's artifacts."""
    lines: List[str] = []
    tune = finetune_rows(runs)
    if tune:
        lines += ["| run | model | weights | classes | epochs | val top-1 % |", "|---|---|---|---|---|---|"]
        for row in tune:
            lines.append(f"| {row['run']} | {row['model']} | {row['weights']} | {row['classes']} | "
                         f"{row['epochs']} | {_fmt(row['val_top1'])} |")
        by_run = {row["run"]: row for row in tune}
        if transfer in by_run and baseline in by_run:
            gain = by_run[transfer]["val_top1"] - by_run[baseline]["val_top1"]
            lines += ["", f"Transfer ({transfer}) vs from scratch ({baseline}) with the same budget: "
                          f"{gain:+.2f} top-1 points."]
        lines.append("")
    for name, run_dir in runs.items():
        if not (run_dir / "manifest.json").exists():
            continue
        report = load_verify(run_dir)
        if report is None:
            continue
        dataset, config = report.get("dataset", {}), report.get("config", {})
        conf = f"{100 * config.get('confidence', 0.95):.0f}% CI"
        lines += [f"Run '{name}': {dataset.get('num_images')} images ({dataset.get('source')}), float reference "
                  f"vs each artifact (drop = reference minus artifact, {conf}; latency batch "
                  f"{config.get('latency_batch', 1)}, p50):", "",
                  f"| artifact | top-1 % | drop (pts) | {conf} | agreement % | p50 ms | speed-up | status |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in verify_rows(report):
            ci = f"[{row['ci'][0]:+.2f}, {row['ci'][1]:+.2f}]" if row["ci"] else ""
            lines.append(f"| {row['artifact']} | {_fmt(row['top1'])} | {_fmt(row['drop'], '+.2f')} | {ci} | "
                         f"{_fmt(row['agreement'])} | {_fmt(row['p50_ms'])} | {_fmt(row['speedup'], '.1f', 'x')} | "
                         f"{row['status']} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
