"""Markdown reports and PNG plots for ``verify.json`` and bench results.

Everything here reads the plain dicts the stages write to JSON (never live objects), so a report can
be re-rendered from the JSON alone. Plots use matplotlib's Agg backend (no display needed) and are
written atomically.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional

from edgexfer.reference import reference_label

STATUS_MARK = {"passed": "PASS", "failed": "FAIL", "inconclusive": "INCONCLUSIVE", "error": "ERROR",
               "skipped": "SKIPPED"}
# The verdict's words (verify.json ``verdict.status``); older files without it have only gate.passed.
VERDICT_WORD = {"passed": "PASSED", "failed": "FAILED", "inconclusive": "INCONCLUSIVE", "error": "FAILED",
                "skipped": "FAILED"}


def _fmt(value: Optional[float], digits: int = 2, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}{suffix}"


def _signed(value: Optional[float], digits: int = 2) -> str:
    return "-" if value is None else f"{value:+.{digits}f}"


# ---- verify --------------------------------------------------------------------------------------
def verify_markdown(data: Dict[str, Any]) -> str:
    """The human report of a verify.json dict: verdict, accuracy table, latency table, per-class deltas."""
    lines = [f"# edgexfer verify: {data['checkpoint']['arch']} ({data['run_dir']})", ""]
    lines += _verdict(data)
    lines += _accuracy_table(data)
    lines += _verify_latency_table(data)
    lines += _per_class_table(data)
    if data.get("plots"):
        lines += ["## Plots", ""] + [f"![{name}]({name})" for name in data["plots"]] + [""]
    machine = data.get("machine", {})
    lines += [
        "## Machine",
        "",
        f"{machine.get('cpu', '?')}, {machine.get('physical_cores', '?')} physical "
        f"cores; edgexfer {data.get('edgexfer_version')}; created {data.get('created')}.",
        "",
    ]
    return "\n".join(lines)


def verify_summary_lines(data: Dict[str, Any]) -> List[str]:
    """The terminal table of a verify.json (``verify`` and ``deploy`` print it): the reference against
    chance, then one line per artifact (status, top-1, drop with CI, agreement, p50) and why a gate
    failed or the verdict is inconclusive."""
    ref, chance = data["reference"], data["reference"].get("chance")
    versus = (f" ({100 * chance['confidence']:.0f}% CI {chance['top1_low']:.2f}..{chance['top1_high']:.2f}%, "
              f"chance {chance['chance']:.2f}%)") if chance else ""
    lines = [f"reference {reference_label(ref)} {ref['precision']}: top-1 {ref['top1']:.2f}% "
             f"on {data['dataset']['num_images']} images{versus}"]
    if ref.get("note"):  # not the checkpoint (no torch here): say what was compared with and why
        lines.append(f"  ({ref['note']})")
    for entry in data["artifacts"]:
        if "accuracy" not in entry:
            lines.append(f"  {entry['name']:<22} {entry['status'].upper():<7} {entry['error']}")
            continue
        acc, lat = entry["accuracy"], entry.get("latency")
        low, high = acc["top1_drop_ci"]
        stand_in = entry.get("stand_in_for")
        stand_in = f"  [on {entry['backend']}, stand-in for {stand_in}]" if stand_in else ""
        lines.append(f"  {entry['name']:<22} {entry['status'].upper():<7} top-1 {acc['top1']:.2f}% "
                     f"(drop {acc['top1_drop']:+.2f}, CI {low:+.2f}..{high:+.2f}), agreement "
                     f"{entry['agreement']['agreement_pct']:.1f}%" + (f", p50 {lat['p50_ms']:.2f} ms" if lat else "")
                     + stand_in)
        lines.extend(f"    gate: {reason}" for reason in entry.get("gate", {}).get("reasons", []))
    verdict = data.get("verdict", {})
    if verdict.get("status") == "inconclusive":
        lines.append(f"verdict: INCONCLUSIVE ({verdict['reason']})")
    return lines


def _verdict(data: Dict[str, Any]) -> List[str]:
    """The verdict line with the gate's rules, why it is inconclusive, one line per failure, error and
    skip, and the data set with the reference's accuracy against chance."""
    gate, ref, dataset = data["gate"], data["reference"], data["dataset"]
    rules = _gate_rules(gate)
    status = (data.get("verdict") or {}).get("status") or ("passed" if gate["passed"] else "failed")
    lines = [f"**Verdict: {VERDICT_WORD[status]}** ({'; '.join(rules) if rules else 'no gate set'})", ""]
    if status == "inconclusive":
        lines += [f"Not a pass: {data['verdict']['reason']}. Verify a trained model, or on data it was "
                  "trained for.", ""]
    lines += [f"- FAIL `{failure['artifact']}`: {failure['reason']}" for failure in gate.get("failures", [])]
    lines += [f"- ERROR `{error['artifact']}`: {error['reason']}" for error in gate.get("errors", [])]
    lines += [f"- SKIPPED `{e['name']}`: {e['error']}" for e in data["artifacts"] if e["status"] == "skipped"]
    return lines + [
        "",
        f"Data: {dataset['source']}, {dataset['num_images']} images, "
        f"{len(dataset['class_names'])} classes. Reference: {ref.get('source') or reference_label(ref)} "
        f"{ref.get('precision', 'fp32')} (top-1 {_fmt(ref['top1'])}%, top-{ref['top5_k']} {_fmt(ref['top5'])}%)"
        + _chance_note(ref.get("chance"))
        + ".",
        "",
    ] + ([f"Note: {ref['note']}.", ""] if ref.get("note") else [])



