"""The declared onnxruntime floor is real: edgexfer's quantization runs on exactly that release.

``pip install --target`` fetches onnxruntime == MIN_ONNXRUNTIME and onnx == ONNX_FLOOR from the package
index into a temporary folder, with what edgexfer's quantization imports besides (numpy, scipy, tqdm,
pillow); a ``python -S`` subprocess (no site-packages: nothing from this venv leaks in) then prepares,
calibrates with every method, quantizes with both recipes, checks, scores and ranks layer sensitivity,
i.e. calls every ONNX Runtime API edgexfer's INT8 export uses. The models it writes are audited here
with tests/qdq_audit.py. Skipped only when pip cannot reach the index.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import qdq_audit
from edgexfer.quant.ort_quantize import MIN_ONNXRUNTIME
from edgexfer.quant.recipes import RECIPES

ROOT = Path(__file__).resolve().parents[2]
# the first onnx with TensorProto.INT4, which onnxruntime 1.27's quant_utils uses at import (1.15 fails)
ONNX_FLOOR = "1.16.0"
# as pyproject should declare it: the quantizer imports ml_dtypes ("quantization") and quant_pre_process's
# symbolic shape inference needs sympy ("symbolic"); numpy, scipy, tqdm and pillow are edgexfer's own imports
PACKAGES = [
    f"onnxruntime[quantization,symbolic]=={MIN_ONNXRUNTIME}",
    f"onnx=={ONNX_FLOOR}",
    "numpy",
    "scipy",
    "tqdm",
    "pillow",
]

PROBE = r"""
import json, sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime

from edgexfer.backends.onnxruntime import session_logits
from edgexfer.compare import compare_logits
from edgexfer.quant import sensitivity
from edgexfer.quant.ort_quantize import check_quantizer, prepare_for_quantization, quantize_with_ranges
from edgexfer.quant.ranges import METHODS, collect_ranges
from edgexfer.quant.recipes import RECIPES

work = Path(sys.argv[1])
inputs = np.load(work / "inputs.npy")
check_quantizer()
prepared = prepare_for_quantization(work / "model.onnx", work / "prepared.onnx")
ranges = collect_ranges(prepared, inputs, METHODS)
reference = session_logits(prepared, inputs)
report = {"versions": {m.__name__: m.__version__ for m in (onnxruntime, onnx, np)},
          "files": {m.__name__: m.__file__ for m in (onnxruntime, onnx, np)}, "scores": {}, "ranked": {}}
for target, recipe in RECIPES.items():
    for method in METHODS:
        model = quantize_with_ranges(prepared, recipe, method, ranges[method], work)
        recipe.enforce(model, source=f"{target}/{method}")
        report["scores"][f"{target}/{method}"] = compare_logits(reference, session_logits(model, inputs)).to_dict()
    onnx.save(model, str(work / f"{target}.onnx"))
    report["ranked"][target] = len(sensitivity.rank_layers(prepared, work, model, inputs[:4]))
print("REPORT " + json.dumps(report))
"""


def _pip(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def floor_env(tmp_path_factory):
    """A folder holding exactly the floor versions (and edgexfer's other quantization imports)."""
    if sys.version_info < (3, 11):
        pytest.skip(f"onnxruntime {MIN_ONNXRUNTIME} ships wheels for Python >= 3.11 only")
    probe = _pip("index", "versions", "onnxruntime", timeout=180)
    if probe.returncode != 0:
        pytest.skip(f"pip cannot reach the package index: {(probe.stderr or probe.stdout).strip()[-300:]}")
    target = tmp_path_factory.mktemp("ort_floor") / "site"
    installed = _pip("install", "--quiet", "--no-input", "--target", str(target), *PACKAGES)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return target


@pytest.mark.slow
def test_quantization_runs_on_the_declared_floor(floor_env, tmp_path):
    import torch

    from edgexfer.models import build_model
    from edgexfer.preprocess import Preprocess
    from edgexfer.stages.export.onnx_models import export_float

    class Meta:
        arch, class_names = "resnet18", ["a", "b", "c"]
        preprocess = Preprocess(size=32, resize_size=32, augment="none")

    torch.manual_seed(0)
    export_float(build_model("resnet18", 3).eval(), Meta, tmp_path / "model.onnx", 17)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "inputs.npy", rng.normal(size=(16, 3, 32, 32)).astype(np.float32))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(floor_env), str(ROOT)]))
    done = subprocess.run(
        [sys.executable, "-S", "-c", PROBE, str(tmp_path)], capture_output=True, text=True, env=env, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(next(line[7:] for line in done.stdout.splitlines() if line.startswith("REPORT ")))
    assert report["versions"]["onnxruntime"] == MIN_ONNXRUNTIME and report["versions"]["onnx"] == ONNX_FLOOR
    assert all(path.startswith(str(floor_env)) for path in report["files"].values()), report["files"]
    assert len(report["scores"]) == 3 * len(RECIPES) == 9  # cpu, tensorrt and openvino recipes x 3 methods
    for name, score in report["scores"].items():
        assert score["finite"] and score["mean_cosine"] > 0.95, (name, score)
    assert report["ranked"]["cpu"] > 20 and report["ranked"]["tensorrt"] > 20
    import onnx

    assert qdq_audit.tensorrt_problems(onnx.load(str(tmp_path / "tensorrt.onnx"))) == []
    assert qdq_audit.cpu_problems(onnx.load(str(tmp_path / "cpu.onnx"))) == []
