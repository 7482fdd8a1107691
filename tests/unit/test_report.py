"""edgexfer.report: Markdown tables and PNG plots rendered from verify/bench JSON dicts."""

from __future__ import annotations

import numpy as np
import pytest

from edgexfer import metrics, report


def _latency(p50: float, batch: int = 1):
    return metrics.latency_stats(np.linspace(p50 * 0.9, p50 * 1.1, 21) / 1000.0, batch)


def _verify_data():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 10)
    ref = np.eye(3)[labels] * 4 + rng.normal(0, 1, (30, 3))
    other = ref.copy()
    other[:4] = np.eye(3)[(labels[:4] + 1) % 3] * 9  # 4 images of class 0 flipped to class 1
    from edgexfer.parity import gate_reasons, parity_entry

    entry = {
        "name": "onnxruntime_int8",
        "backend": "onnxruntime",
        "precision": "int8",
        "error": None,
        **parity_entry(ref, other, labels, 3, resamples=200),
    }
    entry["latency"] = _latency(5.0)
    reasons = gate_reasons(entry, max_drop=1.0, min_agreement=None)
    entry.update(status="failed" if reasons else "passed", gate={"passed": not reasons, "reasons": reasons})
    broken = {
        "name": "openvino_int8",
        "backend": "openvino",
        "precision": "int8",
        "status": "error",
        "error": "cannot read model",
    }
    return {
        "checkpoint": {"arch": "resnet18"},
        "run_dir": "run",
        "config": {"confidence": 0.95},
        "dataset": {
            "source": "val",
            "num_images": 30,
            "class_names": ["a", "b", "c"],
            "class_counts": [10, 10, 10],
        },
        "reference": {
            "top1": metrics.topk_accuracy(ref, labels),
            "top5": 100.0,
            "top5_k": 3,
            "per_class_accuracy": [100.0, 100.0, 100.0],
            "latency": _latency(20.0),
        },
        "artifacts": [entry, broken],
        "gate": {
            "max_drop": 1.0,
            "min_agreement": None,
            "passed": False,
            "failures": [{"artifact": entry["name"], "reason": r} for r in reasons],
            "errors": [{"artifact": "openvino_int8", "reason": "cannot read model"}],
        },
        "machine": {"cpu": "test cpu", "physical_cores": 2},
    }, entry


def test_verify_markdown_reports_failure_drop_and_per_class_delta():
    data, entry = _verify_data()
    assert entry["accuracy"]["top1_drop"] == pytest.approx(100 * 4 / 30)
    assert entry["status"] == "failed"
    text = report.verify_markdown(data)
    assert "**Verdict: FAILED** (top-1 drop <= 1 pts)" in text
    assert "- FAIL `onnxruntime_int8`: top-1 drop 13.33 pts > --max-drop 1" in text
    assert "- ERROR `openvino_int8`: cannot read model" in text
    row = next(line for line in text.splitlines() if line.startswith("| `onnxruntime_int8` | FAIL"))
    assert "| 86.67 | +13.33 (" in row
    # Class a lost 4 of its 10 images: -40 points; b and c unchanged.
    assert "| a | 10 | 100.0 | -40.0 |" in text
    assert "| b | 10 | 100.0 | +0.0 |" in text
    assert "| torch fp32 (reference) | 1 | 20.00 |" in text


def test_verify_summary_lines_the_terminal_table():
    data, entry = _verify_data()
    data["reference"]["precision"] = "fp32"
    lines = report.verify_summary_lines(data)
    assert lines[0] == f"reference torch fp32: top-1 {data['reference']['top1']:.2f}% on 30 images"
    (row,) = [line for line in lines if line.strip().startswith("onnxruntime_int8")]
    assert "FAILED  top-1 86.67% (drop +13.33, CI " in row and "agreement 86.7%, p50 5.00 ms" in row
    assert any(line.startswith("    gate: top-1 drop 13.33 pts > --max-drop 1") for line in lines)
    assert any(line.split()[:3] == ["openvino_int8", "ERROR", "cannot"] for line in lines)


def test_verify_markdown_says_inconclusive_and_why():
    from edgexfer.parity import chance_check

    data, entry = _verify_data()
    labels = np.repeat(np.arange(3), 10)
    chance = chance_check(np.eye(3)[np.zeros(30, int)], labels).to_dict()  # always class a: 10 of 30
    entry.update(status="inconclusive", gate={"passed": True, "reasons": []})
    data["artifacts"] = [entry]
    data["reference"]["chance"] = chance
    data["gate"].update(failures=[], errors=[], passed=False, gate_on="ci", max_class_drop=5.0, max_p99_ms=10.0,
                        min_speedup=2.0)
    data["verdict"] = {"status": "inconclusive", "reason": chance["reason"]}
    text = report.verify_markdown(data)
    assert ("**Verdict: INCONCLUSIVE** (top-1 drop (CI upper bound) <= 1 pts; worst per-class top-1 drop <= 5 "
            "pts; p99 latency <= 10 ms; speed-up over torch fp32 >= 2x)") in text
    assert f"Not a pass: {chance['reason']}." in text
    assert "not better than chance on these 30 images: top-1 33.33%" in text
    assert f"95% CI {chance['top1_low']:.2f}..{chance['top1_high']:.2f}%, chance 33.33%: NOT better than chance" in text
    assert "| `onnxruntime_int8` | INCONCLUSIVE | 86.67 |" in text
    # the latency table's speed-up: torch 20 ms over the artifact's 5 ms
    assert "| torch fp32 (reference) | 1 | 20.00 |" in text and "| 4.00x |" in text