def _gate_rules(gate: Dict[str, Any]) -> List[str]:
    """The gates that were set, as rules (``gate`` of verify.json)."""
    rules = []
    if gate.get("max_drop") is not None:
        on_ci = gate.get("gate_on") == "ci"
        rules.append(f"top-1 drop{' (CI upper bound)' if on_ci else ''} <= {gate['max_drop']:g} pts")
    if gate.get("min_agreement") is not None:
        rules.append(f"agreement >= {gate['min_agreement']:g}%")
    if gate.get("max_class_drop") is not None:
        rules.append(f"worst per-class top-1 drop <= {gate['max_class_drop']:g} pts")
    if gate.get("max_p99_ms") is not None:
        rules.append(f"p99 latency <= {gate['max_p99_ms']:g} ms")
    if gate.get("min_speedup") is not None:
        rules.append(f"speed-up over torch fp32 >= {gate['min_speedup']:g}x")
    return rules


def _chance_note(chance: Optional[Dict[str, Any]]) -> str:
    """`` ; 95% CI a..b%, chance c%: better than chance`` (or ``not``) for the reference line."""
    if not chance:
        return ""
    judged = "better than chance" if chance["above_chance"] else "NOT better than chance"
    return (f"; {100 * chance['confidence']:.0f}% CI {_fmt(chance['top1_low'])}..{_fmt(chance['top1_high'])}%, "
            f"chance {_fmt(chance['chance'])}%: {judged}")


