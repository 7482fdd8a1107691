"""``pip install edgexfer`` without the ``train`` extra: a real venv without torch runs build, predict,
verify, bench --run and doctor on a run made by the main venv (which has torch), and the training side
refuses with exit 4 naming the extra.

The venv gets the project as a device would: ``pip install <copy of the project>`` with its own
dependencies from pyproject.toml and no extra (so a torch dependency slipping back into the core list
fails here: ``import torch`` must fail in that venv). The venv is kept between runs per dependency list
(see tests/torch_free_venv.py); this checkout is reinstalled into it every time. Skipped only when pip cannot
reach a package index.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import onnx_factory as factory
from torch_free_venv import torch_free_python
from conftest import make_image_folder

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TRAIN_HINT = "pip install 'edgexfer[train]'"


@pytest.fixture(scope="module")
def device_python(tmp_path_factory) -> Path:
    """The python of the torch-free venv holding ``pip install edgexfer`` (no extras) of this checkout."""
    return torch_free_python(tmp_path_factory.mktemp("torch_free"))


@pytest.fixture(scope="module")
def made_here(tmp_path_factory):
    """A run exported by this (torch) venv with INT8 for the CPU, and labelled images for verify."""
    root = tmp_path_factory.mktemp("torch_free_run")
    run = factory.exported_run(root / "run", int8=True)
    images = make_image_folder(root / "images", per_class=6, size=40, seed=9)
    return run, images


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only what the venv installed
    env.update(OMP_NUM_THREADS="2", MPLBACKEND="Agg")
    return env


def _edgexfer(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "edgexfer", *args], capture_output=True, text=True, cwd=cwd,
                          env=_clean_env(), timeout=600)


def test_torch_free_venv_runs_the_runtime_commands(device_python, made_here, tmp_path, cli_runner):
    from edgexfer.manifest import Manifest

    python = device_python
    no_torch = subprocess.run([str(python), "-c", "import torch"], capture_output=True, text=True,
                              env=_clean_env(), cwd=tmp_path)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    where = subprocess.run([str(python), "-c", "import edgexfer; print(edgexfer.__file__)"],
                           capture_output=True, text=True, env=_clean_env(), cwd=tmp_path)
    assert where.returncode == 0 and str(python.parents[1]) in where.stdout, where  # the installed copy

    source, images = made_here
    run = Path(shutil.copytree(source, tmp_path / "device_run"))
    for precision in ("int8", "fp32"):
        built = _edgexfer(python, "-q", "build", str(run), "--backend", "onnxruntime", "--precision", precision,
                          "--smoke-data", str(images), "--smoke-images", "6", cwd=tmp_path)
        assert built.returncode == 0, built.stderr
    manifest = Manifest.open(run)
    assert manifest.require("onnxruntime_int8").metrics["smoke"]["top1_agreement"] >= 0.5
    assert manifest.require("onnxruntime_fp32").metrics["smoke"]["min_cosine"] > 0.9999

    image = sorted((images / "red").iterdir())[0]
    predicted = _edgexfer(python, "-q", "predict", str(run), str(image), "--artifact", "onnxruntime_fp32",
                          "--json", cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    top = json.loads(predicted.stdout)["predictions"][0]["top"]
    assert [t["class"] for t in top] and abs(sum(t["score"] for t in top) - 1.0) < 1e-4

    verified = _edgexfer(python, "-q", "verify", str(run), "--data", str(images), "--bootstrap", "200",
                         cwd=tmp_path)
    # random weights may sit at chance on these images (INCONCLUSIVE, exit 5); the workstation must agree
    assert verified.returncode in (0, 5), verified.stderr
    assert "reference float ONNX on onnxruntime fp32" in verified.stdout and TRAIN_HINT in verified.stdout
    device = json.loads((run / "verify" / "verify.json").read_text())
    assert (device["reference"]["source"], device["reference"]["artifact"]) == ("float ONNX on onnxruntime", "onnx")
    assert "torch does not import" in device["reference"]["note"] and device["versions"].get("torch") is None
    report = (run / "verify" / "report.md").read_text()
    assert "Reference: float ONNX on onnxruntime fp32" in report and "torch fp32 latency: not measured" in report
    assert set(Manifest.open(run).get("verify_json").inputs) == {"onnx", "onnxruntime_fp32", "onnxruntime_int8"}

    # The same artifacts verified here, with torch, against the checkpoint: the same numbers.
    workstation_run = Path(shutil.copytree(run, tmp_path / "workstation_run"))
    code, out, err = cli_runner("-q", "verify", str(workstation_run), "--data", str(images), "--bootstrap", "200")
    assert code == verified.returncode, err
    here = json.loads((workstation_run / "verify" / "verify.json").read_text())
    assert here["reference"]["source"] == "torch checkpoint" and "note" not in here["reference"]
    assert device["reference"]["top1"] == here["reference"]["top1"]
    one_image = 100.0 / device["dataset"]["num_images"]
    for ours, theirs in zip(device["artifacts"], here["artifacts"]):
        assert ours["name"] == theirs["name"] and ours["status"] == theirs["status"] in ("passed", "inconclusive")
        assert abs(ours["agreement"]["agreement_pct"] - theirs["agreement"]["agreement_pct"]) <= one_image
        assert abs(ours["accuracy"]["top1_drop"] - theirs["accuracy"]["top1_drop"]) <= one_image
        assert abs(ours["logits"]["cosine_mean"] - theirs["logits"]["cosine_mean"]) < 1e-4
    fp32 = next(e for e in device["artifacts"] if e["name"] == "onnxruntime_fp32")
    assert fp32["agreement"]["agreement_pct"] == 100.0 and fp32["logits"]["cosine_min"] > 0.9999

    benched = _edgexfer(python, "-q", "bench", "--run", str(run), "--batch", "1", "--min-time", "0.05",
                        "--min-iterations", "3", "--no-e2e", cwd=tmp_path)
    assert benched.returncode == 0, benched.stderr
    (bench_json,) = (run / "bench").glob("*.json")
    bench = json.loads(bench_json.read_text())
    assert sorted((r["artifact"], r["status"]) for r in bench["results"]) == [
        ("onnxruntime_fp32", "ok"), ("onnxruntime_int8", "ok")]
    assert all(r["latency"]["p50_ms"] > 0 for r in bench["results"])
    assert any(s["backend"] == "torch" and TRAIN_HINT in s["reason"] for s in bench["skipped"])

    doctor = _edgexfer(python, "doctor", "--require", "onnxruntime", cwd=tmp_path)
    assert doctor.returncode == 0, doctor.stderr
    assert any(line.strip().startswith("[no ] torch") and TRAIN_HINT in line for line in doctor.stdout.splitlines())

    for args in (("export", str(run)), ("finetune", "--model", "resnet18", "--data", str(images),
                                          "--out", str(tmp_path / "ft"))):
        refused = _edgexfer(python, *args, cwd=tmp_path)
        assert refused.returncode == 4, (args, refused.stderr)
        assert len(refused.stderr.strip().splitlines()) == 1 and TRAIN_HINT in refused.stderr
