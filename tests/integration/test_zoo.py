"""The model matrix's short subset (benchmarks/zoo.py): one timm family with a deploy-time form, end to end.

RepVGG-A0 at 32 px on a tiny Fashion-MNIST folder goes through the zoo's own ``run_family`` (the real
finetune, export --int8 --target all, build and verify commands); each stage's result is asserted, then the
Markdown row the zoo writes for it. The whole zoo (``make zoo``) writes docs/models.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("timm")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import zoo  # noqa: E402
from benchmarks.zoo_report import target_rows, write_report  # noqa: E402


@pytest.mark.slow
def test_zoo_runs_repvgg_end_to_end(tmp_path):
    data = zoo.make_dataset(tmp_path / "data", train_per_class=24, val_per_class=12)
    assert len(list((data / "val").rglob("*.png"))) == 36
    row = zoo.run_family("timm/repvgg_a0", data, tmp_path, size=32, epochs=1, verify_limit=36)
    assert "finetune" not in row["errors"] and "export" not in row["errors"], row["errors"]
    assert 0 <= row["val_top1"] <= 100
    # export: the deploy form was exported, and it matches the trained form and ONNX Runtime
    assert row["exported"] and row["reparameterized"]
    # (the stage gates both with its parity tolerance; after training logits are ~10, and folding the
    # branches and BatchNorm in float32 moves them by a few 1e-3: 6e-3 seen here)
    assert 0 < row["reparam_max_abs_diff"] < 5e-2 and row["export_max_abs_diff"] < 5e-2
    # INT8 for every target (TensorRT's QDQ model is written even where TensorRT is absent)
    assert set(row["quantized"]) == {"cpu", "openvino", "tensorrt"}
    # builds: fp32 always builds; an INT8 build either built or says in one line why not
    assert row["built"]["onnxruntime_fp32"] is True
    for key, built in row["built"].items():
        assert built or ("\n" not in row["errors"][f"build {key}"] and row["errors"][f"build {key}"])
    for key, built in row["built"].items():  # every build that was made was verified
        assert (key in row["verify"]) == built
    # verify: the fp32 build agrees with torch on every image
    fp32 = row["verify"]["onnxruntime_fp32"]
    assert fp32["agreement_pct"] == 100.0 and fp32["p50_ms"] > 0
    assert row["verdict"] in ("passed", "failed", "inconclusive")
    # the Markdown the zoo writes
    cells = target_rows(row)
    assert [c[1] for c in cells][:3] == ["ONNX Runtime fp32", "ONNX Runtime int8", "OpenVINO int8"]
    assert cells[0][2:6] == ["yes", "n/a", "yes", "100.0"]
    out = tmp_path / "models.md"
    write_report([row], {"size": 32, "epochs": 1, "train_per_class": 24, "val_per_class": 12, "classes": 3,
                         "wall_seconds": 1, "cpu_note": "test"}, out)
    text = out.read_text()
    assert "| timm/repvgg_a0 | ONNX Runtime fp32 | yes | n/a | yes | 100.0 |" in text
    assert f"yes ({row['reparam_max_abs_diff']:.1e})" in text


def test_zoo_keeps_going_when_a_family_fails(tmp_path, monkeypatch):
    """A family whose first step fails is recorded with the one line and the next family still runs."""
    calls = []

    def fake_family(model, data, work, size=32, epochs=1):
        calls.append(model)
        if model == "bad":
            raise RuntimeError("boom\nsecond line")
        return {"model": model, "errors": {}, "seconds": {}, "quantized": {}, "built": {}, "verify": {}}

    monkeypatch.setattr(zoo, "make_dataset", lambda root, **_: root)
    monkeypatch.setattr(zoo, "run_family", fake_family)
    rows = zoo.run_zoo(["bad", "good"], tmp_path, log=lambda *_: None)
    assert calls == ["bad", "good"]
    assert rows[0]["errors"] == {"zoo": "RuntimeError: boom"} and rows[1]["errors"] == {}


def test_failed_step_is_one_line_and_stops_the_family(tmp_path):
    """The real finetune command refusing a bad model: the row says why, and nothing after it runs."""
    data = zoo.make_dataset(tmp_path / "data", classes=(0, 1), train_per_class=4, val_per_class=2)
    row = zoo.run_family("vit_b_16", data, tmp_path, size=32)
    assert list(row["errors"]) == ["finetune"]
    assert row["errors"]["finetune"].startswith("ConfigError: --model vit_b_16 cannot go through finetune")
    assert "exported" not in row
