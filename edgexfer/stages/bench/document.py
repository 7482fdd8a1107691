"""The bench's results: the JSON document (with one-line facts per model), Markdown table and chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from edgexfer.stages.bench.config import BENCH_SCHEMA_VERSION, BenchConfig, BenchResult
from edgexfer.stages.bench.inputs import E2E_IMAGE_SIZE


def headlines(rows: List[Dict[str, Any]]) -> List[str]:
    """Per model at batch 1, facts only: the fastest INT8 artifact against the float reference, and its
    end-to-end time against the model alone (what a user compares; no pass/fail verdicts)."""
    from edgexfer.backends.base import REFERENCE_BACKEND

    lines = []
    models = sorted({r["model"] for r in rows}, key=[r["model"] for r in rows].index)
    for model in models:
        ok = [r for r in rows if r["model"] == model and r.get("status") == "ok" and r["batch"] == 1]
        references = [r for r in ok if r["backend"] == REFERENCE_BACKEND]
        int8 = sorted((r for r in ok if r["precision"] == "int8"), key=lambda r: r["latency"]["p50_ms"])
        if references and int8:
            best, ref = int8[0], references[0]
            lines.append(
                f"{model} batch 1: fastest INT8 is {best['backend']} at {best['latency']['p50_ms']:.2f} ms "
                f"vs {REFERENCE_BACKEND} eager fp32 {ref['latency']['p50_ms']:.2f} ms: "
                f"{ref['latency']['p50_ms'] / best['latency']['p50_ms']:.2f}x faster"
            )
            if best.get("e2e"):
                lines.append(
                    f"{model} batch 1 {best['backend']} int8 ({best['input']} input): end to end "
                    f"{best['e2e']['p50_ms']:.2f} ms vs model alone {best['latency']['p50_ms']:.2f} ms: "
                    f"{best['e2e_ratio']:.2f}x"
                )
    return lines


def bench_document(config: BenchConfig, machine: Dict[str, Any], name: str, rows: List[Dict[str, Any]],
                   skipped: List[Dict[str, Any]], facts: Dict[str, Any]) -> Dict[str, Any]:
    """The JSON document (docs/verify-schema.md, bench section); ``facts`` has created, threads,
    e2e_images (count) and elapsed_s."""
    from edgexfer import __version__
    from edgexfer.config import to_dict
    from edgexfer.hardware import busy_warning

    weights = (
        "random initialisation (latency does not depend on weight values; accuracy is meaningless)"
        if config.run_dir is None
        else f"trained weights of run {config.run_dir}"
    )
    return {
        "schema_version": BENCH_SCHEMA_VERSION,
        "kind": "edgexfer-bench",
        "created": facts["created"],
        "edgexfer_version": __version__,
        "machine_name": name,
        "machine": machine,
        "threads": facts["threads"],
        "versions": machine["versions"],
        "config": to_dict(config),
        "weights_note": weights,
        "e2e_images": {"count": facts["e2e_images"], "size": list(E2E_IMAGE_SIZE), "format": "JPEG q90"},
        "results": rows,
        "skipped": skipped,
        "headlines": headlines(rows) + busy_warning(machine),
        "elapsed_s": facts["elapsed_s"],
    }


def write_bench_outputs(config: BenchConfig, data: Dict[str, Any], name: str) -> BenchResult:
    """JSON, Markdown and PNG into the output folder (a run's ``bench/`` folder, recorded, for --run)."""
    from edgexfer import report
    from edgexfer.fsutil import atomic_write_json, atomic_write_text

    out = config.out_dir if config.run_dir is None else config.run_dir / "bench"
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{name}.json", out / f"{name}.md"
    plot_path: Optional[Path] = report.bench_plot(data, out / f"{name}.png")
    data["plot"] = plot_path.name if plot_path else None
    atomic_write_json(json_path, data)
    atomic_write_text(md_path, report.bench_markdown(data))
    if config.run_dir is not None:
        from edgexfer.manifest import Manifest

        with Manifest.update(config.run_dir) as manifest:
            # A run on a device may carry the float ONNX model without the checkpoint it came from.
            inputs = ["checkpoint" if manifest.has("checkpoint") else "onnx"]
            for artifact, path in (("bench_json", json_path), ("bench_report", md_path)):
                manifest.add_artifact(artifact, path, kind="report", stage="bench", inputs=inputs)
            manifest.record_stage("bench", data["config"], metrics={"rows": len(data["results"])})
    return BenchResult(json_path=json_path, markdown_path=md_path, plot_path=plot_path, data=data)