def _accuracy_table(data: Dict[str, Any]) -> List[str]:
    """One row per artifact: status, top-1 and its drop with the CI, McNemar p, top-k, agreement, logits."""
    ref = data["reference"]
    conf = int(round(100 * data["config"].get("confidence", 0.95)))
    lines = [
        "## Accuracy parity against the float reference",
        "",
        f"| artifact | status | top-1 % | top-1 drop (pts, {conf}% CI) | McNemar p | top-{ref['top5_k']} % "
        "| agreement % | cosine (mean / min) | SNR dB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in data["artifacts"]:
        if "accuracy" not in entry:
            lines.append(f"| `{entry['name']}` | {STATUS_MARK[entry['status']]} | - | - | - | - | - | - | - |")
            continue
        acc, agree, logits = entry["accuracy"], entry["agreement"], entry["logits"]
        low, high = acc["top1_drop_ci"]
        snr = "identical" if logits["snr_db"] is None else _fmt(logits["snr_db"], 1)
        lines.append(
            f"| `{entry['name']}` | {STATUS_MARK[entry['status']]} | {_fmt(acc['top1'])} | "
            f"{_signed(acc['top1_drop'])} ({_signed(low)} .. {_signed(high)}) | "
            f"{entry['mcnemar']['p_value']:.3g} | {_fmt(acc['top5'])} | {_fmt(agree['agreement_pct'])} | "
            f"{_fmt(logits['cosine_mean'], 4)} / {_fmt(logits['cosine_min'], 4)} | {snr} |"
        )
    stand_ins = [
        f"- `{e['name']}` ran on {e['backend']} as a stand-in for {e['stand_in_for']}: its figures are not "
        f"the {e['stand_in_for']} engine's; build it for {e['stand_in_for']} and verify that build on the device."
        for e in data["artifacts"]
        if e.get("stand_in_for")
    ]
    stand_ins += [f"- `{e['name']}` {e['note']}" for e in data["artifacts"] if e.get("note") and "accuracy" in e]
    return lines + [""] + (stand_ins + [""] if stand_ins else []) + [
        "A positive drop means the artifact is less accurate than the float model. McNemar's p "
        "tests whether the two differ on these images at all (small p: a real difference).",
        "",
    ]


def _verify_latency_table(data: Dict[str, Any]) -> List[str]:
    ref = data["reference"]
    rows = [(f"{reference_label(ref)} fp32 (reference)", ref.get("latency"))]
    rows += [(f"`{e['name']}`", e.get("latency")) for e in data["artifacts"] if e.get("latency")]
    if not any(lat for _, lat in rows):
        return []
    lines = [
        "## Latency (after warm-up)",
        "",
        "| model | batch | p50 ms | p90 ms | p99 ms | IQR ms | images/s | runs | speed-up vs torch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ref_p50 = (data["reference"].get("latency") or {}).get("p50_ms")
    if data["reference"].get("backend", "torch") != "torch":
        ref_p50 = None
    for name, lat in rows:
        if lat:
            speedup = _fmt(ref_p50 / lat["p50_ms"], 2, "x") if ref_p50 and lat["p50_ms"] else "-"
            lines.append(
                f"| {name} | {lat['batch_size']} | {_fmt(lat['p50_ms'])} | {_fmt(lat['p90_ms'])} | "
                f"{_fmt(lat['p99_ms'])} | {_fmt(lat['iqr_ms'])} | {_fmt(lat['throughput_ips'], 1)} | "
                f"{lat['n']} | {speedup} |"
            )
    if ref.get("backend", "torch") != "torch":  # no torch eager row: say why rather than leave it out silently
        why = ref.get("note") or f"the reference ran on {ref['backend']}"
        lines += ["", f"torch fp32 latency: not measured ({why})."]
    return lines + [""]


def _per_class_table(data: Dict[str, Any]) -> List[str]:
    entries = [e for e in data["artifacts"] if "per_class" in e]
    if not entries:
        return []
    names = data["dataset"]["class_names"]
    lines = [
        "## Per-class top-1 delta (points, artifact minus reference)",
        "",
        "| class | images | reference % | " + " | ".join(f"`{e['name']}`" for e in entries) + " |",
        "|---|---|---|" + "---|" * len(entries),
    ]
    counts = data["dataset"]["class_counts"]
    for index, name in enumerate(names):
        cells = [_signed(e["per_class"]["delta"][index], 1) for e in entries]
        lines.append(
            f"| {name} | {counts[index]} | {_fmt(data['reference']['per_class_accuracy'][index], 1)} | "
            + " | ".join(cells)
            + " |"
        )
    return lines + [""]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    from edgexfer.fsutil import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def verify_figures(data: Dict[str, Any]) -> Dict[str, Any]:
    """The verify plots as matplotlib figures by file stem: ``latency`` (p50 bars with p90/p99 marks per
    model, reference first) when latency was measured, ``per_class_delta`` (one bar group per class)
    when an artifact ran."""
    plt = _pyplot()
    figures = {}
    rows = [(f"{reference_label(data['reference'])} fp32", data["reference"].get("latency"))]
    rows += [(e["name"], e.get("latency")) for e in data["artifacts"]]
    rows = [(name, lat) for name, lat in rows if lat]
    if rows:
        fig, ax = plt.subplots(figsize=(7, 0.5 * len(rows) + 1.5))
        labels = [name for name, _ in rows]
        ax.barh(labels, [lat["p50_ms"] for _, lat in rows], color="#4c72b0", label="p50")
        ax.scatter([lat["p90_ms"] for _, lat in rows], labels, marker="|", s=200, color="k", label="p90")
        ax.scatter([lat["p99_ms"] for _, lat in rows], labels, marker="x", color="#c44e52", label="p99")
        ax.set_xlabel(f"latency, ms (batch {rows[0][1]['batch_size']})")
        ax.invert_yaxis()
        ax.legend(loc="lower right")
        ax.set_title("verify: latency per artifact")
        figures["latency"] = fig
    entries = [e for e in data["artifacts"] if "per_class" in e]
    if entries:
        names = data["dataset"]["class_names"]
        fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(names) + 2), 4))
        width = 0.8 / len(entries)
        for offset, entry in enumerate(entries):
            deltas = [0.0 if v is None else v for v in entry["per_class"]["delta"]]
            ax.bar([i + offset * width for i in range(len(names))], deltas, width=width, label=entry["name"])
        ax.axhline(0, color="k", linewidth=0.8)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))])
        ax.set_xticklabels(names, rotation=45, ha="right")
        ax.set_ylabel("top-1 delta vs float, points")
        ax.legend()
        ax.set_title("verify: per-class accuracy delta")
        figures["per_class_delta"] = fig
    return figures


