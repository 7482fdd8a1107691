"""``pip install edgexfer`` without the ``train`` extra: a real venv without torch runs build, predict,
verify, bench --run and doctor on a run made by the main venv (which has torch), and the training side
refuses with exit 4 naming the extra.

The venv gets the project as a device would: ``pip install <copy of the project>`` with its own
dependencies from pyproject.toml and no extra (so a torch dependency slipping back into the core list
fails here: ``import torch`` must fail in that venv). The venv is kept between runs per dependency list
(see :func:`_venv_home`); this checkout is reinstalled into it every time. Skipped only when pip cannot
reach a package index.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import onnx_factory as factory
from conftest import make_image_folder

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TRAIN_HINT = "pip install 'edgexfer[train]'"


def _pip(python: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, timeout=timeout)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def _core_dependencies() -> str:
    """The ``[project] dependencies`` block of pyproject.toml, as written."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M)
    assert match, "pyproject.toml has no [project] dependencies list"
    return match.group(1)


def _venv_home() -> Path:
    """Where the torch-free venv is kept between test runs: one per Python version and dependency list
    (a changed list makes a new venv, so pip resolves it again), under $EDGEXFER_TEST_CACHE or
    ~/.cache/edgexfer/test."""
    key = hashlib.sha256(f"{sys.version_info[:2]}|{_core_dependencies()}".encode()).hexdigest()[:12]
    base = Path(os.environ.get("EDGEXFER_TEST_CACHE", Path.home() / ".cache" / "edgexfer" / "test"))
    return base / f"torch-free-venv-{key}"


def _project_copy(root: Path) -> Path:
    """What a wheel is built from, copied, so the build writes nothing into the checkout."""
    source = root / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "edgexfer", source / "edgexfer", ignore=shutil.ignore_patterns("__pycache__"))
    return source


@pytest.fixture(scope="module")
def device_python(tmp_path_factory) -> Path:
    """The python of a venv holding ``pip install edgexfer`` (no extras) of this checkout.

    The venv and its dependencies (resolved by pip from pyproject.toml, no extra) are made once per
    dependency list and kept; this checkout's edgexfer is reinstalled into it (``--no-deps``) every time.
    """
    root = tmp_path_factory.mktemp("torch_free")
    venv = _venv_home()
    python = venv / "bin" / "python"
    complete = venv / ".edgexfer-deps-installed"
    if not complete.is_file():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
        probe = _pip(python, "download", "--no-deps", "--dest", str(root / "probe"), "click>=8.0", timeout=300)
        if probe.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            pytest.skip(f"pip cannot reach a package index here: {_last_line(probe.stderr)}")
        installed = _pip(python, "install", "--quiet", str(_project_copy(root)))
        assert installed.returncode == 0, installed.stderr[-3000:]
        complete.write_text(_core_dependencies(), encoding="utf-8")
    else:
        installed = _pip(python, "install", "--quiet", "--no-deps", "--force-reinstall", str(_project_copy(root)))
        assert installed.returncode == 0, installed.stderr[-3000:]
    return python


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