def test_verify_figures_draw_the_recorded_numbers():
    data, entry = _verify_data()
    figures = report.verify_figures(data)
    assert sorted(figures) == ["latency", "per_class_delta"]
    latency = figures["latency"].axes[0]
    # One p50 bar per timed model, reference first, and the p90/p99 marks at the recorded values.
    assert [tick.get_text() for tick in latency.get_yticklabels()] == ["torch fp32", "onnxruntime_int8"]
    assert [bar.get_width() for bar in latency.patches] == pytest.approx([20.0, 5.0])
    p90, p99 = (collection.get_offsets()[:, 0] for collection in latency.collections)
    assert list(p90) == pytest.approx([data["reference"]["latency"]["p90_ms"], entry["latency"]["p90_ms"]])
    assert list(p99) == pytest.approx([data["reference"]["latency"]["p99_ms"], entry["latency"]["p99_ms"]])
    # Per-class deltas: only the artifact that ran (the broken one has none); class a lost 40 points.
    per_class = figures["per_class_delta"].axes[0]
    assert [bar.get_height() for bar in per_class.patches] == pytest.approx([-40.0, 0.0, 0.0])
    assert [text.get_text() for text in per_class.get_legend().get_texts()] == ["onnxruntime_int8"]


def test_verify_plots_are_pngs_of_those_figures(tmp_path):
    from PIL import Image

    data, _ = _verify_data()
    paths = report.verify_plots(data, tmp_path)
    assert [p.name for p in paths] == ["latency.png", "per_class_delta.png"]
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 150
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latency.png", "per_class_delta.png"]
    without_latency = {**data, "reference": {**data["reference"], "latency": None},
                       "artifacts": [{**a, "latency": None} for a in data["artifacts"]]}
    assert list(report.verify_figures(without_latency)) == ["per_class_delta"]


def test_bench_markdown_and_plot(tmp_path):
    rows = [
        {
            "model": "resnet18",
            "backend": "torch",
            "precision": "fp32",
            "input": "float32 NCHW",
            "batch": 1,
            "status": "ok",
            "latency": _latency(27.0),
            "speedup_vs_torch": 1.0,
        },
        {
            "model": "resnet18",
            "backend": "onnxruntime",
            "precision": "int8",
            "input": "uint8 NCHW",
            "batch": 1,
            "status": "ok",
            "latency": _latency(6.0),
            "speedup_vs_torch": 4.5,
            "e2e": _latency(7.2),
            "host": _latency(1.1),
            "e2e_ratio": 1.2,
        },
        {
            "model": "resnet18",
            "backend": "openvino",
            "precision": "int8",
            "batch": 0,
            "status": "error",
            "error": "boom",
        },
    ]
    data = {
        "machine_name": "test-2c",
        "machine": {"cpu": "cpu", "physical_cores": 2, "cpu_features": ["avx2"]},
        "threads": 2,
        "weights_note": "random",
        "results": rows,
        "headlines": ["h1"],
        "versions": {"x": "1"},
        "created": "now",
        "elapsed_s": 3.0,
        "skipped": [
            {"backend": "tensorrt", "reason": "not installed"},
            {"model": "resnet18", "backend": "onnxruntime", "precision": "fp16", "reason": "no GPU"},
        ],
    }
    text = report.bench_markdown(data)
    assert "| resnet18 | onnxruntime | int8 | uint8 NCHW | 1 | 6.00 |" in text
    assert "| 4.50x | 7.20 | 1.10 | 1.20x |" in text
    # 21 timed calls: the p99 is starred as unreliable (linspace 5.4..6.6: IQR 0.6, p99 6.588).
    assert "| 6.00 | 0.60 | 6.59* |" in text
    assert "| resnet18 | openvino | int8 | - | 0 | error: boom |" in text
    assert "- h1" in text
    assert "Not measured here:\n- tensorrt: not installed\n- resnet18 onnxruntime fp16: no GPU" in text
    # The chart: p50 per image with p25..p75 error bars, one bar per measured row, log scale.
    figure = report.bench_figure(data)
    axes = figure.axes[0]
    assert [bar.get_height() for bar in axes.patches] == pytest.approx([6.0, 27.0])  # onnxruntime, torch
    assert axes.get_yscale() == "log"
    # Each bar's whisker spans p25..p75 of its row (per image: batch 1 here).
    whiskers = [segment for collection in axes.collections for segment in collection.get_segments()]
    ends = [float(y) for segment in whiskers for y in (segment[0][1], segment[1][1])]
    assert ends == pytest.approx([r["latency"][q] for r in (rows[1], rows[0]) for q in ("p25_ms", "p75_ms")])
    path = report.bench_plot(data, tmp_path / "chart.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert report.bench_plot({"results": [rows[2]]}, tmp_path / "none.png") is None
