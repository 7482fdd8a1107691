"""The export report: the INT8 evidence per target as Markdown, JSON and a Pareto plot (PNG).

Reads only the plain dicts :func:`edgexfer.quant.evidence.collect` returns (as stored in
``export/evidence_<target>.json``), so a report can be rewritten from the JSON alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from edgexfer.fsutil import atomic_path


def _num(value: Optional[float], digits: int = 2, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def evidence_markdown(evidence: Dict[str, Any], pareto_png: Optional[str] = None) -> str:
    """One target's section: the candidates (Pareto points) and the per-layer sensitivity table."""
    table = evidence["table"]
    lines = [
        f"## INT8 evidence: target {evidence['target']}",
        "",
        f"Kept **{evidence['kept']}**: {evidence['reason']}. Accuracy scored on {evidence['runtime']}, "
        f"latency (p50, batch 1, interleaved rounds) on {evidence['latency_runtime']}.",
        "",
        "| model | top-1 drop (points) | agreement with float | p50 ms | |",
        "|---|---|---|---|---|",
    ]
    for point in evidence["pareto"]:
        mark = "kept" if point["kept"] else ("dominated" if point["dominated"] else "")
        lines.append(f"| {point['name']} | {_num(point['drop'])} | {_num(point['agreement'], 4)} | "
                     f"{_num(point['latency_ms'])} | {mark} |")
    if pareto_png:
        lines += ["", f"![Pareto: top-1 drop vs latency]({pareto_png})"]
    lines += [
        "",
        f"### Per-layer sensitivity of the kept model ({table['quantized_layers']} quantized layers)",
        "",
        f"SQNR: the layer's output vs float on {table['sqnr_images']} calibration images (activation and "
        f"weight noise added). Drop if float: top-1 drop vs float with this layer alone in float, on "
        f"{table['images']} held-out images (all INT8: drop {table['int8_drop']:.2f}, agreement "
        f"{table['int8_agreement']:.4f}); measured for the {table['top_k']} layers with the lowest SQNR only, "
        f"to bound export time (--evidence-layers). Latency: {table['latency_source']}; total "
        f"{table['latency_total_ms']:.2f} ms, of which {table['latency_other_ms']:.2f} ms outside the "
        "quantized layers (Q/DQ, activations, pooling).",
        "",
        "| layer | op | SQNR dB | drop if float | recovered | agreement if float | latency ms | share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in table["layers"]:
        share = None if row.get("latency_share") is None else 100.0 * row["latency_share"]
        lines.append(
            f"| `{row['layer']}` | {row['op']} | {_num(row['sqnr_db'], 1)} | {_num(row.get('drop_if_float'))} | "
            f"{_num(row.get('recovered'))} | {_num(row.get('agreement_if_float'), 4)} | "
            f"{_num(row['latency_ms'], 3)} | {_num(share, 1, '%')} |"
        )
    lines += ["", f"Evidence took {evidence['seconds']:.1f} s.", ""]
    return "\n".join(lines)


def pareto_figure(evidence: Dict[str, Any]) -> Optional[Any]:
    """Top-1 drop vs p50 latency of float and every candidate, the kept one marked; None without latencies."""
    from edgexfer.report import _pyplot

    points = [p for p in evidence["pareto"] if p["latency_ms"] is not None]
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for point in points:
        kept = point["kept"]
        ax.scatter(point["latency_ms"], point["drop"], s=120 if kept else 50,
                   marker="*" if kept else ("x" if point["name"] == "float" else "o"),
                   color="#c44e52" if kept else ("#777777" if point["dominated"] else "#4c72b0"), zorder=3)
        ax.annotate(point["name"] + (" (kept)" if kept else ""), (point["latency_ms"], point["drop"]),
                    textcoords="offset points", xytext=(6, 4), fontsize=8)
    front = sorted((p for p in points if not p["dominated"]), key=lambda p: p["latency_ms"])
    if len(front) > 1:
        ax.plot([p["latency_ms"] for p in front], [p["drop"] for p in front], color="#4c72b0", alpha=0.4,
                drawstyle="steps-post")
    ax.set_xlabel(f"p50 latency, ms (batch 1, {evidence['latency_runtime']})")
    ax.set_ylabel(f"top-1 drop vs float, points ({evidence['runtime']})")
    ax.axhline(0, color="k", linewidth=0.6)
    ax.set_title(f"INT8 candidates, target {evidence['target']}")
    ax.grid(alpha=0.3)
    return fig


def write_evidence(out_dir: Path, evidences: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, str]]:
    """Write ``evidence_<target>.json``, ``pareto_<target>.png`` and one ``report.md`` into ``out_dir``
    (atomically); returns per target the file names written."""
    from edgexfer.report import _save

    out_dir = Path(out_dir)
    files: Dict[str, Dict[str, str]] = {}
    sections: List[str] = ["# edgexfer export report", ""]
    for target, evidence in evidences.items():
        names = {"json": f"evidence_{target}.json", "report": "report.md"}
        with atomic_path(out_dir / names["json"]) as tmp:
            Path(tmp).write_text(json.dumps(evidence, indent=2) + "\n")
        fig = pareto_figure(evidence)
        if fig is not None:
            names["pareto_png"] = f"pareto_{target}.png"
            _save(fig, out_dir / names["pareto_png"])
        sections.append(evidence_markdown(evidence, names.get("pareto_png")))
        files[target] = names
    with atomic_path(out_dir / "report.md") as tmp:
        Path(tmp).write_text("\n".join(sections))
    return files
