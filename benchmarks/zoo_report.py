"""docs/models.md from the zoo's rows (benchmarks/zoo.py): one table per family x target, then every failure."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any, Dict, List

TARGETS = (  # (column, INT8 model of the export stage, built artifact)
    ("ONNX Runtime fp32", None, "onnxruntime_fp32"),
    ("ONNX Runtime int8", "cpu", "onnxruntime_int8"),
    ("OpenVINO int8", "openvino", "openvino_int8"),
    ("TensorRT int8 (QDQ model only)", "tensorrt", None),
)


def _mark(value: Any) -> str:
    return "yes" if value else ("no" if value is not None else "-")


def _num(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _quantized_cell(quant_key: Any, quantized: Any, exported: Any) -> str:
    """yes/no, with the export stage's own INT8-vs-float agreement on the held-out images where it has one."""
    if quant_key is None:
        return "n/a"
    if not exported:
        return "-"
    if quantized is None:
        return "no"
    agreement = quantized.get("agreement")
    return "yes" if agreement is None else f"yes ({100 * agreement:.0f}% agree)"


def target_rows(row: Dict[str, Any]) -> List[List[str]]:
    """One table row per target of one family."""
    out = []
    for column, quant_key, built_key in TARGETS:
        quantized = row.get("quantized", {}).get(quant_key) if quant_key else None
        verify = row.get("verify", {}).get(built_key, {}) if built_key else {}
        failure = ""
        # an INT8 export failure is no failure of the fp32 target once the float model was exported
        export_matters = quant_key is not None or not row.get("exported")
        for key in ("finetune", "zoo", *(("export",) if export_matters else ()), f"build {built_key}"):
            if key in row.get("errors", {}):
                failure = f"{key}: {row['errors'][key]}"
                break
        if not failure and verify.get("error"):
            failure = f"verify: {verify['error']}"
        out.append([
            row["model"], column, _mark(row.get("exported")),
            _quantized_cell(quant_key, quantized, row.get("exported")),
            "n/a (no GPU here)" if built_key is None else _mark(row.get("built", {}).get(built_key)),
            _num(verify.get("agreement_pct"), 1), _num(verify.get("p50_ms")), verify.get("status") or "-",
            failure.replace("|", "/"),
        ])
    return out


def write_report(rows: List[Dict[str, Any]], settings: Dict[str, Any], path: Path) -> None:
    """Write the Markdown matrix."""
    lines = [
        "# Model matrix",
        "",
        "Written by `make zoo` (`benchmarks/zoo.py`); the raw figures are in `docs/models.json`. Each family, "
        f"randomly initialised (no network here, so no ImageNet weights), is fine-tuned for {settings['epochs']} "
        f"epoch(s) at {settings['size']}x{settings['size']} on {settings['classes']} Fashion-MNIST classes "
        f"({settings['train_per_class']} training and {settings['val_per_class']} validation images per class), "
        "exported to ONNX (timm families with a deploy-time form are reparameterized first), quantized to INT8 "
        "for every target (`export --int8 --target all`), built for ONNX Runtime fp32/int8 and OpenVINO int8, "
        "and verified against the torch model (`verify` on all validation images). Every step is the real command.",
        "",
        f"Machine: {settings.get('cpu_note') or platform.processor() or platform.machine()}; "
        f"{settings.get('families_done', 'all')} families, {settings.get('wall_seconds', '?')} s. "
        "Latency is batch 1, p50, on a CPU shared with other jobs: "
        "read it as an order of magnitude. Agreement is top-1 agreement with the torch float model; "
        "after one epoch from scratch the models are weak, so a low INT8 agreement says more about flat logits "
        "than about the family (the status column is verify's verdict, INCONCLUSIVE when the float model is not "
        "better than chance).",
        "",
        *([f"**Not run in this pass** (out of time on the shared CPU; `make zoo` runs them): "
           f"{', '.join(settings['not_run'])}.", ""] if settings.get("not_run") else []),
        "## Per family",
        "",
        "| model | val top-1 % | reparameterized (max abs diff vs train form) | ONNX vs torch max abs diff |"
        " seconds |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        reparam = (f"yes ({row['reparam_max_abs_diff']:.1e})" if row.get("reparameterized")
                   else "no" if row.get("exported") else "-")
        lines.append(f"| {row['model']} | {_num(row.get('val_top1'))} | {reparam} | "
                     f"{_num(row.get('export_max_abs_diff'), 6)} | {row.get('total_seconds', '-')} |")
    lines += ["", "## Per family and target", "",
              "| model | target | exported | quantized (export's INT8 vs float) | built | agreement % | p50 ms "
              "| verify | what failed and why |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for cells in target_rows(row):
            lines.append("| " + " | ".join(cells) + " |")
    from edgexfer.model_limits import LIMITS

    lines += ["", "## Known limits checked at `finetune` (edgexfer/model_limits.py)", "",
              "A family listed here says so when `edgexfer finetune` starts, before any training: a blocking "
              "limit stops it (exit 2), a per-target one is a warning recorded in `metrics.json` and the manifest.",
              "", "| models | stage | blocking | reason |", "|---|---|---|---|"]
    lines += [f"| `{limit.pattern}` | {limit.stage} | {'yes' if limit.blocking else 'no (warning)'} | "
              f"{limit.reason} |" for limit in LIMITS]
    lines += ["", "Reproduce: `make zoo` (all families, about an hour on 2 cores), or "
              "`python benchmarks/zoo.py --families timm/repvgg_a0 resnet18 --out /tmp/zoo.md`."]
    failures = [(row["model"], key, message) for row in rows for key, message in row.get("errors", {}).items()]
    lines += ["", "## Every failure, as the command said it", ""]
    lines += [f"- `{model}` {key}: {message}" for model, key, message in failures] or ["- none"]
    path.write_text("\n".join(lines) + "\n")