def verify_plots(data: Dict[str, Any], out_dir: Path) -> List[Path]:
    """Save :func:`verify_figures` as ``<stem>.png`` in ``out_dir`` (atomically); returns their paths."""
    return [_save(fig, Path(out_dir) / f"{stem}.png") for stem, fig in verify_figures(data).items()]


# ---- bench ---------------------------------------------------------------------------------------
def bench_markdown(data: Dict[str, Any]) -> str:
    """The bench results table (one row per model/backend/precision/batch) plus machine and notes."""
    machine = data.get("machine", {})
    lines = [
        f"# edgexfer bench: {data.get('machine_name', '?')}",
        "",
        f"CPU: {machine.get('cpu', '?')} ({machine.get('physical_cores', '?')} physical cores, "
        f"features {', '.join(machine.get('cpu_features', [])) or 'none'}); threads used: "
        f"{data.get('threads')}; GPU: {_gpu_line(machine)}.",
        f"Weights: {data.get('weights_note', '')}",
        "",
        "Latency is per call after warm-up, median (p50) with the interquartile range (IQR) and p99; "
        "`e2e` is image file -> decode -> resize/crop -> infer -> top-5, one call per batch; "
        "`host` is its decode and preprocessing part alone. Every backend of a model is timed "
        "round-robin in the same process on the same pixels.",
        "",
        "| model | backend | precision | input | batch | p50 ms | IQR ms | p99 ms | images/s | vs torch fp32 "
        "| e2e p50 ms | host p50 ms | e2e / model |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in data["results"]:
        if row.get("status") != "ok":
            lines.append(
                f"| {row['model']} | {row['backend']} | {row['precision']} | {row.get('input', '-')} | "
                f"{row['batch']} | {row.get('status')}: {row.get('error', '')} | | | | | | | |"
            )
            continue
        lat, e2e, host = row["latency"], row.get("e2e"), row.get("host")
        lines.append(
            f"| {row['model']} | {row['backend']} | {row['precision']} | {row['input']} | {row['batch']} | "
            f"{_fmt(lat['p50_ms'])} | {_fmt(lat['iqr_ms'])} | {_p99(lat)} | "
            f"{_fmt(lat['throughput_ips'], 1)} | {_ratio(row.get('speedup_vs_torch'))} | "
            f"{_fmt(e2e['p50_ms']) if e2e else '-'} | {_fmt(host['p50_ms']) if host else '-'} | "
            f"{_ratio(row.get('e2e_ratio'), 'x')} |"
        )
    lines.append("")
    lines.append("\\* fewer than 100 timed calls: that p99 is little more than the slowest call.")
    lines.append("")
    for headline in data.get("headlines", []):
        lines.append(f"- {headline}")
    if data.get("skipped"):
        lines += ["", "Not measured here:"]
        for row in data["skipped"]:
            what = " ".join(str(row[k]) for k in ("model", "backend", "precision") if row.get(k))
            lines.append(f"- {what}: {row['reason']}")
    lines += [
        "",
        f"Versions: {', '.join(f'{k} {v}' for k, v in sorted(data.get('versions', {}).items()))}.",
        f"Measured {data.get('created')} in {data.get('elapsed_s', 0):.0f} s.",
        "",
    ]
    return "\n".join(lines)


def _p99(lat: Dict[str, Any]) -> str:
    """p99 with a star when fewer than 100 calls were timed (then it is little more than the maximum)."""
    return _fmt(lat["p99_ms"]) + ("" if lat["n"] >= 100 else "*")


def _ratio(value: Optional[float], suffix: str = "x") -> str:
    return "-" if value is None else f"{value:.2f}{suffix}"


def _gpu_line(machine: Dict[str, Any]) -> str:
    gpus = machine.get("gpus") or []
    if gpus:
        first = gpus[0]
        return f"{first.get('name')} (driver {first.get('driver')})"
    if machine.get("jetson"):
        jetson = machine["jetson"]
        return (
            f"{jetson.get('module')} JetPack {jetson.get('jetpack')}, power mode {jetson.get('power_mode')}, "
            f"jetson_clocks {jetson.get('jetson_clocks')}"
        )
    return "none"


def bench_figure(data: Dict[str, Any]) -> Optional[Any]:
    """A grouped bar chart of p50 latency per image (bars: p25..p75) per model and configuration, or
    None when nothing was measured."""
    rows = [r for r in data["results"] if r.get("status") == "ok"]
    if not rows:
        return None
    plt = _pyplot()
    labels = [f"{r['model']} b{r['batch']}" for r in rows]
    groups = sorted(set(labels), key=labels.index)
    configs = sorted({f"{r['backend']} {r['precision']}" for r in rows})
    fig, ax = plt.subplots(figsize=(max(7, 1.2 * len(groups) + 2), 4.5))
    width = 0.8 / max(1, len(configs))
    for offset, config in enumerate(configs):
        xs, ys, low, high = [], [], [], []
        for row, label in zip(rows, labels):
            if f"{row['backend']} {row['precision']}" == config:
                lat, batch = row["latency"], row["batch"]
                xs.append(groups.index(label) + offset * width)
                ys.append(lat["p50_ms"] / batch)
                low.append((lat["p50_ms"] - lat["p25_ms"]) / batch)
                high.append((lat["p75_ms"] - lat["p50_ms"]) / batch)
        ax.bar(xs, ys, width=width, yerr=[low, high], capsize=2, label=config)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))])
    ax.set_xticklabels(groups, rotation=30, ha="right")
    ax.set_yscale("log")  # torch eager and INT8 differ by orders of magnitude
    ax.set_ylabel("p50 ms per image (bars: p25..p75), log scale")
    ax.set_title(f"edgexfer bench: {data.get('machine_name', '')}")
    ax.legend(fontsize=8)
    return fig


def bench_plot(data: Dict[str, Any], path: Path) -> Optional[Path]:
    """Save :func:`bench_figure` as a PNG at ``path`` (atomically); None when nothing was measured."""
    fig = bench_figure(data)
    return None if fig is None else _save(fig, Path(path))
